"""Data sources: one epoch of this process's raw examples, plus how to parse one.

Every source gives the pipeline a `Source`. Its dataset holds raw, still encoded examples (what
the shuffle buffer should hold: small); `parse` turns one into
    {'image': encoded image bytes, 'caption': tf.string, scalar or a list of captions,
     'label': int64 (-1 without labels), 'ok': bool (False: a bad example, to skip and count)}
and may raise on malformed data: the pipeline runs it where errors skip and count the example.
A shard that is bad as a whole gives one marker row, which `Source.bad_shard` recognises.
All of it is TF ops only, so the pipeline's position can be saved.
"""
import dataclasses
from typing import Callable

import tensorflow as tf

from maskclip_jax.data import source_spec


@dataclasses.dataclass(frozen=True)
class Source:
  dataset: tf.data.Dataset
  parse: Callable[[object], dict]
  has_captions: bool
  has_labels: bool
  # This process's examples per epoch where known without reading the data (TFDS), else None.
  num_examples: int | None = None
  # For sources whose files can be bad as a whole (wds: a file that is no tar), raw example ->
  # tf.bool: it is a bad shard's marker row, not an example. The pipeline takes those out and
  # counts them (InputIterator.bad_shard_count); the reader names each in a warning. Must not
  # raise.
  bad_shard: Callable[[object], tf.Tensor] | None = None


def make_source(spec: source_spec.SourceSpec, input_config, *, training: bool, seed: int,
                process_index: int, process_count: int) -> Source:
  """The `Source` for `spec`: this process's share of the data, files shuffled when training.

  `seed` must be the same on every process (file order and example-level sharding rely on it).
  """
  # Imported here so that reading one kind of data needs only that module.
  if spec.kind == "wds":
    from maskclip_jax.data.sources import webdataset as module
  elif spec.kind == "tfrecord":
    from maskclip_jax.data.sources import tfrecord as module
  elif spec.kind == "csv":
    from maskclip_jax.data.sources import csv_file as module
  elif spec.kind == "folder":
    from maskclip_jax.data.sources import image_folder as module
  elif spec.kind in ("tfds", "synthetic"):
    from maskclip_jax.data.sources import tfds_source as module
  else:
    raise ValueError(f"Data {spec.text!r}: unknown source kind {spec.kind!r}.")
  return module.make(spec, input_config, training=training, seed=seed,
                     process_index=process_index, process_count=process_count)
