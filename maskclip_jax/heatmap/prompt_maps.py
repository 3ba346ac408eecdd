"""The heat maps of text prompts on one image: crop it (image_crop.py), score every patch
against every prompt (similarity.py), upsample, colour and lay out the panels (render.py)."""
import dataclasses
from typing import Any, Dict, Optional, Sequence

import numpy as np
from PIL import Image

from maskclip_jax.heatmap.image_crop import preprocess
from maskclip_jax.heatmap.render import SCALES, color_ranges, render, to_unit
from maskclip_jax.heatmap.similarity import (DEFAULT_FEATURES, check_features, patch_features,
                                             resolve_image_tower, select_visual, text_features,
                                             upsample)
from maskclip_jax.models.maskclip import MaskCLIP


@dataclasses.dataclass
class HeatMaps:
  """What `heat_maps` computes. P prompts, an (h, w) patch grid, an S-px crop."""
  prompts: list            # the P prompts, in order
  similarity: np.ndarray   # (P, h, w) float32 raw cosine similarity per patch
  upsampled: np.ndarray    # (P, S, S) float32 the same, bilinearly upsampled to the crop
  crop: np.ndarray         # (S, S, 3) uint8 the preprocessed image the model saw
  figure: Image.Image      # the rendered panels (RGB)
  scale: str               # the colour scale used, one of render.SCALES
  features: str            # the patch features used, one of similarity.FEATURES
  image_tower: str         # the image tower used, one of models/image_towers.py's IMAGE_TOWERS


def heat_maps(model: MaskCLIP, params: Dict[str, Any], image: np.ndarray,
              prompts: Sequence[str], *, teacher: Optional[Dict[str, Any]] = None,
              image_tower_name: Optional[str] = None, scale: str = "per_prompt",
              features: str = DEFAULT_FEATURES) -> HeatMaps:
  """The heat maps of `prompts` on `image` ((H, W, 3) uint8) for a MaskCLIP's params.

  `params` are the train state's params (the text tower is always theirs); `image_tower_name`
  'teacher' takes the image tower from `teacher`, the EMA teacher's params, 'online' from
  `params`, None (default) the teacher where there is one. `features`: which patch features,
  one of FEATURES (similarity.py's docstring); `scale`: one of SCALES (render.py's).
  """
  prompts = list(prompts)
  if not prompts:
    raise ValueError("no prompts: give at least one text to locate, e.g. --text 'a dog'.")
  empty = [i for i, p in enumerate(prompts) if not p.strip()]
  if empty:
    raise ValueError(f"the prompts at index {empty} are empty; each must say what to look for.")
  if scale not in SCALES:
    raise ValueError(f"scale={scale!r} is unknown; use one of {SCALES}.")
  check_features(features)
  image_tower_name = resolve_image_tower(teacher, image_tower_name)
  visual = select_visual(params, teacher, image_tower_name)
  size = model.vision.image_size
  crop = preprocess(image, size)
  patches = patch_features(model, visual, crop[None], features)[0]  # (h, w, D)
  texts = text_features(model, params, prompts)               # (P, D)
  similarity = np.einsum("hwd,pd->phw", patches, texts)
  upsampled = upsample(similarity, size)
  # The range comes from the patch grid: bilinear upsampling stays within it.
  ranges = color_ranges(similarity, scale)
  figure = render(crop, to_unit(upsampled, ranges), prompts, ranges)
  return HeatMaps(prompts=prompts, similarity=similarity.astype(np.float32),
                  upsampled=upsampled, crop=crop, figure=figure, scale=scale,
                  features=features, image_tower=image_tower_name)
