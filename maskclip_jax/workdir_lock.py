"""One trainer per workdir: WORKDIR/LOCK, held for the whole run.

Two `maskclip-train` runs on one workdir both resume from the same step, write the same
checkpoint steps (one fails with "N/N params are missing in checkpoint", or both finish) and
delete each other's checkpoints through `checkpoint.keep`. The second one now stops at start:

  with WorkdirLock(workdir, break_lock=False):
    train.train_and_evaluate(config, workdir)

The lock is a file WORKDIR/LOCK holding JSON: host, pid, start time, argv, user and a random
token (plus, on Linux, the kernel's boot id and the process's start time, which tell a
restarted process or a reused pid from the holder). It is created atomically:
- local disks and shared filesystems (NFSv3+, Lustre, GPFS): os.open(O_CREAT | O_EXCL), which
  fails on every process but one when several create it at once;
- buckets (any path with a scheme, e.g. gs://, through etils.epath like the checkpoints): the
  atomic primitive is a conditional create (GCS: an object write with if-generation-match=0,
  which fails with 412 when the object exists). epath/tf.io.gfile cannot express it, so a
  bucket lock is check-absent, write, wait OBJECT_STORE_SETTLE_S, read back and compare the
  token. Writes to one object are strongly consistent and the last one wins, so two runs that
  start together both see the second run's token and the first stops. The race left: a run
  whose check-to-write gap is longer than the settle time (a stalled client) can still write
  over a lock that was read back as held. Runs started seconds apart are always caught.

A second trainer fails at once (WorkdirLockedError) naming the holder. Stale locks:
- the holder ran on this host and its process is gone (no such pid, a zombie, a pid reused by
  another process, or another boot): the lock is taken over with a warning;
- otherwise (the holder ran on another host and crashed, or was killed with SIGKILL)
  `maskclip-train --break_lock` removes the lock, logging whose it was, and takes it; deleting
  WORKDIR/LOCK by hand does the same. Break a lock only when no trainer runs on the workdir.
The lock is released (the file deleted, if it still holds this run's token) when the `with`
block ends: a normal end, an exception (SystemExit and KeyboardInterrupt included), and a
SIGTERM that distributed.PreemptionHandler turns into a save and a normal exit. A SIGTERM
before the training loop (set-up, compiling) releases it and then ends the process as SIGTERM
would (release_on_sigterm). A second signal during training ends the process with os._exit,
and SIGKILL ends it at once: both leave the lock, and the stale rule above or --break_lock
apply.

Several processes (jax.distributed): process 0 holds the lock for the whole job, the others
never touch it (cli/train.py takes it after jax.distributed.initialize, when the process index is
known). When process 0 finds the workdir locked it raises; the other processes then fail at
their first collective (the job's coordinator, process 0, is gone), so the job fails as a
whole without writing to the workdir.
"""
import datetime
import getpass
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from typing import Optional, Sequence

from absl import logging

from maskclip_jax.console import format_duration

LOCK_FILE = "LOCK"
# Buckets: how long a written lock must stay ours before the run counts it as held.
OBJECT_STORE_SETTLE_S = 2.0
# Local files: how long to wait for a just-created (still empty) lock file's contents.
_EMPTY_LOCK_WAIT_S = 2.0

_HELD_TOKENS = set()  # tokens of the locks this process holds (a pid match is then not stale)


class WorkdirLockedError(RuntimeError):
  """The workdir is held by another trainer."""

  def __init__(self, message: str, holder: dict):
    super().__init__(message)
    self.holder = holder


def lock_path(workdir: str) -> str:
  return os.path.join(workdir, LOCK_FILE)


def is_object_store(path: str) -> bool:
  """gs://, s3://, ...: no O_EXCL there."""
  return "://" in path


def _boot_id() -> Optional[str]:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return None


def _proc_stat(pid: int) -> Optional[tuple]:
  """(state, start time in clock ticks since boot) of `pid` from /proc, or None."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces
    return fields[0], int(fields[19])
  except (OSError, IndexError, ValueError):
    return None


def describe_process(token: Optional[str] = None, argv: Optional[Sequence[str]] = None) -> dict:
  """This process as a lock holder."""
  now = time.time()
  stat = _proc_stat(os.getpid())
  try:
    user = getpass.getuser()
  except Exception:  # pylint: disable=broad-except  (no passwd entry in some containers)
    user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
  return dict(
      host=socket.gethostname(), pid=os.getpid(), user=user,
      start_time=datetime.datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
      start_unix=now, argv=list(sys.argv if argv is None else argv),
      token=token or secrets.token_hex(16), boot_id=_boot_id(),
      pid_start_ticks=stat[1] if stat else None)


def holder_is_gone(holder: dict) -> bool:
  """Whether the lock's holder surely no longer runs: it ran on this host and its process is
  gone. Holders on other hosts are never judged gone (their pids cannot be checked)."""
  if holder.get("host") != socket.gethostname():
    return False
  if holder.get("token") in _HELD_TOKENS:
    return False
  boot = _boot_id()
  if holder.get("boot_id") and boot and holder["boot_id"] != boot:
    return True  # the host rebooted since
  pid = holder.get("pid")
  if not isinstance(pid, int) or pid <= 0:
    return False
  if pid == os.getpid():
    return True  # an earlier process with this pid (a restarted container): this one holds none
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    pass  # alive, another user's
  except OSError:
    return False
  stat = _proc_stat(pid)
  if stat is not None:
    if stat[0] == "Z":
      return True  # exited, not yet reaped
    ticks = holder.get("pid_start_ticks")
    if ticks is not None and stat[1] != ticks:
      return True  # the pid now belongs to another process
  return False


def describe_holder(holder: dict) -> str:
  if not holder.get("token"):
    return f"unreadable contents {holder.get('raw', '')!r}"
  started = holder.get("start_time", "?")
  if isinstance(holder.get("start_unix"), (int, float)):
    ago = max(0, time.time() - holder["start_unix"])
    started += f" ({format_duration(ago)} ago)"
  argv = holder.get("argv")
  command = " ".join(argv) if isinstance(argv, list) else repr(argv)
  return (f"host {holder.get('host')}, pid {holder.get('pid')}, user {holder.get('user')}, "
          f"started {started}, command: {command}")


class WorkdirLock:
  """WORKDIR/LOCK held from `acquire()` (or `with`) to `release()` (see the module docstring).

  break_lock: remove a lock held by anyone (logging the holder) before taking it.
  release_on_sigterm: while held, a SIGTERM that finds no other handler installed releases the
    lock and then ends the process as SIGTERM does. Leave False where something outside Python
    handles SIGTERM (jax.distributed's preemption service in multi-process runs).
  object_store: force the bucket protocol (None: by the path; tests use it on local paths).
  """

  def __init__(self, workdir: str, *, break_lock: bool = False, release_on_sigterm: bool = False,
               argv: Optional[Sequence[str]] = None, object_store: Optional[bool] = None):
    self.workdir = workdir
    self.path = lock_path(workdir)
    self.break_lock = break_lock
    self.release_on_sigterm = release_on_sigterm
    self.object_store = is_object_store(workdir) if object_store is None else object_store
    self.info = describe_process(argv=argv)
    self.held = False
    self._previous_sigterm = None

  # ---------------------------------------------------------------- the file, two ways
  def _epath(self):
    from etils import epath  # pylint: disable=g-import-not-at-top
    return epath.Path(self.path)

  def _read(self) -> Optional[dict]:
    """The lock's contents; None when there is no lock; {'raw': ...} when unreadable."""
    if self.object_store:
      path = self._epath()
      if not path.exists():
        return None
      try:
        text = path.read_text()
      except FileNotFoundError:
        return None
    else:
      deadline = time.monotonic() + _EMPTY_LOCK_WAIT_S
      while True:
        try:
          with open(self.path) as f:
            text = f.read()
        except FileNotFoundError:
          return None
        # O_EXCL creates the file before its contents are written: give the writer a moment.
        if text.strip() or time.monotonic() > deadline:
          break
        time.sleep(0.05)
    try:
      holder = json.loads(text)
      if isinstance(holder, dict):
        return holder
    except ValueError:
      pass
    return dict(raw=text[:200])

  def _create(self) -> bool:
    """Creates the lock with this run's contents if there is none; returns whether it did."""
    data = json.dumps(self.info, indent=1) + "\n"
    if self.object_store:
      path = self._epath()
      path.parent.mkdir(parents=True, exist_ok=True)
      if path.exists():
        return False
      path.write_text(data)
      time.sleep(OBJECT_STORE_SETTLE_S)  # another run's write in this window wins: see above
      holder = self._read()
      return holder is not None and holder.get("token") == self.info["token"]
    os.makedirs(self.workdir, exist_ok=True)
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    try:
      os.write(fd, data.encode())
    except OSError:
      os.close(fd)
      os.remove(self.path)  # no empty lock left behind (a full disk)
      raise
    try:
      os.fsync(fd)
    except OSError:
      pass  # some FUSE mounts refuse fsync; the contents are written either way
    os.close(fd)
    return True

  def _remove(self, holder: dict) -> None:
    """Removes the lock if it is still `holder`'s (another run may have replaced it)."""
    token = holder.get("token")
    if self.object_store:
      current = self._read()
      if current is not None and current.get("token") == token:
        self._epath().unlink(missing_ok=True)
      return
    # Local: move it aside atomically, then check that what was moved is the one judged.
    aside = f"{self.path}.removed-{self.info['token']}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return
    try:
      with open(aside) as f:
        moved = json.loads(f.read() or "{}")
    except (OSError, ValueError):
      moved = {}
    if token is not None and moved.get("token") != token:
      try:  # another run's fresh lock: put it back unless yet another run has taken its place
        os.link(aside, self.path)
      except OSError:
        pass
    os.remove(aside)

  # ---------------------------------------------------------------- acquire and release
  def acquire(self) -> "WorkdirLock":
    may_break = self.break_lock  # once: a lock created after that is another run's, judged
    try:
      for _ in range(3):  # a removed stale lock may be retaken by another run in between
        if self._create():
          break
        holder = self._read()
        if holder is None:
          continue  # released in between
        if may_break:
          may_break = False
          logging.warning("--break_lock: removing %s held by %s.", self.path,
                          describe_holder(holder))
          self._remove(holder)
        elif holder_is_gone(holder):
          logging.warning("Taking over the stale lock %s: its holder ran on this host and is no "
                          "longer running (%s).", self.path, describe_holder(holder))
          self._remove(holder)
        else:
          raise WorkdirLockedError(self._locked_message(holder), holder)
      else:
        if not self._create():
          holder = self._read() or {}
          raise WorkdirLockedError(self._locked_message(holder), holder)
    except OSError as e:
      raise PermissionError(f"--workdir={self.workdir!r}: cannot create the lock {self.path} "
                            f"({e}); choose a directory you can write to.") from e
    self.held = True
    _HELD_TOKENS.add(self.info["token"])
    if self.release_on_sigterm and threading.current_thread() is threading.main_thread():
      if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
    logging.info("Holding %s (pid %d on %s).", self.path, self.info["pid"], self.info["host"])
    return self

  def _locked_message(self, holder: dict) -> str:
    return (f"--workdir={self.workdir!r} is in use by another maskclip-train: "
            f"{describe_holder(holder)} (lock file {self.path}).\nTwo trainers on one workdir "
            "write the same checkpoint steps and delete each other's checkpoints. Wait for that "
            "run to end or stop it, or use another --workdir. If that run is gone (it crashed "
            "on another host, or was killed with SIGKILL), start this one with --break_lock, or "
            f"delete {self.path}; a lock left by a dead process on this host is taken over "
            "without either.")

  def _on_sigterm(self, signum, frame):
    del frame
    self.release()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    _HELD_TOKENS.discard(self.info["token"])
    if self._previous_sigterm is not None:
      if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
        signal.signal(signal.SIGTERM, self._previous_sigterm)
      self._previous_sigterm = None
    try:
      holder = self._read()
      if holder is None or holder.get("token") != self.info["token"]:
        logging.warning("%s is no longer this run's lock (%s); leaving it.", self.path,
                        "removed" if holder is None else describe_holder(holder))
        return
      if self.object_store:
        self._epath().unlink(missing_ok=True)
      else:
        os.remove(self.path)
    except OSError as e:
      logging.warning("Could not remove the lock %s (%s).", self.path, e)

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
