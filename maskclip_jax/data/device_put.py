"""Host-local numpy batches -> global `jax.Array`s sharded over the batch axis (no tensorflow)."""
import math
from typing import Mapping, Optional

import jax
import numpy as np


def _batch_partitions(sharding: jax.sharding.NamedSharding) -> int:
  """How many pieces `sharding` cuts the leading axis into (product of its mesh axes)."""
  spec = sharding.spec
  axes = spec[0] if len(spec) else None
  if axes is None:
    return 1
  axes = axes if isinstance(axes, tuple) else (axes,)
  return math.prod(sharding.mesh.shape[axis] for axis in axes)


def make_global_batch(local_batch: Mapping[str, np.ndarray],
                      sharding: jax.sharding.NamedSharding, *,
                      process_count: Optional[int] = None) -> dict[str, jax.Array]:
  """Each process's rows become its part of one global batch (processes in order).

  `sharding` splits the leading (batch) axis, e.g. NamedSharding(mesh, P(('data', 'fsdp')));
  trailing axes are replicated, so one sharding serves every array of the batch.
  `process_count` is how many processes the batch's rows are split over: jax.process_count()
  by default, each process passing global_batch_size / process_count rows; 1 when every
  process passes the whole global batch (input.every_process_reads_all), of which each device
  then takes its own rows, wherever the mesh puts it.
  """
  process_count = jax.process_count() if process_count is None else process_count
  if process_count not in (1, jax.process_count()):
    raise ValueError(f"process_count={process_count}: the batch's rows can be split over all "
                     f"{jax.process_count()} processes or held whole by each (1).")
  partitions = _batch_partitions(sharding)
  out = {}
  for name, array in local_batch.items():
    array = np.asarray(array)
    global_rows = (array.shape[0] if array.ndim else 0) * process_count
    if array.ndim == 0 or global_rows % partitions:
      raise ValueError(
          f"Batch field {name!r} has shape {array.shape}, so {global_rows} rows over "
          f"{process_count} process(es), which do not split into the {partitions} batch "
          f"shards of {sharding.spec}; choose a global batch size divisible by {partitions}.")
    global_shape = (global_rows,) + array.shape[1:]
    if process_count == jax.process_count():
      out[name] = jax.make_array_from_process_local_data(sharding, array, global_shape)
    else:
      out[name] = jax.make_array_from_callback(global_shape, sharding,
                                               lambda index, array=array: array[index])
  return out
