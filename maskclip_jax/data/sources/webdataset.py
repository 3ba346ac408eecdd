"""`wds:PATTERN`: webdataset / img2dataset tar shards ({key}.jpg|png|webp + {key}.txt).

A file that is empty or no tar is a bad shard: named in a warning and counted (see tar_reader).
"""
import tensorflow as tf

from maskclip_jax.data import file_patterns
from maskclip_jax.data import tar_reader
from maskclip_jax.data.sources import Source
from maskclip_jax.data.sources import sharded_files

DEFAULT_IMAGE_EXTS = "jpg,jpeg,png,webp"
DEFAULT_CAPTION_EXT = "txt"


def make(spec, input_config, *, training, seed, process_index, process_count) -> Source:
  image_exts = tuple(e.strip().lower().lstrip(".")
                     for e in (input_config.image_key or DEFAULT_IMAGE_EXTS).split(","))
  caption_key = input_config.caption_key or DEFAULT_CAPTION_EXT
  has_captions = caption_key != "none"
  caption_ext = caption_key.lower().lstrip(".") if has_captions else ""
  if input_config.label_key:
    raise ValueError(f"--config.input.label_key={input_config.label_key!r}: webdataset shards "
                     "carry no labels here; leave it empty for wds: data.")
  files = file_patterns.list_files(
      spec.location, data=spec.text,
      allow_missing=bool(input_config.get("allow_missing_shards", False)))

  def read_shard(path):
    return tar_reader.shard_dataset(path, image_exts, caption_ext)

  dataset = sharded_files.interleave_files(
      files, read_shard, training=training, seed=seed, process_index=process_index,
      process_count=process_count, cycle_length=input_config.cycle_length)

  def parse(sample):
    # Without a caption member in use, only the image decides whether a sample is usable.
    ok = sample["ok"] if has_captions else tf.strings.length(sample["image"]) > 0
    return {"image": sample["image"], "caption": sample["caption"],
            "label": tf.constant(-1, tf.int64), "ok": ok}

  def bad_shard(sample):
    return sample["bad_shard"]

  return Source(dataset=dataset, parse=parse, has_captions=has_captions, has_labels=False,
                bad_shard=bad_shard)
