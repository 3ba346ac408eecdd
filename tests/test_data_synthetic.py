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


def _names_size_and_place(caption: str) -> tuple[bool, bool]:
  words = re.findall(r"[a-z]+", caption)
  return (any(size in words for size in cs.SIZES),
          any(where in caption for where, _, _ in cs.POSITIONS))


def test_captions_name_the_labelled_shape_and_the_image_shows_its_colour():
  assert len(cs.CLASS_NAMES) == len(cs.SHAPES) * len(cs.COLOURS) == 36
  labels = set()
  for i in range(120):
    example = cs.make_example("train", i, 64)
    colour, shape = cs.CLASS_NAMES[example["label"]].split()
    words = re.findall(r"[a-z]+", example["caption"])
    assert colour in words and shape in words
    # The saturated pixels are the shape: their colour is the labelled one (within jitter).
    pixels = example["image"].reshape(-1, 3).astype(int)
    saturated = pixels[pixels.max(1) - pixels.min(1) > 60]
    assert len(saturated) > 20
    nearest = min(cs.COLOURS, key=lambda c: np.abs(saturated.mean(0) - cs.COLOURS[c]).sum())
    assert nearest == colour
    labels.add(example["label"])
  assert len(labels) > 25  # the classes are all in use


def test_training_captions_vary_in_detail_and_test_captions_say_everything():
  train = [cs.make_example("train", i, 32)["caption"] for i in range(400)]
  detail = [_names_size_and_place(c) for c in train]
  full = np.mean([size and place for size, place in detail])
  # Two of three templates say everything; the others leave out the size, or it and the place.
  assert 0.58 < full < 0.75
  assert (False, False) in detail and (False, True) in detail
  test = [cs.make_example("test", i, 32)["caption"] for i in range(100)]
  assert all(size and place for size, place in map(_names_size_and_place, test))


def test_the_shapes_fit_their_named_size_and_the_image():
  for i in range(60):
    example = cs.make_example("test", i, 64)
    size = next(s for s in cs.SIZES if re.search(rf"\b{s}\b", example["caption"]))
    pixels = example["image"].astype(int)
    shape_mask = (pixels.max(-1) - pixels.min(-1)) > 60
    rows, cols = np.nonzero(shape_mask)
    extent = max(np.ptp(rows), np.ptp(cols)) + 1
    # The widest extent is about twice the radius (x 0.9-1.1 jitter; stars and triangles are a
    # little narrower). The lower bound also holds only if the image border cuts no shape off
    # (half of them reach it: their centres are kept a radius from it).
    assert extent <= 2 * 1.1 * cs.SIZES[size] * 64 + 2
    assert extent >= 1.2 * 0.9 * cs.SIZES[size] * 64


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
