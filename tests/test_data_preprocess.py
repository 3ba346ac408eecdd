"""Decoding, RandomResizedCrop (torchvision semantics), resize + centre crop, normalisation."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from maskclip_jax.data import fake_data
from maskclip_jax import normalization
from maskclip_jax.data import preprocess


_window_fn = tf.function(preprocess.random_crop_window)


def window(height, width, seed, **kwargs):
  return [int(v) for v in _window_fn(height, width, tf.constant(seed, tf.int64), **kwargs)]


def sample_windows(height, width, count):
  return np.array([window(height, width, [3, s]) for s in range(count)])


def test_crop_windows_follow_scale_and_ratio_and_stay_inside():
  height, width = 120, 200
  top, left, h, w = sample_windows(height, width, 300).T
  assert (top >= 0).all() and (top + h <= height).all()
  assert (left >= 0).all() and (left + w <= width).all()
  areas, ratios = h * w / (height * width), w / h
  # Rounding to whole pixels moves the bounds by a pixel's worth.
  assert 0.5 - 0.02 <= areas.min() and areas.max() <= 1.0
  assert 3 / 4 - 0.03 <= ratios.min() and ratios.max() <= 4 / 3 + 0.03
  assert len(set(zip(top, left))) > 150


def torchvision_window(rng, height, width, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision's RandomResizedCrop.get_params, line for line, with numpy's random numbers.

  (torchvision itself cannot be imported after tensorflow in one process.)
  """
  area = height * width
  log_ratio = np.log(ratio)
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect_ratio = np.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(np.sqrt(target_area * aspect_ratio)))
    h = int(round(np.sqrt(target_area / aspect_ratio)))
    if 0 < w <= width and 0 < h <= height:
      return rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("height, width", [(120, 200), (100, 100), (300, 90)])
def test_crop_window_distribution_matches_torchvision(height, width):
  _, _, h, w = sample_windows(height, width, 600).T
  rng = np.random.default_rng(0)
  theirs = np.array([torchvision_window(rng, height, width) for _ in range(5000)])
  their_h, their_w = theirs[:, 2], theirs[:, 3]
  # Rejecting windows that do not fit skews both away from uniform; the skew must match.
  for ours_stat, their_stat in (((h * w).mean(), (their_h * their_w).mean()),
                                ((h * w).std(), (their_h * their_w).std())):
    assert ours_stat == pytest.approx(their_stat, rel=0.05)
  assert np.log(w / h).mean() == pytest.approx(np.log(their_w / their_h).mean(), abs=0.03)


def test_crop_window_is_a_function_of_the_seed():
  assert window(100, 100, [1, 2]) == window(100, 100, [1, 2])
  assert window(100, 100, [1, 2]) != window(100, 100, [1, 3])


def test_crop_window_falls_back_to_a_centred_allowed_ratio():
  # 10 x 1000: no window of at least half the area has a ratio within [3/4, 4/3].
  top, left, h, w = window(10, 1000, [0, 0])
  assert (top, h) == (0, 10) and w == round(10 * 4 / 3) and left == (1000 - w) // 2
  top, left, h, w = window(1000, 10, [0, 0])
  assert (left, w) == (0, 10) and h == round(10 / (3 / 4)) and top == (1000 - h) // 2


def test_jpeg_and_png_paths_crop_the_same_window():
  rng = np.random.default_rng(0)
  coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
  pixels = np.asarray(Image.fromarray(coarse).resize((80, 60), Image.BILINEAR))
  seed = tf.constant([4, 9], tf.int64)
  from_png = preprocess.decode_random_resized_crop(fake_data.encode_image(pixels, "png"), 24,
                                                   seed)
  from_jpeg = preprocess.decode_random_resized_crop(
      fake_data.encode_image(pixels, "jpeg", quality=98), 24, seed)
  assert from_png.shape == (24, 24, 3) and from_png.dtype == tf.float32
  assert float(tf.reduce_min(from_png)) >= 0 and float(tf.reduce_max(from_png)) <= 255
  assert np.abs(from_png.numpy() - from_jpeg.numpy()).mean() < 3


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "gif", "bmp"])
def test_decodes_every_common_format(fmt):
  pixels = np.full((9, 7, 3), (200, 100, 50), np.uint8)
  out = io_encode(pixels, fmt)
  image = preprocess.decode(out).numpy()
  assert image.shape == (9, 7, 3)
  assert np.abs(image.astype(int) - (200, 100, 50)).max() <= 8


def io_encode(pixels, fmt):
  import io
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format=fmt)
  return out.getvalue()


def test_grey_and_rgba_images_become_rgb():
  grey = io_encode(np.full((5, 5), 90, np.uint8), "png")
  rgba = io_encode(np.full((5, 5, 4), 90, np.uint8), "png")
  assert preprocess.decode(grey).shape == (5, 5, 3)
  assert preprocess.decode(rgba).shape == (5, 5, 3)


@pytest.mark.parametrize("data", [b"", b"garbage bytes", b"\xff\xd8\xff" + b"\x00" * 50])
def test_undecodable_images_raise(data):
  with pytest.raises(tf.errors.InvalidArgumentError):
    preprocess.decode_random_resized_crop(tf.constant(data), 8, tf.constant([0, 0], tf.int64))


def test_eval_crop_matches_pil_resize_then_centre_crop():
  rng = np.random.default_rng(1)
  coarse = rng.uniform(0, 255, (5, 9, 3)).astype(np.uint8)
  pixels = np.asarray(Image.fromarray(coarse).resize((90, 50), Image.BILINEAR))
  ours = preprocess.decode_resize_center_crop(io_encode(pixels, "png"), 32).numpy()
  # open_clip's eval transform: Resize(32, bicubic) on the shorter side, CenterCrop(32).
  resized = np.asarray(Image.fromarray(pixels).resize((58, 32), Image.BICUBIC), np.float32)
  theirs = resized[:, 13:45]
  assert ours.shape == (32, 32, 3)
  assert np.abs(ours - theirs).mean() < 4


def test_normalize_uses_clip_mean_and_std():
  out = preprocess.normalize(tf.constant([[[0.0, 127.5, 255.0]]])).numpy()[0, 0]
  expected = (np.array([0.0, 0.5, 1.0]) - normalization.CLIP_MEAN) / normalization.CLIP_STD
  np.testing.assert_allclose(out, expected, rtol=1e-6)
