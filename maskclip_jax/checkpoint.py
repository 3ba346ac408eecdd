"""Checkpoints with orbax: the whole train state and the input pipeline's position, together.

Layout: WORKDIR/checkpoints/<step>/{state, data}; WORKDIR/config.json is the run's config.
Orbax writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous step as the latest restorable one.
The `data` item is saved synchronously (the iterator moves on as soon as the step returns);
the `state` arrays are written in the background (async) while training continues.
With several processes every one takes part (each writes the shards it holds, so the workdir
must be a filesystem or bucket they all see), and a restore reads into the new run's shardings:
another mesh or process count reshards on restore. Input positions are per process of the
stream; train.py says what happens when the process count changes.
"""
import dataclasses
import json
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"


class InputPositionHandler(ocp.CheckpointHandler):
  """Saves/restores an input iterator that has `save(directory)` and `restore(directory)`
  (data/pipeline.py's InputIterator: one file set per process in the same directory).

  A stream that every process reads whole (input.every_process_reads_all: the iterator is
  process 0 of 1 on every process) has one position, the same everywhere: process 0 writes it
  and every process reads it.
  """

  def save(self, directory: epath.Path, args: "InputPositionSave"):
    if args.iterator.process_count == 1 and jax.process_index() != 0:
      return
    args.iterator.save(os.fspath(directory))

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


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def make_manager(workdir: str, *, max_to_keep: Optional[int] = 3, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=not read_only,
      read_only=read_only, cleanup_tmp_directories=not read_only)
  # Named handlers let a fresh manager read metadata before any save or restore.
  handlers = dict(state=ocp.StandardCheckpointHandler(), data=InputPositionHandler())
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state, input_iterator=None,
         force: bool = False) -> bool:
  """Starts saving `state` (and the input position) at `step`; returns whether it saved."""
  items = dict(state=ocp.args.StandardSave(state))
  if input_iterator is not None:
    items["data"] = InputPositionSave(input_iterator)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, input_iterator=None):
  """Restores the state into the shapes/shardings of `abstract_state` (ShapeDtypeStructs with
  shardings, or arrays), and the input position into `input_iterator` if given."""
  items = dict(state=ocp.args.StandardRestore(abstract_state))
  if input_iterator is not None:
    items["data"] = InputPositionRestore(input_iterator)
  return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def input_position_dir(manager: ocp.CheckpointManager, step: int) -> str:
  """Where the input positions of `step` are (one file set per process of the stream)."""
  return os.fspath(manager.directory / str(step) / "data")


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
  at `step` (None: the latest)."""
  manager = make_manager(workdir, read_only=True)
  step = manager.latest_step() if step is None else step
  if step is None or step not in manager.all_steps():
    raise FileNotFoundError(f"No checkpoint{'' if step is None else f' at step {step}'} in "
                            f"{checkpoint_dir(workdir)}; steps there: {manager.all_steps()}.")
  metadata = manager.item_metadata(step)["state"]
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                          metadata)
  state = restore(manager, step, abstract)
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
