"""Image decoding and augmentation in TF ops: RandomResizedCrop for training, resize + centre crop
for evaluation, CLIP mean/std normalisation.

Randomness is stateless (`tf.random.stateless_*` with a seed derived from the example's position
in the stream), so the augmentation of every example is a function of (seed, position) and a
restored pipeline repeats it bit for bit. Decoding errors raise, as tf.data then skips the example
and the pipeline counts it (see pipeline.py).
"""
import math

import tensorflow as tf

from maskclip_jax import normalization
# torchvision's RandomResizedCrop tries this many random windows before its fallback.
_CROP_ATTEMPTS = 10


def normalize(image: tf.Tensor) -> tf.Tensor:
  """uint8-range RGB (any float or int dtype) -> float32 with CLIP's mean/std."""
  return (tf.cast(image, tf.float32) * tf.constant(normalization.SCALE) +
          tf.constant(normalization.OFFSET))


def to_uint8(image: tf.Tensor) -> tf.Tensor:
  """Resized float pixels -> uint8, rounded (what PIL hands over after its resize)."""
  return tf.saturate_cast(tf.round(image), tf.uint8)


def random_crop_window(height, width, seed, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision RandomResizedCrop's window -> (top, left, crop height, crop width), int32.

  Up to 10 tries of an area fraction uniform in `scale` and an aspect ratio log-uniform in
  `ratio`; the first window that fits wins. If none fits: the whole image, cut to the nearest
  allowed ratio, centred. All tries come from one vectorised draw from `seed` (this runs once
  per training example, and every op costs time there).
  """
  height_f = tf.cast(height, tf.float32)
  width_f = tf.cast(width, tf.float32)
  uniform = tf.random.stateless_uniform([2 * _CROP_ATTEMPTS + 2], seed)
  area = height_f * width_f * (scale[0] + (scale[1] - scale[0]) * uniform[:_CROP_ATTEMPTS])
  log_ratio = (math.log(ratio[0]) +
               (math.log(ratio[1]) - math.log(ratio[0])) * uniform[_CROP_ATTEMPTS:-2])
  aspect = tf.exp(log_ratio)
  crop_w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  crop_h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

  in_ratio = width_f / height_f
  fallback_w = tf.where(in_ratio > ratio[1], tf.cast(tf.round(height_f * ratio[1]), tf.int32),
                        width)
  fallback_h = tf.where(in_ratio < ratio[0], tf.cast(tf.round(width_f / ratio[0]), tf.int32),
                        height)
  any_fits = tf.reduce_any(fits)
  crop_h = tf.where(any_fits, crop_h[first], fallback_h)
  crop_w = tf.where(any_fits, crop_w[first], fallback_w)
  # Offsets uniform over the valid range (torchvision: randint(0, H - h + 1)).
  top_u = uniform[-2]
  left_u = uniform[-1]
  top = tf.where(any_fits, tf.cast(top_u * tf.cast(height - crop_h + 1, tf.float32), tf.int32),
                 (height - crop_h) // 2)
  left = tf.where(any_fits, tf.cast(left_u * tf.cast(width - crop_w + 1, tf.float32), tf.int32),
                  (width - crop_w) // 2)
  # Guard the float rounding at the top end of the uniform draw.
  top = tf.minimum(top, height - crop_h)
  left = tf.minimum(left, width - crop_w)
  return top, left, crop_h, crop_w


def decode(image_bytes: tf.Tensor) -> tf.Tensor:
  """JPEG, PNG, WebP, GIF (first frame) or BMP bytes -> (H, W, 3) uint8. Raises on bad data."""
  return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


# Antialiasing (what PIL does when it shrinks) costs about as much as the resize itself and
# changes nothing visible below this much shrinking, which is the usual RandomResizedCrop case
# of 256-px shards cropped to 224 px; beyond it, it prevents aliasing and is used.
_ANTIALIAS_ABOVE = 1.25


def _resize(image, size, method):
  shrink = tf.reduce_max(tf.cast(tf.shape(image)[:2], tf.float32) / tf.cast(size, tf.float32))
  resized = tf.cond(shrink > _ANTIALIAS_ABOVE,
                    lambda: tf.image.resize(image, size, method=method, antialias=True),
                    lambda: tf.image.resize(image, size, method=method, antialias=False))
  # Bicubic overshoots; clip back to the pixel range before normalising.
  return tf.clip_by_value(resized, 0.0, 255.0)


def decode_random_resized_crop(image_bytes, size: int, seed, *, scale=(0.5, 1.0),
                               ratio=(3 / 4, 4 / 3), method="bicubic") -> tf.Tensor:
  """Encoded image -> (size, size, 3) float32 in [0, 255]: RandomResizedCrop, then resize.

  JPEGs are decoded only inside the crop window (`decode_and_crop_jpeg`), which is most of the
  decoding time saved for web images; other formats are decoded whole, then cropped.
  """

  def jpeg():
    shape = tf.image.extract_jpeg_shape(image_bytes)
    top, left, crop_h, crop_w = random_crop_window(shape[0], shape[1], seed, scale, ratio)
    return tf.image.decode_and_crop_jpeg(image_bytes, tf.stack([top, left, crop_h, crop_w]),
                                         channels=3)

  def other():
    image = decode(image_bytes)
    shape = tf.shape(image)
    top, left, crop_h, crop_w = random_crop_window(shape[0], shape[1], seed, scale, ratio)
    return image[top:top + crop_h, left:left + crop_w]

  crop = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  crop.set_shape([None, None, 3])
  return _resize(crop, [size, size], method)


def decode_resize_center_crop(image_bytes, size: int, *, method="bicubic") -> tf.Tensor:
  """Encoded image -> (size, size, 3) float32 in [0, 255]: shorter side to `size`, centre crop.

  The same geometry as open_clip's eval transform (Resize(size) + CenterCrop(size)).
  """
  image = decode(image_bytes)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  factor = size / tf.reduce_min(shape)
  new_shape = tf.maximum(tf.cast(tf.round(shape * factor), tf.int32), size)
  resized = _resize(image, new_shape, method)
  top = (new_shape[0] - size) // 2
  left = (new_shape[1] - size) // 2
  return resized[top:top + size, left:left + size]
