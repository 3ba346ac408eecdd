"""Export the image tower to timm: a `VisionTransformer` of timm's CLIP family.

timm's `vit_*_clip_*` models are open_clip's image tower in timm's names: class token, a
bias-free patch embedding, `norm_pre` (our ln_pre), fused `qkv`, `norm` (our ln_post) before
token pooling, exact GELU, LayerNorm eps 1e-5; `head` is our `proj` (bias zero), so the model's
output is our image embedding and `forward_head(..., pre_logits=True)` is the ln_post class
token. The directory (config.json with `architecture` and `model_args`, model.safetensors,
pytorch_model.bin) loads with `timm.create_model("local-dir:DIR", pretrained=True)`.

timm registers CLIP ViTs only at some sizes. A size with the same patch size, width, depth,
heads and MLP width as a registered one is exported as that architecture (at our image size).
Other widths/depths (timm has no CLIP ViT-Ti/16 or ViT-S/16) are exported as the CLIP family of
the same patch size with `embed_dim`/`depth`/`num_heads` overrides in `model_args`, which
`local-dir:` loading applies. A patch size or MLP ratio timm has no CLIP ViT for is an error.
"""
import dataclasses
import pathlib
from typing import Any, Dict, Optional, Tuple

import numpy as np

from maskclip_jax.export.architecture import EVAL_INTERPOLATION, ClipArchitecture
from maskclip_jax.export.strict_load import load_strict
from maskclip_jax.export.to_open_clip import open_clip_state_dict
from maskclip_jax.normalization import CLIP_MEAN, CLIP_STD


@dataclasses.dataclass(frozen=True)
class TimmClipVit:
  name: str
  patch_size: int
  width: int
  depth: int
  heads: int
  mlp_hidden: int
  image_size: int


def _vit(name, patch, width, depth, heads, image_size, mlp_hidden=None):
  return TimmClipVit(name, patch, width, depth, heads, mlp_hidden or 4 * width, image_size)


# timm's registered CLIP ViTs with exact GELU (the *_quickgelu_* ones use OpenAI's QuickGELU,
# which ours is not). tests/test_export_timm.py checks this table against the installed timm.
TIMM_CLIP_VITS = (
    _vit("vit_base_patch16_clip_224", 16, 768, 12, 12, 224),
    _vit("vit_base_patch16_clip_384", 16, 768, 12, 12, 384),
    _vit("vit_base_patch16_plus_clip_240", 16, 896, 12, 14, 240),
    _vit("vit_medium_patch16_clip_224", 16, 512, 12, 8, 224),
    _vit("vit_xsmall_patch16_clip_224", 16, 256, 10, 4, 224),
    _vit("vit_base_patch32_clip_224", 32, 768, 12, 12, 224),
    _vit("vit_base_patch32_clip_256", 32, 768, 12, 12, 256),
    _vit("vit_base_patch32_clip_384", 32, 768, 12, 12, 384),
    _vit("vit_base_patch32_clip_448", 32, 768, 12, 12, 448),
    _vit("vit_medium_patch32_clip_224", 32, 512, 12, 8, 224),
    _vit("vit_betwixt_patch32_clip_224", 32, 640, 12, 10, 224),
    _vit("vit_large_patch14_clip_224", 14, 1024, 24, 16, 224),
    _vit("vit_large_patch14_clip_336", 14, 1024, 24, 16, 336),
    _vit("vit_huge_patch14_clip_224", 14, 1280, 32, 16, 224),
    _vit("vit_huge_patch14_clip_336", 14, 1280, 32, 16, 336),
    _vit("vit_huge_patch14_clip_378", 14, 1280, 32, 16, 378),
    _vit("vit_giant_patch14_clip_224", 14, 1408, 40, 16, 224, mlp_hidden=6144),
    _vit("vit_gigantic_patch14_clip_224", 14, 1664, 48, 16, 224, mlp_hidden=8192),
    _vit("vit_gigantic_patch14_clip_378", 14, 1664, 48, 16, 378, mlp_hidden=8192),
)
# For other widths/depths: the family of OpenAI's CLIP at that patch size (B/16, B/32, L/14).
FAMILY_BY_PATCH = {16: "vit_base_patch16_clip_224", 32: "vit_base_patch32_clip_224",
                   14: "vit_large_patch14_clip_224"}
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")


def timm_architecture(arch: ClipArchitecture) -> Tuple[str, Dict[str, Any]]:
  """Our image tower -> (timm architecture name, model_args that rebuild it exactly)."""
  v = arch.vision
  hidden = int(v.width * v.mlp_ratio)
  same_tower = [t for t in TIMM_CLIP_VITS
                if (t.patch_size, t.width, t.depth, t.heads, t.mlp_hidden)
                == (v.patch_size, v.width, v.layers, v.heads, hidden)]
  model_args: Dict[str, Any] = dict(num_classes=arch.embed_dim, global_pool="token")
  if same_tower:
    same_size = [t for t in same_tower if t.image_size == v.image_size]
    base = (same_size or same_tower)[0]
  else:
    family = FAMILY_BY_PATCH.get(v.patch_size)
    if family is None or v.mlp_ratio != 4.0:
      patches = sorted(FAMILY_BY_PATCH)
      raise ValueError(
          f"{arch.describe()} has no timm architecture: timm's CLIP ViTs have patch sizes "
          f"{patches} and MLP ratio 4 (or the giant sizes' own), not patch {v.patch_size} with "
          f"MLP ratio {v.mlp_ratio:g}. Export it with --to open_clip or --to hf, which take "
          "any size.")
    base = next(t for t in TIMM_CLIP_VITS if t.name == family)
    model_args.update(embed_dim=v.width, depth=v.layers, num_heads=v.heads)
  if base.image_size != v.image_size:
    model_args["img_size"] = v.image_size
  return base.name, model_args


def timm_state_dict(open_clip_sd: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """The `visual.` part of an open_clip state dict -> timm VisionTransformer keys (numpy).

  The renaming of timm's own `_convert_openai_clip`, spelled out key by key.
  """
  out = {}
  for key, value in open_clip_sd.items():
    if not key.startswith("visual."):
      continue
    name = key[len("visual."):]
    if name == "class_embedding":
      out["cls_token"] = value.reshape(1, 1, -1)
    elif name == "positional_embedding":
      out["pos_embed"] = value[None]
    elif name == "conv1.weight":
      out["patch_embed.proj.weight"] = value
    elif name == "proj":
      out["head.weight"] = np.ascontiguousarray(value.T)
      out["head.bias"] = np.zeros(value.shape[1], value.dtype)  # CLIP's projection has none
    elif name.startswith(("ln_pre.", "ln_post.")):
      layer, param = name.split(".")
      out[f"{'norm_pre' if layer == 'ln_pre' else 'norm'}.{param}"] = value
    elif name.startswith("transformer.resblocks."):
      index, rest = name[len("transformer.resblocks."):].split(".", 1)
      renamed = {"ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias",
                 "ln_2.weight": "norm2.weight", "ln_2.bias": "norm2.bias",
                 "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
                 "attn.out_proj.weight": "attn.proj.weight",
                 "attn.out_proj.bias": "attn.proj.bias",
                 "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
                 "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias"}
      if rest not in renamed:
        raise ValueError(f"open_clip's {key} has no timm counterpart")
      out[f"blocks.{index}.{renamed[rest]}"] = value
    else:
      raise ValueError(f"open_clip's {key} has no timm counterpart")
  return out


def export_timm(clip_params: Dict[str, Any], arch: ClipArchitecture, out_dir: str,
                provenance: Optional[Dict[str, Any]] = None) -> pathlib.Path:
  """Writes config.json, model.safetensors and pytorch_model.bin (timm's Hub layout)."""
  name, model_args = timm_architecture(arch)  # fails before any torch work for unknown sizes
  import timm  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from timm.models import save_for_hf  # pylint: disable=import-outside-toplevel

  # The overlay replaces the base architecture's pretrained tag (e.g. 'laion2b_ft_in12k_in1k')
  # and licence, which would otherwise be written into config.json as if they were ours.
  model = timm.create_model(name, pretrained=False, **model_args,
                            pretrained_cfg_overlay=dict(tag="maskclip_jax", license=None)).eval()
  state_dict = {key: torch.from_numpy(np.ascontiguousarray(value))
                for key, value in timm_state_dict(open_clip_state_dict(clip_params)).items()}
  load_strict(model, state_dict, f"timm's {name}", arch)
  size = arch.vision.image_size
  data_config = dict(input_size=(3, size, size), interpolation=EVAL_INTERPOLATION,
                     mean=CLIP_MEAN, std=CLIP_STD, crop_pct=1.0, crop_mode="center")
  model_config = dict(maskclip_jax=provenance) if provenance else None
  out = pathlib.Path(out_dir)
  save_for_hf(model, str(out), model_config=model_config, safe_serialization="both",
              data_config=data_config)
  return out
