"""The CLIP model inside a train state: which image tower, as float32 numpy, layers unrolled.

The train state's params also hold the distillation decoders and heads (image_decoder,
codeword_head, text_decoder, text_mask_embedding, ...): they exist for pretraining only and
no PyTorch CLIP has a place for them, so they are left out here.
"""
from typing import Any, Dict, Mapping, Optional

import jax
import numpy as np

from maskclip_jax.export.layer_layout import unstack_layers

IMAGE_TOWERS = ("online", "teacher")


def has_ema_image_tower(teacher: Optional[Dict[str, Any]]) -> bool:
  """Whether a checkpoint's `teacher` holds an EMA image tower (runs with w_dist=0 or
  distill_target='pixel' keep none)."""
  return bool(teacher) and "visual" in teacher


def select_image_tower(params: Dict[str, Any], teacher: Optional[Dict[str, Any]],
                       image_tower: str) -> Dict[str, Any]:
  """The image tower's parameters: the trained ('online') one, or the EMA teacher's."""
  if image_tower not in IMAGE_TOWERS:
    raise ValueError(f"--image-tower={image_tower!r} is unknown; use one of {IMAGE_TOWERS}.")
  if image_tower == "teacher":
    if not has_ema_image_tower(teacher):
      raise ValueError("--image-tower=teacher: this checkpoint has no EMA image tower (runs with "
                       "config.maskclip.w_dist=0 or distill_target='pixel' keep none); use "
                       "--image-tower=online.")
    return teacher["visual"]
  return params["visual"]


def clip_params_for_export(params: Dict[str, Any], teacher: Optional[Dict[str, Any]] = None,
                           image_tower: str = "online") -> Dict[str, Any]:
  """{visual, text, logit_scale} to export; `image_tower='teacher'` takes the EMA image tower."""
  missing = [name for name in ("visual", "text", "logit_scale") if name not in params]
  if missing:
    raise ValueError(f"the params have no {missing} (top level: {sorted(params)}): they are not "
                     "a MaskCLIP train state's params.")
  visual = select_image_tower(params, teacher, image_tower)
  clip = dict(visual=visual, text=params["text"], logit_scale=params["logit_scale"])
  return unstack_layers(_as_numpy(clip))


def _as_numpy(tree):
  """Plain dicts of float32 numpy arrays (parameters are f32 whatever the compute dtype, so the
  cast only normalises array types; FrozenDicts and restored mappings become dicts)."""
  if isinstance(tree, Mapping):
    return {str(key): _as_numpy(value) for key, value in tree.items()}
  return np.asarray(jax.device_get(tree), dtype=np.float32)
