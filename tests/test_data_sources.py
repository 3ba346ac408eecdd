"""Each of the five sources yields correct (image, tokens) batches from data the test writes.

Example i is a flat image whose colour encodes i, captioned "a photo of example number i", so
every row can be checked to carry its own image and caption.
"""
import functools
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from conftest import REPO, input_config
from maskclip_jax.data import captioned_shapes
from maskclip_jax.data import fake_data
from maskclip_jax import normalization
from maskclip_jax.data import pipeline
from maskclip_jax.data import tokenizer

SIZE = 32

make_config = functools.partial(input_config, image_size=SIZE, shuffle_buffer=16, cycle_length=2)


def read_eval(config, data, batch_size=8):
  batches = list(pipeline.make_eval_iterator(config, data=data, global_batch_size=batch_size,
                                             process_index=0, process_count=1))
  return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def assert_pairs(images, texts, expected_ids):
  """Rows carry example ids from `expected_ids`, each image with its own caption."""
  num_ids = max(expected_ids) + 1
  image_ids = fake_data.image_ids(images)
  text_ids = fake_data.text_ids(texts, num_ids)
  np.testing.assert_array_equal(image_ids, text_ids)
  assert set(text_ids) <= set(expected_ids)
  return text_ids


def assert_train_batch(batch, batch_size):
  assert set(batch) == {"image", "text"}
  assert batch["image"].shape == (batch_size, SIZE, SIZE, 3)
  assert batch["image"].dtype == np.float32
  assert batch["text"].shape == (batch_size, 77) and batch["text"].dtype == np.int32
  # CLIP-normalised pixel range.
  low = (0 - np.array(normalization.CLIP_MEAN)) / np.array(normalization.CLIP_STD)
  high = (1 - np.array(normalization.CLIP_MEAN)) / np.array(normalization.CLIP_STD)
  assert (batch["image"] >= low - 1e-5).all() and (batch["image"] <= high + 1e-5).all()
  assert (batch["text"][:, 0] == tokenizer.SOT_ID).all()


def check_file_source(config, data, ids):
  """Eval: every example once, correctly paired; train: well-formed, paired batches."""
  out = read_eval(config, data)
  real = out["mask"]
  got = assert_pairs(out["image"][real], out["text"][real], ids)
  assert sorted(got) == sorted(ids)
  train = pipeline.make_train_iterator(config, data=data, global_batch_size=8, seed=0,
                                       process_index=0, process_count=1)
  seen = []
  for _ in range(3):
    batch = next(train)
    assert_train_batch(batch, 8)
    seen.extend(assert_pairs(batch["image"], batch["text"], ids))
  assert train.skipped_count == 0
  return seen


def test_webdataset_tar_shards(tmp_path):
  ids = list(range(21))
  formats = ["jpeg", "png", "webp"]
  samples = [fake_data.sample(i, fmt=formats[i % 3]) for i in ids]
  fake_data.write_wds(str(tmp_path / "shards"), samples, per_shard=7)
  check_file_source(make_config(), f"wds:{tmp_path}/shards/{{00000..00002}}.tar", ids)
  # Globs and '::'-joined patterns name the same shards.
  out = read_eval(make_config(), f"wds:{tmp_path}/shards/0000[01].tar::{tmp_path}/shards/*2.tar")
  assert sorted(fake_data.text_ids(out["text"][out["mask"]], 21)) == ids


def test_tfrecord_shards(tmp_path):
  ids = list(range(17))
  fake_data.write_tfrecords(str(tmp_path / "records"), ids, per_shard=6)
  check_file_source(make_config(), f"tfrecord:{tmp_path}/records/*.tfrecord", ids)


def test_tfrecord_custom_keys(tmp_path):
  ids = list(range(5))
  fake_data.write_tfrecords(str(tmp_path), ids, per_shard=5, image_key="png_bytes",
                            caption_key="caption")
  config = make_config(image_key="png_bytes", caption_key="caption")
  out = read_eval(config, f"tfrecord:{tmp_path}/00000.tfrecord")
  assert sorted(assert_pairs(out["image"][out["mask"]], out["text"][out["mask"]], ids)) == ids


def test_csv_with_relative_image_paths(tmp_path):
  ids = list(range(13))
  csv_path = fake_data.write_csv(str(tmp_path), ids)
  check_file_source(make_config(), f"csv:{csv_path}", ids)


def test_csv_comma_separated_with_custom_columns_and_absolute_paths(tmp_path):
  ids = list(range(6))
  csv_path = fake_data.write_csv(str(tmp_path), ids, separator=",", image_column="img",
                                 caption_column="text", absolute_paths=True)
  config = make_config(csv_separator=",", image_key="img", caption_key="text")
  out = read_eval(config, f"csv:{csv_path}")
  assert sorted(assert_pairs(out["image"][out["mask"]], out["text"][out["mask"]], ids)) == ids


class TinyCaptions(tfds.core.GeneratorBasedBuilder):
  """A TFDS data set with its own feature names and several captions an image."""

  VERSION = tfds.core.Version("1.0.0")
  # TFDS looks for metadata beside a builder's package; a test module has none.
  pkg_dir_path = epath.Path(os.path.dirname(os.path.abspath(__file__)))

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return epath.Path(__file__)

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "photo": tfds.features.Image(shape=(None, None, 3)),
        "meta": {"captions": tfds.features.Sequence(tfds.features.Text())},
        "kind": tfds.features.ClassLabel(num_classes=3),
    }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(range(0, 20)),
            "validation": self._generate_examples(range(20, 31))}

  def _generate_examples(self, ids):
    for i in ids:
      pixels = np.empty((20 + i % 5, 30, 3), np.uint8)
      pixels[...] = fake_data.colour_of(i)
      yield i, {"photo": pixels, "kind": i % 3,
                "meta": {"captions": [fake_data.caption_of(i), f"{fake_data.caption_of(i)} too"]}}


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  TinyCaptions(data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return data_dir


def test_tfds_with_nested_keys_several_captions_and_labels(tiny_tfds_dir):
  config = make_config(tfds_data_dir=tiny_tfds_dir, image_key="photo",
                       caption_key="meta/captions", label_key="kind")
  out = read_eval(config, "tfds:tiny_captions:validation")
  real = out["mask"]
  ids = assert_pairs(out["image"][real], out["text"][real], list(range(20, 31)))
  assert sorted(ids) == list(range(20, 31))  # eval reads the first caption of each
  np.testing.assert_array_equal(out["label"][real], ids % 3)
  assert out["label"].dtype == np.int32

  # Training picks one of the captions at random, per example and epoch.
  train = pipeline.make_train_iterator(config, data="tfds:tiny_captions", global_batch_size=10,
                                       seed=3, process_index=0, process_count=1)
  first, second = set(), set()
  for _ in range(8):
    batch = next(train)
    assert_train_batch(batch, 10)
    image_ids = fake_data.image_ids(batch["image"])
    for image_id, text in zip(image_ids, batch["text"]):
      decoded = tokenizer.get_tokenizer().decode(text).replace(" ", "")
      caption = fake_data.caption_of(image_id).replace(" ", "")
      assert decoded in (caption, caption + "too")
      (second if decoded.endswith("too") else first).add(image_id)
  assert first and second


def test_synthetic_captioned_shapes(tmp_path):
  config = make_config(tfds_data_dir=str(tmp_path), synthetic_train_size=64,
                       synthetic_test_size=20)
  train = pipeline.make_train_iterator(config, global_batch_size=16, seed=0,
                                       process_index=0, process_count=1)
  assert_train_batch(next(train), 16)
  out = read_eval(config, "synthetic")
  assert out["mask"].sum() == 20
  tok = tokenizer.get_tokenizer()
  for text, label in zip(out["text"][out["mask"]], out["label"][out["mask"]]):
    colour, shape = captioned_shapes.CLASS_NAMES[label].split()
    words = tok.decode(text).split()
    assert colour in words and shape in words


def test_no_matching_files_fails_naming_the_pattern(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nothing-\*\.tar"):
    pipeline.make_train_iterator(make_config(), data=f"wds:{tmp_path}/nothing-*.tar",
                                 global_batch_size=4, seed=0, process_index=0, process_count=1)
  with pytest.raises(FileNotFoundError, match=r"expands to 3 names"):
    pipeline.make_eval_iterator(make_config(), data=f"tfrecord:{tmp_path}/{{0..2}}.tfrecord",
                                global_batch_size=4, process_index=0, process_count=1)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    pipeline.make_eval_iterator(make_config(), data=f"csv:{tmp_path}/missing.csv",
                                global_batch_size=4, process_index=0, process_count=1)


def test_bad_settings_fail_with_the_fix(tmp_path, tiny_tfds_dir):
  csv_path = fake_data.write_csv(str(tmp_path), [0, 1])
  with pytest.raises(ValueError, match=r"no column 'caption'.*caption_key"):
    pipeline.make_eval_iterator(make_config(caption_key="caption"), data=f"csv:{csv_path}",
                                global_batch_size=2, process_index=0, process_count=1)
  with pytest.raises(ValueError, match=r"no feature 'image'.*'photo'"):
    pipeline.make_eval_iterator(make_config(tfds_data_dir=tiny_tfds_dir),
                                data="tfds:tiny_captions:validation", global_batch_size=2,
                                process_index=0, process_count=1)
  with pytest.raises(ValueError, match=r"no split 'test'"):
    pipeline.make_eval_iterator(make_config(tfds_data_dir=tiny_tfds_dir, image_key="photo",
                                            caption_key="meta/captions"),
                                data="tfds:tiny_captions", global_batch_size=2,
                                process_index=0, process_count=1)
  with pytest.raises(FileNotFoundError, match="not prepared"):
    pipeline.make_eval_iterator(make_config(tfds_data_dir=str(tmp_path)),
                                data="tfds:tiny_captions", global_batch_size=2,
                                process_index=0, process_count=1)
  with pytest.raises(ValueError, match="unknown source kind 'http'"):
    pipeline.make_train_iterator(make_config(), data="http://x", global_batch_size=2, seed=0,
                                 process_index=0, process_count=1)
  with pytest.raises(ValueError, match="divisible by 4"):
    pipeline.make_train_iterator(make_config(), global_batch_size=6, seed=0, process_index=0,
                                 process_count=4)


def test_eval_without_captions(tmp_path):
  samples = [fake_data.sample(i) for i in range(5)]
  fake_data.write_wds(str(tmp_path), samples, per_shard=5)
  out = read_eval(make_config(caption_key="none"), f"wds:{tmp_path}/00000.tar", batch_size=4)
  assert "text" not in out
  assert sorted(fake_data.image_ids(out["image"][out["mask"]])) == list(range(5))


def test_tensorflow_stays_out_of_the_light_modules():
  """config, tokenizer, normalization and device_put are used where tensorflow must not load."""
  import subprocess
  import sys
  code = ("import sys; import maskclip_jax.data, maskclip_jax.data.config, "
          "maskclip_jax.data.tokenizer, maskclip_jax.data.device_put, "
          "maskclip_jax.normalization; "
          "sys.exit(int('tensorflow' in sys.modules))")
  assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
