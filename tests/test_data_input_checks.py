"""Input checks: shards missing from a brace pattern, files that are no tar, images too big."""
import functools
import io
import json
import logging
import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import input_config
from maskclip_jax.config_checks import check_input
from maskclip_jax.data import fake_data
from maskclip_jax.data import file_patterns
from maskclip_jax.data import pipeline
from maskclip_jax.data import preprocess
from maskclip_jax.data import tar_reader


make_config = functools.partial(input_config, shuffle_buffer=8, cycle_length=2)


def eval_ids(config, data, num_ids, batch_size=4):
  it = pipeline.make_eval_iterator(config, data=data, global_batch_size=batch_size,
                                   process_index=0, process_count=1)
  ids = [i for b in it for i in fake_data.text_ids(b["text"][b["mask"]], num_ids)]
  return sorted(ids), it


def train_iterator(config, data, batch_size):
  return pipeline.make_train_iterator(config, data=data, global_batch_size=batch_size, seed=3,
                                      process_index=0, process_count=1)


# ------------------------------------------------------------------ missing shards


def test_missing_shards_of_a_brace_pattern_fail_before_training_naming_them(tmp_path):
  # good-{0..5}.tar names 6 shards, of which 2 exist.
  fake_data.write_tar(str(tmp_path / "good-0.tar"), [fake_data.sample(i) for i in range(3)])
  fake_data.write_tar(str(tmp_path / "good-1.tar"), [fake_data.sample(i) for i in range(3, 6)])
  data = f"wds:{tmp_path}/good-{{0..5}}.tar"
  with pytest.raises(FileNotFoundError) as error:
    train_iterator(make_config(), data, 2)
  message = str(error.value)
  assert "4 of the 6 files" in message and "allow_missing_shards" in message
  for i in (2, 3, 4, 5):
    assert f"good-{i}.tar" in message
  assert "good-0.tar" not in message

  # A pattern marked as a superset reads the shards that exist, and says how many were missing.
  ids, _ = eval_ids(make_config(allow_missing_shards=True), data, 6)
  assert ids == list(range(6))
  # Globs still name whatever exists.
  ids, _ = eval_ids(make_config(), f"wds:{tmp_path}/good-*.tar", 6)
  assert ids == list(range(6))


def test_missing_names_are_shown_a_few_then_counted(tmp_path, caplog):
  (tmp_path / "s-000.tar").write_bytes(b"x")
  pattern = f"{tmp_path}/s-{{000..099}}.tar::{tmp_path}/extra.tar"
  with pytest.raises(FileNotFoundError,
                     match=r"100 of the 101 files .*'.*s-001\.tar'.* and 95 more\. .*"
                           r"--config\.input\.allow_missing_shards=True"):
    file_patterns.list_files(pattern, data="wds:d")
  with caplog.at_level(logging.WARNING):
    files = file_patterns.list_files(pattern, data="wds:d", allow_missing=True)
  assert files == [f"{tmp_path}/s-000.tar"]
  assert "100 of the 101 files" in caplog.text and "reading the 1 that exist" in caplog.text


# ------------------------------------------------------------------ bad shards


def write_shards_with_bad_files(directory):
  """00000.tar: 6 good samples; 00001.tar: an HTML page; 00002.tar: empty; 00003.tar: 3 more."""
  os.makedirs(directory, exist_ok=True)
  fake_data.write_tar(os.path.join(directory, "00000.tar"),
                      [fake_data.sample(i) for i in range(6)])
  with open(os.path.join(directory, "00001.tar"), "wb") as f:
    f.write(b"<html><body>403 Forbidden</body></html>\n" * 40)
  open(os.path.join(directory, "00002.tar"), "wb").close()
  fake_data.write_tar(os.path.join(directory, "00003.tar"),
                      [fake_data.sample(i) for i in range(6, 9)])
  return f"wds:{directory}/{{00000..00003}}.tar"


def test_files_that_are_no_tar_are_counted_and_logged_as_bad_shards(tmp_path, capfd, caplog):
  data = write_shards_with_bad_files(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    ids, it = eval_ids(make_config(), data, 9)
  assert ids == list(range(9))  # The good shards' samples all arrive.
  assert it.bad_shard_count == 2 and it.skipped_count == 0
  # The reader names each bad shard in a warning (stderr: TF ops only); the iterator's warning
  # says how many.
  stderr = capfd.readouterr().err
  assert "bad shard" in stderr
  assert f"{tmp_path}/00001.tar: not an uncompressed tar file" in stderr
  assert f"{tmp_path}/00002.tar: empty file" in stderr
  assert "00000.tar" not in stderr and "00003.tar" not in stderr
  assert "2 so far" in caplog.text


def test_bad_shards_are_counted_every_epoch_and_with_the_saved_position(tmp_path):
  data = write_shards_with_bad_files(str(tmp_path / "data"))
  config = make_config()
  it = train_iterator(config, data, 3)  # 9 samples: 3 batches an epoch
  for epoch in (1, 2):
    ids = [i for _ in range(3) for i in fake_data.image_ids(next(it)["image"])]
    assert sorted(ids) == list(range(9))
    assert it.bad_shard_count == 2 * epoch and it.skipped_count == 0
  # The count is part of the saved position, and the pipeline stays saveable.
  it.save(str(tmp_path / "position"))
  expected = next(it)["image"].copy()
  restored = train_iterator(config, data, 3)
  restored.restore(str(tmp_path / "position"))
  assert restored.bad_shard_count == 4
  np.testing.assert_array_equal(next(restored)["image"], expected)
  # A position saved before bad shards were counted cannot be continued: the trainer sees no
  # description (and restarts the stream, as for another process count); restore says why.
  json_path = str(tmp_path / "position" / "input-00000-of-00001.json")
  with open(json_path) as f:
    saved = json.load(f)
  with open(json_path, "w") as f:
    json.dump(dict(saved, version=1), f)
  assert restored.saved_description(str(tmp_path / "position")) is None
  with pytest.raises(ValueError, match="saved by version 1 .* must start afresh"):
    restored.restore(str(tmp_path / "position"))


def test_training_on_bad_shards_only_fails_saying_so(tmp_path, capfd):
  (tmp_path / "a.tar").write_bytes(b"\x1f\x8b\x08" + b"\x00" * 600)  # a gzipped tar
  it = train_iterator(make_config(), f"wds:{tmp_path}/a.tar", 2)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"(?s)No usable example in a whole epoch.*\[1\] \[bad shards"):
    next(it)
  assert f"{tmp_path}/a.tar: not an uncompressed tar file" in capfd.readouterr().err


@pytest.mark.parametrize("content, problem", [
    (b"", "empty file"), (b"\x00" * 100, "not an uncompressed tar file"),
    (b"\x1f\x8b\x08" + b"\x00" * 2000, "not an uncompressed tar file"),
    (None, "missing, deleted since the files were listed"),
], ids=["empty", "short", "gzip", "missing"])
def test_the_reader_marks_a_bad_shard_with_one_row(tmp_path, content, problem):
  path = tmp_path / "x.tar"
  if content is not None:
    path.write_bytes(content)
  rows = list(tar_reader.shard_dataset(tf.constant(str(path)), ("jpg",), "txt")
              .as_numpy_iterator())
  assert len(rows) == 1 and rows[0]["bad_shard"] and not rows[0]["ok"]
  assert rows[0]["key"].decode() == f"{path}: {problem}"


def test_an_empty_tar_is_not_a_bad_shard(tmp_path):
  fake_data.write_tar(str(tmp_path / "00000.tar"), [fake_data.sample(i) for i in range(2)])
  with tarfile.open(tmp_path / "00001.tar", "w"):
    pass  # the end-of-archive blocks only: a download where every sample failed
  ids, it = eval_ids(make_config(), f"wds:{tmp_path}/{{00000..00001}}.tar", 2)
  assert ids == [0, 1] and it.bad_shard_count == 0


# ------------------------------------------------------------------ image size limit


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
  out = io.BytesIO()
  image.save(out, format=fmt, **kwargs)
  return out.getvalue()


@pytest.mark.parametrize("fmt, kwargs", [
    ("JPEG", {}), ("PNG", {}), ("GIF", {}), ("BMP", {}), ("WEBP", {"lossless": False}),
    ("WEBP", {"lossless": True}), ("WEBP", {"exif": b"Exif\x00\x00MM"}),  # VP8, VP8L, VP8X
])
def test_image_dims_come_from_the_header(fmt, kwargs):
  data = encode(Image.new("RGB", (301, 17), (10, 200, 30)), fmt, **kwargs)
  assert preprocess.image_dims(tf.constant(data)).numpy().tolist() == [17, 301]
  assert int(preprocess.image_pixels(tf.constant(data))) == 17 * 301


def test_huge_declared_dims_are_read_without_decoding():
  png = bytearray(encode(Image.new("L", (4, 4)), "PNG"))
  png[16:24] = (60_000).to_bytes(4, "big") + (50_000).to_bytes(4, "big")  # IHDR width, height
  assert int(preprocess.image_pixels(tf.constant(bytes(png)))) == 3_000_000_000
  bmp = bytearray(encode(Image.new("RGB", (4, 4)), "BMP"))
  bmp[18:26] = (70_000).to_bytes(4, "little") + (-70_000).to_bytes(4, "little", signed=True)
  assert int(preprocess.image_pixels(tf.constant(bytes(bmp)))) == 70_000**2
  assert int(preprocess.image_pixels(tf.constant(b"not an image"))) == -1


def _peak_rss_reset() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # resets VmHWM, the peak resident size, to the current one
    return True
  except OSError:
    return False


def _rss_kb(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise RuntimeError(field)


def test_an_image_over_the_pixel_limit_is_skipped_counted_and_never_decoded(tmp_path):
  # 12000 x 12000 = 144 Mpixels (above the default limit, 89.5M), one colour: 1.7 MB as a JPEG,
  # 432 MB once decoded to RGB.
  huge = fake_data.Sample(key="000001", image=encode(Image.new("L", (12000, 12000), 128), "JPEG",
                                                     quality=10),
                          caption=fake_data.caption_of(1))
  samples = [fake_data.sample(0), huge, fake_data.sample(2)]
  fake_data.write_tar(str(tmp_path / "huge.tar"), samples)
  fake_data.write_tar(str(tmp_path / "small.tar"), [samples[0], samples[2]])
  config = make_config(num_parallel_calls=1)
  eval_ids(config, f"wds:{tmp_path}/small.tar", 3)  # Builds and runs once what is built lazily.
  if not _peak_rss_reset():
    pytest.skip("cannot reset the peak resident size (/proc/self/clear_refs)")
  start_kb = _rss_kb("VmRSS")
  ids, it = eval_ids(config, f"wds:{tmp_path}/huge.tar", 3)
  peak_growth_mb = (_rss_kb("VmHWM") - start_kb) / 1024
  assert ids == [0, 2] and it.skipped_count == 1
  assert peak_growth_mb < 200, f"the peak grew by {peak_growth_mb:.0f} MB: decoded?"


def test_the_limit_applies_to_every_format_and_zero_disables_it(tmp_path):
  # 40 x 48 = 1920 pixels and 20 x 24 = 480 pixels, in each format the shards carry.
  samples = [fake_data.sample(i, fmt=fmt, height=h, width=w)
             for i, (fmt, (h, w)) in enumerate(
                 (fmt, size) for fmt in ("jpeg", "png", "webp")
                 for size in ((40, 48), (20, 24)))]
  fake_data.write_tar(str(tmp_path / "s.tar"), samples)
  data = f"wds:{tmp_path}/s.tar"
  ids, it = eval_ids(make_config(max_image_pixels=1000), data, 6)
  assert ids == [1, 3, 5] and it.skipped_count == 3
  it = train_iterator(make_config(max_image_pixels=1000), data, 3)  # (JPEGs: another path)
  for epoch in (1, 2):
    assert sorted(fake_data.image_ids(next(it)["image"])) == [1, 3, 5]
    assert it.skipped_count == 3 * epoch
  ids, it = eval_ids(make_config(max_image_pixels=0), data, 6)
  assert ids == list(range(6)) and it.skipped_count == 0
  with pytest.raises(ValueError, match="max_image_pixels=-1"):
    check_input(make_config(max_image_pixels=-1))
