"""`csv:PATH`: open_clip's CSV/TSV format, one example a line: an image path and a caption.

Columns are found by name in the header line (`image_key`, default 'filepath'; `caption_key`,
default 'title'; separator `csv_separator`, default tab), as open_clip's `--csv-img-key`,
`--csv-caption-key`, `--csv-separator`. Relative image paths are taken relative to
`csv_image_root`, or the CSV's own folder when that is empty. Fields may be quoted; a field may
not hold a line break. A line that does not parse, or an image that cannot be read, is skipped
and counted like any other bad example.
"""
import csv
import os

import tensorflow as tf

from maskclip_jax.data.sources import Source

DEFAULT_IMAGE_KEY = "filepath"
DEFAULT_CAPTION_KEY = "title"
# Absolute local paths and URLs of other filesystems (gs://...) are used as they are.
_ABSOLUTE = r"(/|[A-Za-z][A-Za-z0-9+.-]*://).*"


def _header(path: str, separator: str, data: str) -> list[str]:
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"Data {data!r}: the CSV file {path!r} does not exist.")
  with tf.io.gfile.GFile(path, "r") as f:
    first_line = f.readline()
  return next(csv.reader([first_line.rstrip("\r\n")], delimiter=separator), [])


def make(spec, input_config, *, training, seed, process_index, process_count) -> Source:
  del training, seed  # One file: examples are shuffled by the pipeline's buffer.
  separator = input_config.csv_separator
  if len(separator) != 1:
    raise ValueError(f"--config.input.csv_separator={separator!r} must be one character, "
                     "e.g. '\\t' or ','.")
  image_key = input_config.image_key or DEFAULT_IMAGE_KEY
  caption_key = input_config.caption_key or DEFAULT_CAPTION_KEY
  has_captions = caption_key != "none"
  label_key = input_config.label_key
  columns = _header(spec.location, separator, spec.text)
  wanted = {"image_key": image_key}
  if has_captions:
    wanted["caption_key"] = caption_key
  if label_key:
    wanted["label_key"] = label_key
  for field, name in wanted.items():
    if name not in columns:
      raise ValueError(f"Data {spec.text!r}: no column {name!r} in the header {columns!r} "
                       f"(separator {separator!r}); set --config.input.{field} or "
                       "--config.input.csv_separator.")
  names = list(wanted.values())
  select = [columns.index(name) for name in names]
  # decode_csv wants the selected columns in file order.
  order = sorted(range(len(select)), key=lambda i: select[i])
  image_root = input_config.csv_image_root or os.path.dirname(spec.location) or "."

  # Blank lines (e.g. a trailing one) are layout, not examples.
  dataset = tf.data.TextLineDataset(spec.location).skip(1).filter(
      lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
  if process_count > 1:
    dataset = dataset.shard(process_count, process_index)

  def parse(line):
    line = tf.strings.regex_replace(line, "\r$", "")  # CRLF files
    values = tf.io.decode_csv(line, record_defaults=[""] * len(select), field_delim=separator,
                              select_cols=[select[i] for i in order])
    fields = {names[i]: value for i, value in zip(order, values)}
    path = fields[image_key]
    path = tf.where(tf.strings.regex_full_match(path, _ABSOLUTE), path,
                    tf.strings.join([image_root, path], separator="/"))
    ok = tf.strings.length(fields[image_key]) > 0
    # Read only what can exist: a missing file raises, which skips and counts the example.
    image = tf.io.read_file(path)
    label = (tf.strings.to_number(fields[label_key], tf.int64) if label_key else
             tf.constant(-1, tf.int64))
    return {"image": image, "caption": fields[caption_key] if has_captions else tf.constant(""),
            "label": label, "ok": ok}

  return Source(dataset=dataset, parse=parse, has_captions=has_captions,
                has_labels=bool(label_key))

