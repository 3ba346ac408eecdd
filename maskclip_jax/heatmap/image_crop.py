"""An image file or array -> the centre crop a heat map is drawn on, as the eval pipeline crops.

PIL and numpy only: no tensorflow (torch users draw heat maps next to torch).
"""
import numpy as np
from PIL import Image


def load_image(path: str) -> np.ndarray:
  """An image file -> (H, W, 3) uint8 RGB (grey, palette and alpha images are converted)."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"--image={path}: cannot read it as an image ({e}).") from e


def preprocess(image: np.ndarray, size: int) -> np.ndarray:
  """(H, W, 3) uint8 -> (size, size, 3) uint8: shorter side to `size` (bicubic), centre crop.

  The geometry of the eval pipeline (data/preprocess.py `decode_resize_center_crop`, open_clip's
  Resize + CenterCrop) with PIL instead of tensorflow; PIL always antialiases when it shrinks
  and rounds to uint8, so pixel values can differ from the pipeline's by a few levels, never their
  places.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"the image is {image.dtype} {image.shape}; expected (H, W, 3) uint8 RGB.")
  height, width = image.shape[:2]
  factor = size / min(height, width)
  new_h = max(int(round(height * factor)), size)
  new_w = max(int(round(width * factor)), size)
  if (new_h, new_w) != (height, width):
    image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))
  top = (new_h - size) // 2
  left = (new_w - size) // 2
  return image[top:top + size, left:left + size]
