"""The device mesh, sharding rules over parameter paths, and the compiled train step.

Mesh axes ('data', 'fsdp'): the batch is split over both; a parameter is either replicated or
split over 'fsdp' on one dimension. Rules are (regex, action) pairs matched with `re.search`
against a leaf's path in the train state ('params/visual/conv1/kernel',
'opt_state/0/mu/visual/conv1/kernel', ...); the first match wins. Actions:
  'replicate'      the whole leaf on every device;
  'fsdp'           split its largest dimension divisible by the 'fsdp' axis size (replicate if
                   none is), as big_vision's fsdp rule;
  a tuple          an explicit PartitionSpec, e.g. (None, 'fsdp').
"""
import re
from typing import Callable, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from maskclip_jax.pytree_paths import path_name

MESH_AXES = ("data", "fsdp")
BATCH_SPEC = P(MESH_AXES)
DEFAULT_RULES = ((".*", "replicate"),)
FSDP_RULES = ((".*", "fsdp"),)


def make_mesh(fsdp: int = 1, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (default: all), `fsdp` devices per model shard."""
  devices = list(jax.devices() if devices is None else devices)
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f"config.mesh.fsdp={fsdp} does not divide the {len(devices)} devices; "
                     "choose a divisor of the device count.")
  grid = np.asarray(devices).reshape(len(devices) // fsdp, fsdp)
  return Mesh(grid, MESH_AXES)


def _fsdp_spec(shape: Tuple[int, ...], fsdp_size: int) -> P:
  if fsdp_size == 1:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def partition_spec(path: str, shape: Tuple[int, ...], rules, mesh: Mesh) -> P:
  for pattern, action in rules:
    if re.search(pattern, path):
      if action == "replicate":
        return P()
      if action == "fsdp":
        return _fsdp_spec(shape, mesh.shape["fsdp"])
      if isinstance(action, (tuple, list)):
        return P(*action)
      raise ValueError(f"sharding rule ({pattern!r}, {action!r}): the action must be "
                       "'replicate', 'fsdp' or a PartitionSpec tuple.")
  return P()


def tree_shardings(tree, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs) by the rules."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(
          mesh, partition_spec(path_name(path), tuple(leaf.shape), rules, mesh)),
      tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, BATCH_SPEC)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def create_sharded_state(init_fn: Callable, mesh: Mesh, rules=DEFAULT_RULES):
  """Runs `init_fn()` once, compiled, with every leaf created where its rule puts it.

  Returns (state, state_shardings). No device ever holds an unsharded copy of an fsdp leaf.
  """
  shapes = jax.eval_shape(init_fn)
  shardings = tree_shardings(shapes, mesh, rules)
  return jax.jit(init_fn, out_shardings=shardings)(), shardings


def compile_train_step(train_step: Callable, mesh: Mesh, state_shardings):
  """jit(train_step) with explicit shardings; the old state's buffers are donated.

  The step compiles once, at its first call, for these shardings and the batch's shape.
  """
  return jax.jit(
      lambda state, batch: train_step(state, batch),
      in_shardings=(state_shardings, batch_sharding(mesh)),
      out_shardings=(state_shardings, replicated(mesh)),
      donate_argnums=(0,))
