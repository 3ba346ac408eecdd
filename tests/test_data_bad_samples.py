"""Bad data is skipped and counted exactly; training goes on."""
import functools
import io
import os
import random

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import input_config
from maskclip_jax.data import fake_data
from maskclip_jax.data import pipeline

NUM_SHARDS, PER_SHARD = 8, 25  # 200 samples
BATCH = 20


def _bad_png(i):
  data = bytearray(fake_data.solid_image(i, fmt="png"))
  data[40:60] = b"\x00" * 20  # inside the image data chunk: zlib/CRC errors
  return bytes(data)


def write_damaged_shards(directory):
  """200 samples, 16 of them bad in every way the pipeline must survive, 4 lost for good.

  Returns (ids of good samples, number of bad samples the reader can see).
  """
  rng = random.Random(0)
  samples = [fake_data.sample(i) for i in range(NUM_SHARDS * PER_SHARD)]
  # Keep the last shard's samples out of the random picks: it is truncated below.
  victims = rng.sample(range((NUM_SHARDS - 1) * PER_SHARD), 15)
  corrupt, no_caption, empty_caption, no_image = (victims[:10], victims[10:12],
                                                  victims[12:14], victims[14:15])
  kinds = ["garbage", "cut_jpeg", "zero_size", "bad_png"]
  for n, i in enumerate(corrupt):  # 10 = 5% of the samples
    kind = kinds[n % len(kinds)]
    if kind == "garbage":
      samples[i].image = os.urandom(700)
    elif kind == "cut_jpeg":
      samples[i].image = samples[i].image[:len(samples[i].image) // 2]
    elif kind == "zero_size":
      samples[i].image = b""
    else:
      samples[i].image, samples[i].image_ext = _bad_png(i), "png"
  for i in no_caption:
    samples[i].caption = None
  for i in empty_caption:
    samples[i].caption = " \n "
  for i in no_image:
    samples[i].image = None
  paths = fake_data.write_wds(directory, samples, per_shard=PER_SHARD)

  # Cut the last shard in the middle of the image of its 21st sample: that sample is bad (its
  # header is there, its data is not) and the 4 after it are gone without a trace.
  with open(paths[-1], "rb") as f:
    data = f.read()
  cut_id = (NUM_SHARDS - 1) * PER_SHARD + 20
  image = samples[cut_id].image
  cut = data.index(image) + len(image) // 2
  with open(paths[-1], "wb") as f:
    f.write(data[:cut])
  lost = set(range(cut_id + 1, NUM_SHARDS * PER_SHARD))
  bad = set(victims) | {cut_id}
  good = sorted(set(range(NUM_SHARDS * PER_SHARD)) - bad - lost)
  return good, len(bad)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("damaged"))
  good, num_bad = write_damaged_shards(directory)
  assert len(good) == 180 and num_bad == 16
  return f"wds:{directory}/{{00000..{NUM_SHARDS - 1:05d}}}.tar", good, num_bad


make_config = functools.partial(input_config, shuffle_buffer=64, cycle_length=3)


def test_training_skips_and_counts_every_bad_sample_exactly(damaged):
  data, good, num_bad = damaged
  it = pipeline.make_train_iterator(make_config(), data=data, global_batch_size=BATCH, seed=7,
                                    process_index=0, process_count=1)
  batches_per_epoch = len(good) // BATCH
  for epoch in (1, 2, 3):
    ids = []
    for _ in range(batches_per_epoch):
      batch = next(it)
      image_ids = fake_data.image_ids(batch["image"])
      np.testing.assert_array_equal(image_ids, fake_data.text_ids(batch["text"], 200))
      ids.extend(image_ids)
    # Each epoch is the good data exactly once, and the count grows by exactly the bad ones.
    assert sorted(ids) == good
    assert it.skipped_count == epoch * num_bad


def test_eval_counts_bad_samples_and_keeps_every_good_one(damaged):
  data, good, num_bad = damaged
  it = pipeline.make_eval_iterator(make_config(), data=data, global_batch_size=16,
                                   process_index=0, process_count=1)
  ids = []
  for batch in it:
    ids.extend(fake_data.text_ids(batch["text"][batch["mask"]], 200))
  assert sorted(ids) == good
  assert it.skipped_count == num_bad


def test_trailing_bad_samples_of_an_epoch_are_counted_in_that_epoch(tmp_path):
  samples = [fake_data.sample(i) for i in range(12)]
  for i in (0, 10, 11):  # bad at both ends of the only shard
    samples[i].caption = None
  fake_data.write_wds(str(tmp_path), samples, per_shard=12)
  config = make_config()
  config.shuffle_buffer = 1
  it = pipeline.make_train_iterator(config, data=f"wds:{tmp_path}/00000.tar",
                                    global_batch_size=3, seed=0, process_index=0,
                                    process_count=1)
  for epoch in (1, 2):
    for _ in range(3):
      next(it)
    assert it.skipped_count == 3 * epoch


def test_all_bad_data_fails_loudly_instead_of_spinning(tmp_path):
  samples = [fake_data.sample(i) for i in range(6)]
  for s in samples:
    s.image = b"not an image"
  fake_data.write_wds(str(tmp_path), samples, per_shard=3)
  it = pipeline.make_train_iterator(make_config(), data=f"wds:{tmp_path}/*.tar",
                                    global_batch_size=2, seed=0, process_index=0,
                                    process_count=1)
  with pytest.raises(tf.errors.InvalidArgumentError, match="No usable example in a whole epoch"):
    next(it)


def test_bad_csv_lines_and_missing_files_are_counted(tmp_path):
  csv_path = fake_data.write_csv(str(tmp_path), list(range(8)))
  os.remove(tmp_path / "images" / "000003.png")
  with open(csv_path, "a") as f:
    f.write('9\t"unterminated quote\tcaption\n')  # does not parse
    f.write("10\timages/000010.png\n")  # too few fields
  with open(tmp_path / "images" / "000005.png", "wb") as f:
    image = Image.new("RGB", (4, 4))
    out = io.BytesIO()
    image.save(out, format="png")
    f.write(out.getvalue()[:20])  # truncated PNG
  it = pipeline.make_eval_iterator(make_config(), data=f"csv:{csv_path}", global_batch_size=4,
                                   process_index=0, process_count=1)
  ids = [i for b in it for i in fake_data.text_ids(b["text"][b["mask"]], 8)]
  assert sorted(ids) == [0, 1, 2, 4, 6, 7]
  assert it.skipped_count == 4
