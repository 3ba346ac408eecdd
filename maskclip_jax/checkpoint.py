"""Checkpoints with orbax: the whole train state and the input pipeline's position, together.

Layout: WORKDIR/checkpoints/<step>/{state, data, checksums}; WORKDIR/config.json is the run's
config.
Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous step as the latest restorable one.
The `data` item is saved synchronously (the iterator moves on as soon as the step returns);
the `state` arrays are written in the background (async) while training continues.
With several processes every one takes part (each writes the shards it holds, so the workdir
must be a filesystem or bucket they all see), and a restore reads into the new run's shardings:
another mesh or process count reshards on restore. Input positions are per process of the
stream; restore.input_for_resume says what happens when the process count changes.

Verified checkpoints. Each save also writes, in the same atomic step directory, the item
`checksums/checksums.json`: a 64-bit fingerprint of every array of the state, computed on the
devices by a jitted function of each global array (a wrapping uint32 sum of a per-element hash
of (bits, global index), and a sum of bits * (2 * index + 1)): it does not depend on the mesh,
so a checkpoint verifies when restored into another sharding, and it costs no copy to the host
(one read of the state: at ViT-B/16, 2.6 GiB, 1.3 s on a 2-core CPU). Once a save has
committed, each process lists the sizes of the files it wrote in
`checksums/files.process_N.json`, tagged with that save's id (a listing of another save is
ignored). The input position is checked by crc32 of its files (`data/checksums-P-of-N.json`).
`restore_verified` checks a step (file sizes, metadata, the arrays read back against their
fingerprints, every floating array finite) and falls back to the newest step that passes,
naming each rejected step with its reason; a checkpoint saved before this (no checksums) is
checked for finiteness only. Nothing is deleted: the trainer moves the rejected (and, with
--config.resume_step, the newer) steps to WORKDIR/checkpoints_set_aside/ (out of reach of
`keep`'s garbage collection, and out of the way of the run saving those steps again).
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from maskclip_jax.checkpoint_checksums import (CHECKSUM_FORMAT, checksum_record, file_crc32,
                                                 fingerprints)
from maskclip_jax.pytree_paths import path_name

CHECKPOINT_DIR = "checkpoints"
SET_ASIDE_DIR = "checkpoints_set_aside"
CONFIG_FILE = "config.json"
CHECKSUMS_ITEM = "checksums"
CHECKSUMS_FILE = "checksums.json"
REASON_FILE = "SET_ASIDE_REASON.txt"


class CheckpointError(RuntimeError):
  """No checkpoint (or not the one asked for) passes verification."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
  """No checkpoint at the step asked for."""


def _files_record_name(process_index: int) -> str:
  return f"files.process_{process_index}.json"


def _input_checksums_name(process_index: int, process_count: int) -> str:
  return f"checksums-{process_index:05d}-of-{process_count:05d}.json"


class InputPositionHandler(ocp.CheckpointHandler):
  """Saves/restores an input iterator that has `save(directory)` and `restore(directory)`
  (data/pipeline.py's InputIterator: one file set per process in the same directory), with a
  crc32 of each file it wrote (`checksums-P-of-N.json`, P and N of the iterator's stream).

  A stream that every process reads whole (input.every_process_reads_all: the iterator is
  process 0 of 1 on every process) has one position, the same everywhere: process 0 writes it
  and every process reads it.
  """

  def save(self, directory: epath.Path, args: "InputPositionSave"):
    iterator = args.iterator
    if iterator.process_count == 1 and jax.process_index() != 0:
      return
    prefix = epath.Path(iterator.save(os.fspath(directory)))
    files = {path.name: file_crc32(path) for path in prefix.parent.glob(prefix.name + "*")}
    (directory / _input_checksums_name(iterator.process_index, iterator.process_count)
     ).write_text(json.dumps(dict(format=1, files=files), indent=1))

  def restore(self, directory: epath.Path, args: "InputPositionRestore"):
    args.iterator.restore(os.fspath(directory))
    return args.iterator


@ocp.args.register_with_handler(InputPositionHandler, for_save=True)
@dataclasses.dataclass
class InputPositionSave(ocp.args.CheckpointArgs):
  iterator: Any


@ocp.args.register_with_handler(InputPositionHandler, for_restore=True)
@dataclasses.dataclass
class InputPositionRestore(ocp.args.CheckpointArgs):
  iterator: Any




# ---------------------------------------------------------------- the manager
class VerifiedCheckpointManager(ocp.CheckpointManager):
  """A CheckpointManager that, once a save of its own has committed (it waits on it before
  the next save, and at the end), writes the sizes of the files this process wrote into it:
  `checksums/files.process_N.json`, tagged with the save's id so that it cannot pass for
  another save's listing."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._unlisted_steps = []

  def save(self, step, *args, **kwargs):
    saved = super().save(step, *args, **kwargs)
    if saved:
      self._unlisted_steps.append(step)
    return saved

  def wait_until_finished(self):
    super().wait_until_finished()
    steps, self._unlisted_steps = self._unlisted_steps, []
    for step in steps:
      try:
        _write_file_sizes(self.directory / str(step), jax.process_index())
      except Exception as e:  # pylint: disable=broad-except
        # A listing is a help, not a requirement: verification goes on without it.
        logging.warning("Could not list the files of the checkpoint at step %d: %s", step, e)


def _own_files(step_dir: epath.Path, process_index: int) -> dict:
  """{path relative to the step directory: size} of the files `process_index` answers for:
  its own `ocdbt.process_N` folder; process 0 also everything outside such folders."""
  files = {}
  for root, _, names in step_dir.walk():
    parts = root.relative_to(step_dir).parts
    if parts[:1] == (CHECKSUMS_ITEM,):
      continue
    owner = next((part.rpartition("_")[2] for part in parts
                  if part.startswith("ocdbt.process_")), "0")
    if owner != str(process_index):
      continue
    for name in names:
      if not parts and name == "_CHECKPOINT_METADATA":  # orbax may update it after commit
        continue
      path = root / name
      files[os.fspath(path.relative_to(step_dir))] = path.stat().length
  return files


def _write_file_sizes(step_dir: epath.Path, process_index: int) -> None:
  checksums = step_dir / CHECKSUMS_ITEM / CHECKSUMS_FILE
  if not checksums.exists():  # gone (garbage collected) or not final yet on this process
    return
  save_id = json.loads(checksums.read_text())["save_id"]
  record = dict(save_id=save_id, process_index=process_index,
                files=_own_files(step_dir, process_index))
  (step_dir / CHECKSUMS_ITEM / _files_record_name(process_index)).write_text(
      json.dumps(record, indent=1))


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def make_manager(workdir: str, *, max_to_keep: Optional[int] = 3, async_save: bool = True,
                 read_only: bool = False) -> VerifiedCheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=not read_only,
      read_only=read_only, cleanup_tmp_directories=not read_only)
  # Named handlers let a fresh manager read metadata before any save or restore.
  handlers = dict(state=ocp.StandardCheckpointHandler(), data=InputPositionHandler(),
                  checksums=ocp.JsonCheckpointHandler(filename=CHECKSUMS_FILE))
  return VerifiedCheckpointManager(checkpoint_dir(workdir), options=options,
                                   item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state, input_iterator=None,
         force: bool = False) -> bool:
  """Starts saving `state` (and the input position) at `step`; returns whether it saved.
  The state's checksums are computed first, on the devices (the call waits for `state`)."""
  if not force and not manager.should_save(step):
    return False
  items = dict(state=ocp.args.StandardSave(state),
               checksums=ocp.args.JsonSave(checksum_record(step, state)))
  if input_iterator is not None:
    items["data"] = InputPositionSave(input_iterator)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, input_iterator=None):
  """Restores the state into the shapes/shardings of `abstract_state` (ShapeDtypeStructs with
  shardings, or arrays), and the input position into `input_iterator` if given. No checks:
  see `restore_verified`."""
  items = dict(state=ocp.args.StandardRestore(abstract_state))
  if input_iterator is not None:
    items["data"] = InputPositionRestore(input_iterator)
  return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def restore_input_position(manager: ocp.CheckpointManager, step: int, input_iterator) -> None:
  manager.restore(step, args=ocp.args.Composite(data=InputPositionRestore(input_iterator)))


def input_position_dir(manager: ocp.CheckpointManager, step: int) -> str:
  """Where the input positions of `step` are (one file set per process of the stream)."""
  return os.fspath(manager.directory / str(step) / "data")


# ---------------------------------------------------------------- verification
def _describe(error: BaseException) -> str:
  """One line for an exception: its innermost cause's first line (tensorstore names the array
  and file there), beside the outermost when they differ."""
  chain, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    chain.append(error)
    error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
  lines = []
  for e in (chain[0], chain[-1]) if len(chain) > 1 else chain[:1]:
    text_lines = [line for line in str(e).splitlines() if line.strip()] or [""]
    if text_lines[0].startswith("Traceback"):  # a formatted traceback: its last line
      text = next((line for line in reversed(text_lines) if not line[0].isspace()), "")
    else:
      text = text_lines[0].strip()
    if text.startswith("Encountered error while reading array index"):
      text = text.split(" See full TensorStore details")[0]
    prefix = "" if text.startswith(f"{type(e).__name__}:") else f"{type(e).__name__}: "
    lines.append(f"{prefix}{text[:400]}")
  return "; ".join(dict.fromkeys(lines))


def _check_file_sizes(step_dir: epath.Path, save_id: str, problems: list) -> None:
  """Appends a problem for each file listed by this process's or process 0's listing that is
  missing or of another size."""
  for index in sorted({0, jax.process_index()}):
    path = step_dir / CHECKSUMS_ITEM / _files_record_name(index)
    if not path.exists():
      continue  # a run killed between commit and listing: the array checks still apply
    try:
      record = json.loads(path.read_text())
      files = record["files"]
    except (ValueError, KeyError, OSError) as e:
      problems.append(f"unreadable file listing {_rel(path, step_dir)} ({_describe(e)})")
      continue
    if record.get("save_id") != save_id:
      logging.warning("%s lists the files of another save: ignored.", path)
      continue
    for name, size in sorted(files.items()):
      file = step_dir / name
      if not file.exists():
        problems.append(f"missing file {name}")
      elif file.stat().length != size:
        problems.append(f"file {name} has {file.stat().length} bytes, saved with {size}")


def _check_input_files(step_dir: epath.Path, input_iterator, problems: list) -> None:
  path = step_dir / "data" / _input_checksums_name(input_iterator.process_index,
                                                   input_iterator.process_count)
  if not path.exists():
    return  # another process count (the input restarts), or saved before checksums
  try:
    files = json.loads(path.read_text())["files"]
  except (ValueError, KeyError, OSError) as e:
    problems.append(f"unreadable input checksums {_rel(path, step_dir)} ({_describe(e)})")
    return
  for name, crc in sorted(files.items()):
    file = step_dir / "data" / name
    if not file.exists():
      problems.append(f"missing file data/{name}")
    elif file_crc32(file) != crc:
      problems.append(f"checksum mismatch in file data/{name} (the input position)")


def _unreadable_json(item_dir: epath.Path, step_dir: epath.Path) -> str:
  """'state/_METADATA is no valid JSON; ' for each of orbax's metadata files that does not
  parse (or is missing)."""
  names = ["_METADATA", "_sharding", "_CHECKPOINT_METADATA"]
  if (item_dir / "array_metadatas").exists():
    names += [f"array_metadatas/{p.name}" for p in (item_dir / "array_metadatas").iterdir()]
  found = ""
  for name in names:
    path = item_dir / name
    if name == "_CHECKPOINT_METADATA":
      path = step_dir / name
    if not path.exists():
      if name in ("_METADATA", "_CHECKPOINT_METADATA"):
        found += f"{_rel(path, step_dir)} is missing; "
      continue
    try:
      json.loads(path.read_bytes())
    except (ValueError, OSError):
      found += f"{_rel(path, step_dir)} is no valid JSON; "
  return found


def _rel(path: epath.Path, step_dir: epath.Path) -> str:
  return os.fspath(path.relative_to(step_dir))


def _check_arrays(state, record: Optional[dict], problems: list) -> None:
  prints = fingerprints(state)
  saved = (record or {}).get("arrays", {})
  for path, x in jax.tree_util.tree_leaves_with_path(state):
    name = path_name(path)
    checksum, nonfinite = prints[name]
    what = []
    entry = saved.get(name)
    if record is not None and entry is None:
      what.append("no saved checksum")
    elif (entry is not None and entry["shape"] == list(np.shape(x))
          and entry["dtype"] == str(x.dtype) and entry["checksum"] != checksum):
      what.append(f"checksum mismatch (saved {entry['checksum']}, read {checksum})")
    if nonfinite:
      what.append(f"{nonfinite} non-finite values of {np.size(x)}")
    if what:
      problems.append(f"array {name}: " + ", ".join(what))


def verify_step(manager: ocp.CheckpointManager, step: int, abstract_state, *,
                input_iterator=None, check_metadata: Optional[Callable] = None):
  """(the restored state or None, the problems found) for the checkpoint at `step`, restored
  into `abstract_state` (or what it returns for the step's metadata, if a function): the file
  sizes listed after its save, its metadata, its arrays against their checksums and finite,
  and the crc32 of `input_iterator`'s saved position. `check_metadata(step, metadata)` may
  raise (e.g. a model that does not fit: a config error, not a damaged checkpoint).

  Every process checks what it reads; they agree after the file checks and after the read,
  so that all of them go on to the read and the checksums (collectives), or none does."""
  step_dir = manager.directory / str(step)
  problems = []
  record, metadata = None, None
  checksums = step_dir / CHECKSUMS_ITEM / CHECKSUMS_FILE
  if checksums.exists():
    try:
      record = json.loads(checksums.read_text())
      if record.get("format") != CHECKSUM_FORMAT or record.get("step") != step:
        problems.append(f"{_rel(checksums, step_dir)} is of another format or step "
                        f"({record.get('format')!r}, step {record.get('step')})")
    except (ValueError, OSError, AttributeError) as e:
      problems.append(f"unreadable checksums {_rel(checksums, step_dir)} ({_describe(e)})")
    if record is not None and not problems:
      _check_file_sizes(step_dir, record.get("save_id"), problems)
  else:
    logging.info("The checkpoint at step %d (%s) has no checksums (saved before checkpoints "
                 "were verified): checking only that its arrays are finite.", step, step_dir)
  if input_iterator is not None:
    _check_input_files(step_dir, input_iterator, problems)
  if not problems:
    try:
      metadata = manager.item_metadata(step)["state"]
      if metadata is None:
        raise FileNotFoundError(f"no metadata in {step_dir / 'state'}")
    except Exception as e:  # pylint: disable=broad-except
      problems.append(f"unreadable metadata ({_unreadable_json(step_dir / 'state', step_dir)}"
                      f"{_describe(e)})")
  problems = _agree(problems)
  if problems:
    return None, problems
  if check_metadata is not None:
    check_metadata(step, metadata)
  if callable(abstract_state):
    abstract_state = abstract_state(metadata)
  state = None
  try:
    state = restore(manager, step, abstract_state)
  except Exception as e:  # pylint: disable=broad-except
    problems.append(f"unreadable array data in state/ ({_describe(e)})")
  problems = _agree(problems)
  if problems:
    return None, problems
  _check_arrays(state, record, problems)  # the same answer on every process
  if problems:
    return None, problems
  return state, []


_GATHER_BYTES = 4096


def _agree(problems: list) -> list:
  """The problems found by all processes (each checks the files and shards it reads), the
  same list on every process: a problem that not every process found names those that did."""
  if jax.process_count() == 1:
    return problems
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  text = "\n".join(problems).encode("utf-8")[:_GATHER_BYTES]
  buffer = np.zeros(_GATHER_BYTES, np.uint8)
  buffer[:len(text)] = np.frombuffer(text, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(buffer))
  found = {}
  for process, row in enumerate(gathered):
    text = row.tobytes().rstrip(b"\0").decode("utf-8", "replace")
    for problem in filter(None, text.split("\n")):
      found.setdefault(problem, []).append(process)
  everyone = list(range(len(gathered)))
  return [problem if processes == everyone else
          f"{problem} (on process{'es' if len(processes) > 1 else ''} "
          f"{', '.join(map(str, processes))})" for problem, processes in found.items()]


def _format_problems(problems: Sequence[str], limit: int = 8) -> str:
  more = f"; ... and {len(problems) - limit} more" if len(problems) > limit else ""
  return "; ".join(problems[:limit]) + more


def restore_verified(manager: ocp.CheckpointManager, abstract_state, *,
                     step: Optional[int] = None, input_iterator=None,
                     check_metadata: Optional[Callable] = None):
  """(state, step, {rejected step: reason}) from the checkpoint at `step`, or (None: the
  default) from the newest one that passes `verify_step`, trying the steps newest first.

  A step that fails is logged with its reason and skipped (nothing is deleted); `step` given
  and failing, or none passing, raises CheckpointError naming each step tried and why, and
  the steps there. The input position is not restored: `restore_input_position` (the caller
  decides whether the stream can continue)."""
  directory = manager.directory
  steps = sorted(manager.all_steps(), reverse=True)
  if step is not None and step not in steps:
    raise CheckpointNotFoundError(f"No checkpoint at step {step} in {directory}; steps there: "
                          f"{sorted(steps) or 'none'}.")
  rejected = {}
  for candidate in [step] if step is not None else steps:
    start = time.perf_counter()
    state, problems = verify_step(manager, candidate, abstract_state,
                                  input_iterator=input_iterator, check_metadata=check_metadata)
    if state is not None:
      logging.info("The checkpoint at step %d passed verification (%.1f s).", candidate,
                   time.perf_counter() - start)
      if rejected:
        logging.warning("Restored step %d, the newest checkpoint in %s that passes "
                        "verification, instead of %s (see above).", candidate,
                        directory, ", ".join(f"step {s}" for s in rejected))
      return state, candidate, rejected
    reason = _format_problems(problems)
    rejected[candidate] = reason
    logging.warning("The checkpoint at step %d (%s) fails verification: %s.%s", candidate,
                    directory / str(candidate), reason,
                    "" if step is not None else " Trying an older one.")
  listing = "\n  ".join(f"step {s} ({directory / str(s)}): {r}" for s, r in rejected.items())
  if step is not None:
    raise CheckpointError(f"The checkpoint at step {step} fails verification:\n  {listing}\n"
                          f"Steps in {directory}: {sorted(steps)}; choose another with "
                          "--config.resume_step.")
  raise CheckpointError(f"No checkpoint in {directory} passes verification:\n  {listing}")


def set_aside(manager: ocp.CheckpointManager, reasons: dict) -> list:
  """Moves the steps `reasons` names ({step: why}) out of the manager's directory into
  WORKDIR/checkpoints_set_aside/<step>[.N], with the reason in SET_ASIDE_REASON.txt: kept, but
  out of the run's way (it saves those steps again) and of `keep`'s garbage collection.
  Returns the new paths. Every process calls it (process 0 moves)."""
  root = manager.directory.parent / SET_ASIDE_DIR
  taken = {p.name for p in root.iterdir()} if root.exists() else set()
  targets = {}
  for step in sorted(reasons):
    name, suffix = str(step), 0
    while name in taken:
      suffix += 1
      name = f"{step}.{suffix}"
    taken.add(name)
    targets[step] = root / name
  _barrier("maskclip_jax.checkpoint.set_aside.targets")  # every process named them first
  for step, target in targets.items():
    if jax.process_index() == 0:
      root.mkdir(parents=True, exist_ok=True)
      (manager.directory / str(step)).rename(target)
      (target / REASON_FILE).write_text(f"step {step}: {reasons[step]}\n")
    logging.warning("Moved the checkpoint at step %d to %s (kept; %s).", step, target,
                    reasons[step])
  _barrier("maskclip_jax.checkpoint.set_aside.moved")
  manager.reload()
  return [os.fspath(target) for target in targets.values()]


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def check_workdir(workdir: str, needed_bytes: int) -> None:
  """Fails at start (not at the first save) on a workdir that cannot hold checkpoints."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe_{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f"--workdir={workdir!r} is not writable ({e}); choose a directory "
                          "you can write to.") from e
  free = shutil.disk_usage(workdir).free
  if free < needed_bytes:
    raise OSError(f"--workdir={workdir!r} has {free / 2**30:.2f} GiB free, less than the "
                  f"{needed_bytes / 2**30:.2f} GiB that config.checkpoint.min_free_checkpoints "
                  "checkpoints of this model need; free space or use another workdir.")


def write_run_info(workdir: str, mesh, total_steps: int) -> None:
  """WORKDIR/run_info.json (process 0): the code's git commit, the command line, the devices,
  processes and mesh, and the run's length; what a reader of the workdir needs to reproduce it."""
  if jax.process_index() != 0:
    return
  with open(os.path.join(workdir, "run_info.json"), "w") as f:
    json.dump(dict(git_commit=_git_commit(), argv=sys.argv, devices=jax.device_count(),
                   processes=jax.process_count(), mesh=dict(mesh.shape),
                   total_steps=total_steps), f, indent=1)


def _git_commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__),
                          capture_output=True, text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def shape_mismatches(abstract_state, metadata) -> list:
  """'path: checkpoint (a, b) vs model (c, d)' for every leaf whose shape differs."""
  saved = {path_name(p): tuple(m.shape) for p, m in
           jax.tree_util.tree_leaves_with_path(metadata) if hasattr(m, "shape")}
  wanted = {path_name(p): tuple(x.shape) for p, x in
            jax.tree_util.tree_leaves_with_path(abstract_state)}
  problems = [f"{k}: checkpoint {saved[k]} vs model {wanted[k]}"
              for k in sorted(wanted) if k in saved and saved[k] != wanted[k]]
  problems += [f"{k}: in the model, not in the checkpoint" for k in sorted(wanted)
               if k not in saved]
  problems += [f"{k}: in the checkpoint, not in the model" for k in sorted(saved)
               if k not in wanted]
  return problems


def check_fits_model(abstract_state, directory: str):
  """`check_metadata` for checkpoint.restore_verified: a checkpoint of another model is a
  config error (ValueError naming the shapes), not a damaged checkpoint to fall back from."""
  def check(step: int, metadata) -> None:
    problems = shape_mismatches(abstract_state, metadata)
    # Parameters first: the optimizer's moments repeat every parameter's mismatch.
    problems.sort(key=lambda p: (p.startswith("opt_state"), p))
    if problems:
      raise ValueError(
          f"The checkpoint at step {step} in {directory} does not match this config's model:"
          "\n  " + "\n  ".join(problems[:20])
          + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
          + "\nResume with the config it was trained with, or use a new --workdir.")
  return check


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {workdir!r} a maskclip_jax workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def save_state(workdir: str, step: int, state, config: ml_collections.ConfigDict) -> None:
  """Writes the config and one checkpoint synchronously (tests, tools)."""
  write_config(workdir, config)
  manager = make_manager(workdir, max_to_keep=None, async_save=False)
  save(manager, step, state, force=True)
  manager.wait_until_finished()
  manager.close()


def latest_step(workdir: str) -> Optional[int]:
  if not os.path.isdir(checkpoint_dir(workdir)):
    return None
  manager = make_manager(workdir, read_only=True)
  step = manager.latest_step()
  manager.close()
  return step


def load_state(workdir: str, step: Optional[int], sharding: jax.sharding.Sharding):
  """(the train state with every leaf placed by `sharding`, its step) from WORKDIR's checkpoint
  at `step` (None: the newest that passes verification; a warning names those that do not),
  verified (see `restore_verified`: CheckpointError if none, or not `step`, passes)."""
  manager = make_manager(workdir, read_only=True)
  if step is None and manager.latest_step() is None:
    raise FileNotFoundError(f"No checkpoint in {checkpoint_dir(workdir)}.")
  abstract = lambda metadata: jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), metadata)
  try:
    state, step, _ = restore_verified(manager, abstract, step=step)
  finally:
    manager.close()
  return state, step


def load_state_numpy(workdir: str, step: Optional[int] = None):
  """(the train state as numpy arrays, its step) from WORKDIR's checkpoint at `step`/latest."""
  state, step = load_state(workdir, step,
                           jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  return jax.tree.map(np.asarray, state), step


def load_for_export(workdir: str, step: Optional[int] = None):
  """(config, params, teacher, step) of a run: what export and evaluation need."""
  config = read_config(workdir)
  state, step = load_state_numpy(workdir, step)
  return config, state["params"], state.get("teacher", {}), step
