"""Heat maps: where in an image a text prompt matches, from per-patch CLIP similarity.

For each prompt, the cosine similarity between every patch's projected feature and the prompt's
text embedding, on the patch grid; upsampled bilinearly to the crop and overlaid on it, one panel
per prompt, side by side in one image. One job a module:
  similarity.py    the patch and text features from the model (the last-block surgery of
                   MaskCLIP's value features), which image tower, upsampling
  image_crop.py    an image file -> the eval pipeline's centre crop (`preprocess`)
  render.py        the colour scale, colour map, overlay and the figure's layout
  prompt_maps.py   `heat_maps`: the above, for one image and its prompts
  from_workdir.py  `write_heatmap`: a workdir's checkpoint -> a PNG (`maskclip-heatmap`)

Pure numpy, PIL and JAX: no tensorflow (torch users import this next to torch) and no matplotlib.
The raw cosine maps are returned untouched beside the figure.
"""
from maskclip_jax.heatmap.from_workdir import write_heatmap
from maskclip_jax.heatmap.image_crop import load_image, preprocess
from maskclip_jax.heatmap.prompt_maps import HeatMaps, heat_maps
from maskclip_jax.heatmap.render import (SCALES, color_ranges, colorize, figure_size,
                                         panel_size, to_unit)
from maskclip_jax.heatmap.similarity import (DEFAULT_FEATURES, FEATURES, check_features,
                                             patch_features, resolve_image_tower,
                                             select_visual, text_features, upsample)

__all__ = [
    "DEFAULT_FEATURES", "FEATURES", "HeatMaps", "SCALES", "check_features", "color_ranges",
    "colorize", "figure_size", "heat_maps", "load_image", "panel_size", "patch_features",
    "preprocess", "resolve_image_tower", "select_visual", "text_features", "to_unit",
    "upsample", "write_heatmap",
]
