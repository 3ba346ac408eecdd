"""One trainer per workdir: WORKDIR/LOCK (workdir_lock.py) and `maskclip-train` with it."""
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, Run, finished, wait_for
from maskclip_jax import workdir_lock
from maskclip_jax.workdir_lock import WorkdirLock, WorkdirLockedError


def read_lock(workdir):
  with open(os.path.join(workdir, "LOCK")) as f:
    return json.load(f)


def write_lock(workdir, **fields):
  holder = dict(host=socket.gethostname(), pid=1, user="someone", start_time="2024-01-01T00:00",
                start_unix=time.time() - 600, argv=["maskclip-train", "--workdir=elsewhere"],
                token="their-token")
  holder.update(fields)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "LOCK"), "w") as f:
    json.dump(holder, f)
  return holder


def dead_pid():
  """The pid of a process that has exited (and been reaped)."""
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


@pytest.fixture
def live_process():
  process = subprocess.Popen(["sleep", "60"])
  yield process
  process.kill()
  process.wait()


# ---------------------------------------------------------------- the lock
def test_acquire_writes_the_holder_and_release_removes_it(tmp_path):
  workdir = str(tmp_path / "run")  # not there yet: created
  lock = WorkdirLock(workdir, argv=["maskclip-train", "--workdir", workdir]).acquire()
  holder = read_lock(workdir)
  assert holder["host"] == socket.gethostname()
  assert holder["pid"] == os.getpid()
  assert holder["argv"] == ["maskclip-train", "--workdir", workdir]
  assert len(holder["token"]) == 32 and holder["token"] == lock.info["token"]
  assert abs(holder["start_unix"] - time.time()) < 60 and holder["start_time"][:4].isdigit()
  lock.release()
  assert not os.path.exists(os.path.join(workdir, "LOCK"))
  lock.release()  # twice is harmless


def test_a_second_lock_fails_naming_the_holder_and_leaves_its_lock(tmp_path):
  workdir = str(tmp_path)
  with WorkdirLock(workdir, argv=["maskclip-train", "--config=first.py"]) as first:
    with pytest.raises(WorkdirLockedError) as error:
      WorkdirLock(workdir).acquire()
    message = str(error.value)
    for part in (f"host {socket.gethostname()}", f"pid {os.getpid()}", "command: maskclip-train "
                 "--config=first.py", "--break_lock", os.path.join(workdir, "LOCK")):
      assert part in message
    assert read_lock(workdir)["token"] == first.info["token"]
  assert not os.path.exists(os.path.join(workdir, "LOCK"))
  with WorkdirLock(workdir):  # free again
    pass


def test_an_exception_releases_the_lock(tmp_path):
  with pytest.raises(ValueError):
    with WorkdirLock(str(tmp_path)):
      raise ValueError("boom")
  assert not os.path.exists(tmp_path / "LOCK")


def test_the_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
  workdir = str(tmp_path)
  write_lock(workdir, pid=dead_pid())
  with caplog.at_level(logging.WARNING):
    lock = WorkdirLock(workdir).acquire()
  assert read_lock(workdir)["token"] == lock.info["token"]
  assert "stale lock" in caplog.text and "--workdir=elsewhere" in caplog.text
  lock.release()


def test_a_reused_pid_or_a_previous_boot_is_stale(tmp_path, live_process):
  workdir = str(tmp_path)
  ticks = workdir_lock._proc_stat(live_process.pid)[1]  # pylint: disable=protected-access
  write_lock(workdir, pid=live_process.pid, pid_start_ticks=ticks - 1)  # another process's pid
  WorkdirLock(workdir).acquire().release()
  write_lock(workdir, pid=live_process.pid, boot_id="another-boot")
  WorkdirLock(workdir).acquire().release()


def test_live_holders_and_holders_on_other_hosts_are_not_stale(tmp_path, live_process):
  workdir = str(tmp_path)
  ticks = workdir_lock._proc_stat(live_process.pid)[1]  # pylint: disable=protected-access
  for holder in (dict(pid=live_process.pid), dict(pid=live_process.pid, pid_start_ticks=ticks),
                 dict(host="another-host", pid=dead_pid())):
    write_lock(workdir, **holder)
    with pytest.raises(WorkdirLockedError, match=f"host {holder.get('host', '')}.*pid "
                       f"{holder['pid']}"):
      WorkdirLock(workdir).acquire()
    assert read_lock(workdir)["token"] == "their-token"


def test_break_lock_removes_any_holder_and_takes_the_lock(tmp_path, caplog):
  workdir = str(tmp_path)
  write_lock(workdir, host="another-host", pid=12345)
  with caplog.at_level(logging.WARNING):
    lock = WorkdirLock(workdir, break_lock=True).acquire()
  assert read_lock(workdir)["token"] == lock.info["token"]
  assert "--break_lock" in caplog.text and "another-host" in caplog.text
  lock.release()
  WorkdirLock(workdir, break_lock=True).acquire().release()  # no lock to break: just takes it


def test_an_unreadable_lock_needs_break_lock(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lock, "_EMPTY_LOCK_WAIT_S", 0.1)
  (tmp_path / "LOCK").write_text("")
  with pytest.raises(WorkdirLockedError, match="unreadable"):
    WorkdirLock(str(tmp_path)).acquire()
  WorkdirLock(str(tmp_path), break_lock=True).acquire().release()


def test_release_leaves_a_lock_that_is_no_longer_this_runs(tmp_path):
  workdir = str(tmp_path)
  lock = WorkdirLock(workdir).acquire()
  taker = WorkdirLock(workdir, break_lock=True).acquire()
  lock.release()
  assert read_lock(workdir)["token"] == taker.info["token"]
  taker.release()


def test_bucket_protocol_write_read_back_and_compare(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lock, "OBJECT_STORE_SETTLE_S", 0.0)
  workdir = str(tmp_path)
  with WorkdirLock(workdir, object_store=True) as first:
    assert read_lock(workdir)["token"] == first.info["token"]
    with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
      WorkdirLock(workdir, object_store=True).acquire()
  assert not os.path.exists(tmp_path / "LOCK")

  # Another run writes its lock while this one waits to read its own back: the last write
  # wins, and this run stops naming the other.
  real_sleep = time.sleep

  def other_run_writes(seconds):
    write_lock(workdir, host="another-host", pid=4242)
    real_sleep(seconds)

  monkeypatch.setattr(workdir_lock.time, "sleep", other_run_writes)
  with pytest.raises(WorkdirLockedError, match="host another-host, pid 4242"):
    WorkdirLock(workdir, object_store=True).acquire()
  assert read_lock(workdir)["token"] == "their-token"


def test_sigterm_releases_the_lock_and_still_ends_the_process(tmp_path):
  code = ("import sys, time\nfrom maskclip_jax.workdir_lock import WorkdirLock\n"
          "WorkdirLock(sys.argv[1], release_on_sigterm=True).acquire()\n"
          "print('held', flush=True)\ntime.sleep(60)\n")
  process = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
  assert process.stdout.readline().strip() == "held"
  assert os.path.exists(tmp_path / "LOCK")
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=30) == -signal.SIGTERM
  assert not os.path.exists(tmp_path / "LOCK")


# ---------------------------------------------------------------- two maskclip-train runs
TINY = "configs/tiny_synthetic.py:runlocal"


def test_a_second_trainer_on_the_same_workdir_stops_at_once(tmp_path):
  from maskclip_jax import checkpoint  # pylint: disable=g-import-not-at-top
  workdir, tfds_dir = str(tmp_path / "run"), str(tmp_path / "tfds")
  # Trains until told to stop: a SIGTERM saves the step it is at and exits 0.
  first = Run(workdir, tfds_dir, "--config.total_steps=100000", "--config.checkpoint.keep=2",
              config=TINY)
  try:
    lock = os.path.join(workdir, "LOCK")
    assert wait_for(lambda: os.path.exists(lock), 300, first), first.output[-3000:]
    holder = read_lock(workdir)
    assert holder["pid"] == first.process.pid

    started = time.time()
    code, output = finished(Run(workdir, tfds_dir, "--config.total_steps=3", config=TINY),
                            timeout=300)
    assert code != 0, output[-3000:]
    assert (f"is in use by another maskclip-train: host {socket.gethostname()}, "
            f"pid {first.process.pid}") in output, output[-3000:]
    assert "--break_lock" in output
    assert "Config:" not in output  # it stopped before loading tensorflow or the model
    assert time.time() - started < 120
    assert first.process.poll() is None and read_lock(workdir)["token"] == holder["token"]

    # The first run trains on, then stops on SIGTERM: exit 0, its checkpoints whole.
    assert wait_for(lambda: re.search(r"^step +\d+/", first.output, re.M), 300, first), first.output[-3000:]
    first.process.send_signal(signal.SIGTERM)
    code, output = finished(first, timeout=300)
  finally:
    if first.process.poll() is None:
      first.process.kill()
  assert code == 0, output[-3000:]
  assert not os.path.exists(lock)  # released
  steps = sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints"))
                 if name.isdigit())
  latest = checkpoint.latest_step(workdir)
  assert steps and latest == steps[-1] and f"Saved step {latest}" in output
  state, step = checkpoint.load_state_numpy(workdir)
  assert step == latest and int(state["step"]) == latest
