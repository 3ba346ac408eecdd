"""A list of shard files read as one dataset: this process's share, reshuffled when training."""
from typing import Callable

import tensorflow as tf

from maskclip_jax.data import file_patterns


def interleave_files(files: list[str], read_file: Callable[[tf.Tensor], tf.data.Dataset], *,
                     training: bool, seed: int, process_index: int, process_count: int,
                     cycle_length: int) -> tf.data.Dataset:
  """Examples of this process's files, `cycle_length` files read at once, in a fixed order.

  In training the file order is reshuffled every epoch, from `seed`; every process uses the
  same `seed`, which keeps example-level sharding (fewer files than processes) disjoint.
  """
  local_files, shard_examples = file_patterns.files_for_process(files, process_index,
                                                                process_count)
  dataset = tf.data.Dataset.from_tensor_slices(local_files)
  if training:
    dataset = dataset.shuffle(len(local_files), seed=seed, reshuffle_each_iteration=True)
  cycle_length = max(1, min(cycle_length, len(local_files)))
  # (No AutoGraph: readers have no Python control flow over tensors; it only slows tracing.)
  read_file = tf.autograph.experimental.do_not_convert(read_file)
  dataset = dataset.interleave(read_file, cycle_length=cycle_length, block_length=1,
                               num_parallel_calls=cycle_length, deterministic=True)
  if shard_examples:
    dataset = dataset.shard(process_count, process_index)
  return dataset
