"""Similarity maps -> one figure: the colour scale, the 'jet' colour map, the overlay on the
crop, and the panels laid out side by side with their captions.

Colour scale (`scale`): 'per_prompt' (the default) stretches each panel's own min..max patch
similarity over the colour map, so each panel shows where in the image its prompt matches best,
brighter (red) there; the question a heat map answers. Similarities of different prompts sit at
different levels (a prompt naming the image's colour is higher at every patch than one that does
not), so on one 'shared' range, the smallest to the largest over all prompts, panels are
comparable with each other but the level differences between prompts swamp the differences
within each panel. Every panel's caption gives the cosine range its colours span.

numpy and PIL only: no matplotlib (the colour map is a few lines below).
"""
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SCALES = ("per_prompt", "shared")

# Layout of the figure, in pixels: a crop smaller than PANEL is enlarged by the largest whole
# factor that keeps it within PANEL (a 64-px crop 4x, to be readable; 224 px stays as it is);
# panels are MARGIN apart and around; above each, a caption band of two text lines (the prompt,
# then its similarity range).
PANEL = 256
MARGIN = 8
FONT_SIZE = 13
LINE_HEIGHT = 16
CAPTION_HEIGHT = 2 * LINE_HEIGHT
# The heat map's weight in the overlay: enough colour to read, enough image to see the object.
ALPHA = 0.55


def panel_size(crop_size: int) -> int:
  """Width (= height) of one panel's image: the crop, enlarged by a whole factor if small."""
  return crop_size * max(1, PANEL // crop_size)


def figure_size(num_prompts: int, crop_size: int) -> tuple:
  """(width, height) in pixels of the figure for `num_prompts` panels of an S-px crop."""
  panel = panel_size(crop_size)
  return (num_prompts * panel + (num_prompts + 1) * MARGIN,
          MARGIN + CAPTION_HEIGHT + panel + MARGIN)


def color_ranges(similarity: np.ndarray, scale: str = "per_prompt") -> np.ndarray:
  """(P, h, w) cosine maps -> (P, 2): the (low, high) similarity each panel's colours span."""
  if scale not in SCALES:
    raise ValueError(f"scale={scale!r} is unknown; use one of {SCALES}.")
  flat = similarity.reshape(similarity.shape[0], -1)
  if scale == "shared":
    return np.tile([flat.min(), flat.max()], (flat.shape[0], 1))
  return np.stack([flat.min(axis=1), flat.max(axis=1)], axis=1)


def to_unit(maps: np.ndarray, ranges: np.ndarray) -> np.ndarray:
  """(P, ...) maps -> [0, 1], each map's (low, high) from `ranges` going to 0 and 1."""
  shape = (-1,) + (1,) * (maps.ndim - 1)
  low, high = ranges[:, 0].reshape(shape), ranges[:, 1].reshape(shape)
  # A constant map has no range: it shows as the bottom of the scale rather than dividing by 0.
  return np.clip((maps - low) / np.maximum(high - low, 1e-12), 0.0, 1.0)


def colorize(values: np.ndarray) -> np.ndarray:
  """[0, 1] -> uint8 RGB on the 'jet' colour map (dark blue, cyan, yellow, dark red).

  jet's channels are three clipped triangles; a 5-point table would give the same picture.
  """
  x = np.clip(values, 0.0, 1.0)[..., None] * 4.0
  centres = np.array([3.0, 2.0, 1.0])  # red, green, blue peak at x = 3/4, 1/2, 1/4
  rgb = np.clip(1.5 - np.abs(x - centres), 0.0, 1.0)
  return np.round(rgb * 255).astype(np.uint8)


def _font():
  # Pillow >= 10.1 ships a scalable default font; older ones (or no FreeType) have a bitmap one.
  try:
    return ImageFont.load_default(size=FONT_SIZE)
  except TypeError:
    return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
  """`text`, cut with '...' so that it fits in `width` pixels."""
  if draw.textlength(text, font=font) <= width:
    return text
  while text and draw.textlength(text + "...", font=font) > width:
    text = text[:-1]
  return text + "..."


def render(crop: np.ndarray, unit_maps: np.ndarray, prompts: Sequence[str],
           ranges: np.ndarray) -> Image.Image:
  """One panel per prompt, side by side: the crop with its [0, 1] map overlaid in colour, the
  prompt and the cosine range of its colour scale written above it. Size: `figure_size`."""
  size = crop.shape[0]
  panel = panel_size(size)
  width, height = figure_size(len(prompts), size)
  figure = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(figure)
  font = _font()
  for i, (prompt, unit, (low, high)) in enumerate(zip(prompts, unit_maps, ranges)):
    overlay = (1 - ALPHA) * crop.astype(np.float32) + ALPHA * colorize(unit).astype(np.float32)
    image = Image.fromarray(np.round(overlay).astype(np.uint8))
    if panel != size:  # whole-factor enlargement: every crop pixel stays a crisp square
      image = image.resize((panel, panel), Image.NEAREST)
    left = MARGIN + i * (panel + MARGIN)
    figure.paste(image, (left, MARGIN + CAPTION_HEIGHT))
    draw.text((left, MARGIN), _fit(draw, prompt, font, panel), fill="black", font=font)
    draw.text((left, MARGIN + LINE_HEIGHT), f"cos {low:+.3f} (blue) .. {high:+.3f} (red)",
              fill=(90, 90, 90), font=font)
  return figure
