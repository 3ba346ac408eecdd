"""The CLIP model inside a train state: which image tower, as float32 numpy, layers unrolled.

The train state's params also hold the distillation decoders and heads (image_decoder,
codeword_head, text_decoder, text_mask_embedding, ...): they exist for pretraining only and
no PyTorch CLIP has a place for them, so they are left out here.
"""
from typing import Any, Dict, Mapping, Optional

import jax
import numpy as np

from maskclip_jax.models.image_towers import select_image_tower
from maskclip_jax.models.layer_layout import unstack_layers


def clip_params_for_export(params: Dict[str, Any], teacher: Optional[Dict[str, Any]] = None,
                           image_tower: str = "online") -> Dict[str, Any]:
  """{visual, text, logit_scale} to export; `image_tower='teacher'` takes the EMA image tower."""
  missing = [name for name in ("visual", "text", "logit_scale") if name not in params]
  if missing:
    raise ValueError(f"the params have no {missing} (top level: {sorted(params)}): they are not "
                     "a MaskCLIP train state's params.")
  visual = select_image_tower(params, teacher, image_tower, field="--image-tower")
  clip = dict(visual=visual, text=params["text"], logit_scale=params["logit_scale"])
  return unstack_layers(_as_numpy(clip))


def _as_numpy(tree):
  """Plain dicts of float32 numpy arrays (parameters are f32 whatever the compute dtype, so the
  cast only normalises array types; FrozenDicts and restored mappings become dicts)."""
  if isinstance(tree, Mapping):
    return {str(key): _as_numpy(value) for key, value in tree.items()}
  return np.asarray(jax.device_get(tree), dtype=np.float32)
