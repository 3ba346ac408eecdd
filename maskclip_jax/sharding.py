"""The device mesh, sharding rules over parameter paths, and the compiled train step.

Mesh axes ('data', 'fsdp'): the batch is split over both; a parameter is either replicated or
split over 'fsdp' on one dimension. `config.mesh` gives the axis sizes as (name, size) pairs,
e.g. (('data', -1), ('fsdp', 4)): -1 is "the devices the other axis leaves", a missing axis
has size 1. Devices are laid out topology-aware on TPU, in `jax.devices()` order elsewhere
(so on CPU and GPU each process's devices are consecutive along the batch).

Rules are (regex, action) pairs matched with `re.search` against a leaf's path in the train
state ('params/visual/conv1/kernel', 'opt_state/0/mu/visual/conv1/kernel', ...); the first
match wins. Actions:
  'replicate'      the whole leaf on every device;
  'fsdp'           split its largest dimension divisible by the 'fsdp' axis size (replicate if
                   none is), as big_vision's fsdp rule;
  a tuple          an explicit PartitionSpec, e.g. (None, 'fsdp').
"""
import re
from typing import Callable, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from maskclip_jax.pytree_paths import path_name

MESH_AXES = ("data", "fsdp")
BATCH_SPEC = P(MESH_AXES)
DEFAULT_RULES = ((".*", "replicate"),)
FSDP_RULES = ((".*", "fsdp"),)


def mesh_shape(axes, num_devices: int) -> dict:
  """{'data': d, 'fsdp': f} from `config.mesh`'s (name, size) pairs for `num_devices` devices.

  Raises ValueError naming `config.mesh` when the sizes do not fit the devices.
  """
  def fail(problem):
    raise ValueError(f"--config.mesh={tuple(tuple(a) for a in axes)!r}: {problem}. Give "
                     f"(name, size) pairs over {MESH_AXES} whose sizes multiply to the "
                     f"{num_devices} devices, with at most one size -1 (the rest), e.g. "
                     "--config.mesh=\"(('data', -1), ('fsdp', 2))\".")
  sizes = {}
  for pair in axes:
    if len(pair) != 2 or pair[0] not in MESH_AXES or pair[0] in sizes:
      fail(f"{tuple(pair)!r} is not a (name, size) pair of a new axis in {MESH_AXES}")
    name, size = pair
    if not isinstance(size, int) or (size < 1 and size != -1):
      fail(f"the size of {name!r} must be a positive int or -1, not {size!r}")
    sizes[name] = size
  rest = [name for name, size in sizes.items() if size == -1]
  if len(rest) > 1:
    fail("more than one axis has size -1")
  known = int(np.prod([size for size in sizes.values() if size != -1]))
  if num_devices % known:
    fail(f"{' x '.join(f'{n}={s}' for n, s in sizes.items() if s != -1)} does not divide the "
         f"{num_devices} devices")
  if rest:
    sizes[rest[0]] = num_devices // known
  elif known != num_devices:
    fail(f"{known} devices in the mesh, but there are {num_devices}")
  return {name: sizes.get(name, 1) for name in MESH_AXES}


def make_mesh(axes=(("data", -1),), devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """The ('data', 'fsdp') mesh of `config.mesh` over `devices` (default: all of them).

  `axes` may also be an int: the fsdp size, with the rest of the devices on 'data'.
  """
  if isinstance(axes, int):
    axes = (("data", -1), ("fsdp", axes))
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(axes, len(devices))
  # create_device_mesh follows the physical topology on TPU (rings along each axis) and is a
  # plain reshape of the device list on CPU and GPU.
  grid = mesh_utils.create_device_mesh([shape[name] for name in MESH_AXES], devices,
                                       allow_split_physical_axes=True)
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


def abstract_sharded_state(init_fn: Callable, mesh: Mesh, rules=DEFAULT_RULES):
  """(abstract state, state_shardings) of `init_fn()`, traced, never run: ShapeDtypeStructs
  that carry their leaf's NamedSharding by the rules, as a restore or a compile wants them."""
  shapes = jax.eval_shape(init_fn)
  shardings = tree_shardings(shapes, mesh, rules)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          shapes, shardings)
  return abstract, shardings


def create_sharded_state(init_fn: Callable, mesh: Mesh, rules=DEFAULT_RULES):
  """Runs `init_fn()` once, compiled, with every leaf created where its rule puts it.

  Returns (state, state_shardings). No device ever holds an unsharded copy of an fsdp leaf.
  """
  _, shardings = abstract_sharded_state(init_fn, mesh, rules)
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
