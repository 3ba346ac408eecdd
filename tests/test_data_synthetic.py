"""The embedded captioned-shapes data set: deterministic, labelled, captioned, quick to build."""
import re
import time

import numpy as np
import tensorflow_datasets as tfds

from maskclip_jax.data import captioned_shapes as cs


def test_examples_are_deterministic_and_consistent():
  a = cs.make_example("train", 5, 48)
  b = cs.make_example("train", 5, 48)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert a["caption"] == b["caption"] and a["label"] == b["label"]
  assert cs.make_example("test", 5, 48)["caption"] != a["caption"] or not np.array_equal(
      cs.make_example("test", 5, 48)["image"], a["image"])
  assert a["image"].shape == (48, 48, 3) and a["image"].dtype == np.uint8


def test_captions_name_the_labelled_shape_and_the_image_shows_its_colour():
  assert len(cs.CLASS_NAMES) == len(cs.SHAPES) * len(cs.COLOURS) == 36
  labels = set()
  for i in range(120):
    example = cs.make_example("train", i, 64)
    colour, shape = cs.CLASS_NAMES[example["label"]].split()
    words = re.findall(r"[a-z]+", example["caption"])
    assert colour in words and shape in words
    assert any(size in words for size in cs.SIZES)
    assert any(where in example["caption"] for where, _, _ in cs.POSITIONS)
    # The saturated pixels are the shape: their colour is the labelled one (within jitter).
    pixels = example["image"].reshape(-1, 3).astype(int)
    saturated = pixels[pixels.max(1) - pixels.min(1) > 60]
    assert len(saturated) > 20
    nearest = min(cs.COLOURS, key=lambda c: np.abs(saturated.mean(0) - cs.COLOURS[c]).sum())
    assert nearest == colour
    labels.add(example["label"])
  assert len(labels) > 25  # the classes are all in use


def test_zero_shot_prompts_fill_with_class_names():
  prompts = [t.format(name) for name in cs.CLASS_NAMES for t in cs.ZERO_SHOT_TEMPLATES]
  assert "a photo of a red circle." in prompts
  assert len(set(prompts)) == len(prompts)


def test_builder_builds_quickly_with_splits_and_features(tmp_path):
  start = time.time()
  builder = cs.prepared_builder(image_size=32, num_train=300, num_test=40,
                                data_dir=str(tmp_path))
  assert time.time() - start < 30
  assert builder.info.splits["train"].num_examples == 300
  assert builder.info.splits["test"].num_examples == 40
  assert builder.info.features["label"].names == list(cs.CLASS_NAMES)
  example = next(iter(tfds.as_numpy(builder.as_dataset(split="test").take(1))))
  assert example["image"].shape == (32, 32, 3)
  # Building is skipped the second time, and the content equals make_example's.
  again = cs.prepared_builder(image_size=32, num_train=300, num_test=40, data_dir=str(tmp_path))
  assert again.is_prepared()
  by_caption = {}
  for ex in tfds.as_numpy(builder.as_dataset(split="test")):
    by_caption.setdefault(ex["caption"].decode(), []).append(ex)
  reference = cs.make_example("test", 0, 32)
  assert any(np.array_equal(ex["image"], reference["image"])
             for ex in by_caption[reference["caption"]])
