"""`tfrecord:PATTERN`: TFRecord files of tf.train.Example, as img2dataset writes them.

img2dataset stores the encoded image under its format ('jpg' by default) and the caption under
'txt'; other names are set with `image_key` / `caption_key` / `label_key`.

A TFRecord file that is cut off or corrupt ends at the bad record: the records after it cannot be
found without a valid length, so they are dropped uncounted (the tar reader does count what it
can see); this is logged by tf.data.
"""
import tensorflow as tf

from maskclip_jax.data import file_patterns
from maskclip_jax.data.sources import Source
from maskclip_jax.data.sources import sharded_files

DEFAULT_IMAGE_KEY = "jpg"
DEFAULT_CAPTION_KEY = "txt"


def make(spec, input_config, *, training, seed, process_index, process_count) -> Source:
  image_key = input_config.image_key or DEFAULT_IMAGE_KEY
  caption_key = input_config.caption_key or DEFAULT_CAPTION_KEY
  has_captions = caption_key != "none"
  label_key = input_config.label_key
  files = file_patterns.list_files(
      spec.location, data=spec.text,
      allow_missing=bool(input_config.get("allow_missing_shards", False)))

  def read_file(path):
    # ignore_errors: a data-loss error ends this file instead of the whole input pipeline.
    return tf.data.TFRecordDataset(path, buffer_size=1 << 20).ignore_errors()

  dataset = sharded_files.interleave_files(
      files, read_file, training=training, seed=seed, process_index=process_index,
      process_count=process_count, cycle_length=input_config.cycle_length)

  features = {image_key: tf.io.FixedLenFeature([], tf.string, default_value="")}
  if has_captions:
    features[caption_key] = tf.io.FixedLenFeature([], tf.string, default_value="")
  if label_key:
    features[label_key] = tf.io.FixedLenFeature([], tf.int64, default_value=-1)

  def parse(record):
    example = tf.io.parse_single_example(record, features)
    image = example[image_key]
    caption = example[caption_key] if has_captions else tf.constant("")
    label = example[label_key] if label_key else tf.constant(-1, tf.int64)
    return {"image": image, "caption": caption, "label": label,
            "ok": tf.strings.length(image) > 0}

  return Source(dataset=dataset, parse=parse, has_captions=has_captions,
                has_labels=bool(label_key))
