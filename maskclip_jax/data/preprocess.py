"""Image decoding and augmentation in TF ops: RandomResizedCrop for training, resize + centre crop
for evaluation, CLIP mean/std normalisation.

Randomness is stateless (`tf.random.stateless_*` with a seed derived from the example's position
in the stream), so the augmentation of every example is a function of (seed, position) and a
restored pipeline repeats it bit for bit. Decoding errors raise, as tf.data then skips the example
and the pipeline counts it (see pipeline.py); so does an image whose header declares more pixels
than a limit (`max_pixels`, config.input.max_image_pixels), which is never decoded.
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


# Bytes of an image's start that hold its dimensions in every format below (WebP's: 30).
_HEADER_BYTES = 32


def _le(b: tf.Tensor, start: int, size: int) -> tf.Tensor:
  """Unsigned little-endian integer of bytes [start, start + size) of an int64 byte vector."""
  return sum(tf.bitwise.left_shift(b[start + i], 8 * i) for i in range(size))


def _be(b: tf.Tensor, start: int, size: int) -> tf.Tensor:
  return sum(tf.bitwise.left_shift(b[start + i], 8 * (size - 1 - i)) for i in range(size))


def _abs_int32(value: tf.Tensor) -> tf.Tensor:
  """An unsigned 32-bit value read as int32, then its magnitude (BMP: negative = top-down)."""
  return tf.abs(tf.where(value >= 2**31, value - 2**32, value))


def _other_format_dims(image_bytes: tf.Tensor) -> tf.Tensor:
  """`image_dims` of anything but a JPEG, from the first bytes alone; (-1, -1): not known."""
  head = tf.strings.substr(image_bytes, 0, _HEADER_BYTES)
  head = tf.strings.substr(tf.strings.join([head, b"\0" * _HEADER_BYTES]), 0, _HEADER_BYTES)
  b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

  def starts(magic: bytes, at: int = 0):
    return tf.equal(tf.strings.substr(head, at, len(magic)), magic)

  vp8l_bits = _le(b, 21, 4)
  candidates = [  # (format test, height, width)
      (starts(b"\x89PNG\r\n\x1a\n"), _be(b, 20, 4), _be(b, 16, 4)),
      (starts(b"GIF8"), _le(b, 8, 2), _le(b, 6, 2)),
      (starts(b"BM"), _abs_int32(_le(b, 22, 4)), _abs_int32(_le(b, 18, 4))),
      (starts(b"RIFF") & starts(b"WEBPVP8 ", 8), tf.bitwise.bitwise_and(_le(b, 28, 2), 0x3FFF),
       tf.bitwise.bitwise_and(_le(b, 26, 2), 0x3FFF)),
      (starts(b"RIFF") & starts(b"WEBPVP8L", 8),
       tf.bitwise.bitwise_and(tf.bitwise.right_shift(vp8l_bits, 14), 0x3FFF) + 1,
       tf.bitwise.bitwise_and(vp8l_bits, 0x3FFF) + 1),
      (starts(b"RIFF") & starts(b"WEBPVP8X", 8), _le(b, 27, 3) + 1, _le(b, 24, 3) + 1),
  ]
  dims = tf.constant([-1, -1], tf.int64)
  for is_format, height, width in reversed(candidates):
    dims = tf.where(is_format, tf.stack([height, width]), dims)
  return dims


def _jpeg_dims(image_bytes: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.image.extract_jpeg_shape(image_bytes)[:2], tf.int64)


def image_dims(image_bytes: tf.Tensor) -> tf.Tensor:
  """(height, width), int64, as an encoded image's header declares them, without decoding.

  JPEG through `tf.io.extract_jpeg_shape` (raises on a JPEG whose header does not parse, as
  decoding would); PNG from IHDR, GIF its logical screen, BMP its info header, WebP its VP8 /
  VP8L / VP8X chunk. (-1, -1) for anything else (which decoding rejects). TF ops only.
  GIF: the logical screen, not the frames' own sizes or count (all frames are read to decode
  the first); WebP VP8X: the canvas.
  """
  return tf.cond(tf.io.is_jpeg(image_bytes), lambda: _jpeg_dims(image_bytes),
                 lambda: _other_format_dims(image_bytes))


def _pixels(dims: tf.Tensor) -> tf.Tensor:
  return tf.where(dims[0] < 0, tf.constant(-1, tf.int64), dims[0] * dims[1])


def image_pixels(image_bytes: tf.Tensor) -> tf.Tensor:
  """Height x width (int64) as the image's header declares it (see `image_dims`); -1 when the
  format is not known."""
  return _pixels(image_dims(image_bytes))


def _within_limit(image_bytes: tf.Tensor, dims: tf.Tensor, max_pixels: int) -> tf.Tensor:
  """`image_bytes`, available only once its declared size passed `max_pixels` (0: no limit).

  An image over the limit raises here (a bad example: skipped and counted), and since every
  decoding op reads the returned tensor, none of them runs on it: decompression bombs are
  rejected without being decoded.
  """
  if not max_pixels:
    return image_bytes
  pixels = _pixels(dims)
  check = tf.debugging.Assert(pixels <= max_pixels, [
      "Image over input.max_image_pixels:", pixels, f"pixels (height x width) > {max_pixels}"])
  with tf.control_dependencies([check]):
    return tf.identity(image_bytes)


def decode(image_bytes: tf.Tensor, max_pixels: int = 0) -> tf.Tensor:
  """JPEG, PNG, WebP, GIF (first frame) or BMP bytes -> (H, W, 3) uint8. Raises on bad data,
  and, without decoding, on an image whose header declares more than `max_pixels` pixels
  (0: no limit)."""
  if max_pixels:
    image_bytes = _within_limit(image_bytes, image_dims(image_bytes), max_pixels)
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
                               ratio=(3 / 4, 4 / 3), method="bicubic",
                               max_pixels: int = 0) -> tf.Tensor:
  """Encoded image -> (size, size, 3) float32 in [0, 255]: RandomResizedCrop, then resize.

  JPEGs are decoded only inside the crop window (`decode_and_crop_jpeg`), which is most of the
  decoding time saved for web images; other formats are decoded whole, then cropped. An image
  over `max_pixels` (0: no limit) raises without being decoded (see `decode`).
  """

  def jpeg():
    shape = tf.image.extract_jpeg_shape(image_bytes)
    checked = _within_limit(image_bytes, tf.cast(shape[:2], tf.int64), max_pixels)
    top, left, crop_h, crop_w = random_crop_window(shape[0], shape[1], seed, scale, ratio)
    return tf.image.decode_and_crop_jpeg(checked, tf.stack([top, left, crop_h, crop_w]),
                                         channels=3)

  def other():
    checked = _within_limit(image_bytes, _other_format_dims(image_bytes), max_pixels)
    image = decode(checked)
    shape = tf.shape(image)
    top, left, crop_h, crop_w = random_crop_window(shape[0], shape[1], seed, scale, ratio)
    return image[top:top + crop_h, left:left + crop_w]

  crop = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  crop.set_shape([None, None, 3])
  return _resize(crop, [size, size], method)


def decode_resize_center_crop(image_bytes, size: int, *, method="bicubic",
                              max_pixels: int = 0) -> tf.Tensor:
  """Encoded image -> (size, size, 3) float32 in [0, 255]: shorter side to `size`, centre crop.

  The same geometry as open_clip's eval transform (Resize(size) + CenterCrop(size)). An image
  over `max_pixels` (0: no limit) raises without being decoded (see `decode`).
  """
  image = decode(image_bytes, max_pixels)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  factor = size / tf.reduce_min(shape)
  new_shape = tf.maximum(tf.cast(tf.round(shape * factor), tf.int32), size)
  resized = _resize(image, new_shape, method)
  top = (new_shape[0] - size) // 2
  left = (new_shape[1] - size) // 2
  return resized[top:top + size, left:left + size]
