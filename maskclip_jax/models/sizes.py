"""Named model sizes (open_clip's configs) and the resolution of `config.model` into specs.

A size name fills every tower field; any field set explicitly in the config overrides it, so
`--config.model.size=ViT-B/16 --config.model.vision.layers=6` is a 6-layer ViT-B.
"""
import dataclasses
from typing import Optional

import ml_collections
from ml_collections import config_dict

from maskclip_jax.models.vocabulary import VOCAB_SIZE


@dataclasses.dataclass(frozen=True)
class VisionSpec:
  image_size: int
  patch_size: int
  width: int
  layers: int
  heads: int
  mlp_ratio: float = 4.0
  posemb_init: str = "normal"  # vit.POSEMB_INITS

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class TextSpec:
  context_length: int
  vocab_size: int
  width: int
  layers: int
  heads: int
  mlp_ratio: float = 4.0


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
  layers: int
  width: int
  heads: int
  mlp_ratio: float = 4.0


_CLIP_TEXT = dict(context_length=77, vocab_size=VOCAB_SIZE)

# open_clip's model_configs (ViT-S-16.json, ViT-B-16.json, ViT-L-14.json); heads = width / 64.
# ViT-Ti/16 is not in open_clip: timm's vit_tiny_patch16 image tower with a small text tower.
NAMED_SIZES = {
    "ViT-Ti/16": dict(
        embed_dim=256,
        vision=dict(image_size=224, patch_size=16, width=192, layers=12, heads=3),
        text=dict(**_CLIP_TEXT, width=256, layers=12, heads=4)),
    "ViT-S/16": dict(
        embed_dim=384,
        vision=dict(image_size=224, patch_size=16, width=384, layers=12, heads=6),
        text=dict(**_CLIP_TEXT, width=384, layers=12, heads=6)),
    "ViT-B/16": dict(
        embed_dim=512,
        vision=dict(image_size=224, patch_size=16, width=768, layers=12, heads=12),
        text=dict(**_CLIP_TEXT, width=512, layers=12, heads=8)),
    "ViT-L/14": dict(
        embed_dim=768,
        vision=dict(image_size=224, patch_size=14, width=1024, layers=24, heads=16),
        text=dict(**_CLIP_TEXT, width=768, layers=12, heads=12)),
}


def canonical_size_name(name: str) -> str:
  """'ViT-B-16', 'vit_b16', 'ViT-B/16' -> 'ViT-B/16'; raises naming the choices if unknown."""
  key = name.replace("-", "").replace("/", "").replace("_", "").lower()
  for known in NAMED_SIZES:
    if known.replace("-", "").replace("/", "").lower() == key:
      return known
  raise ValueError(f"config.model.size={name!r} is unknown; use one of "
                   f"{sorted(NAMED_SIZES)} or set it to None and give every tower field.")


def model_config_defaults() -> ml_collections.ConfigDict:
  """The `config.model` section: a size name, per-field overrides, and compute options."""
  int_field = lambda: config_dict.placeholder(int)  # None = take it from `size`.
  return ml_collections.ConfigDict(dict(
      # Typed, so that a config that sets it to None still takes --config.model.size=NAME.
      size=config_dict.FieldReference("ViT-B/16", field_type=str),
      embed_dim=int_field(),
      vision=dict(image_size=int_field(), patch_size=int_field(), width=int_field(),
                  layers=int_field(), heads=int_field(), mlp_ratio=4.0,
                  # How the positional embedding starts: 'normal' (open_clip's) or 'sincos2d'
                  # (MAE's table, then learned); see models/vit.py.
                  posemb_init="normal"),
      text=dict(context_length=int_field(), vocab_size=int_field(), width=int_field(),
                layers=int_field(), heads=int_field(), mlp_ratio=4.0),
      # Not in the paper beyond "a small decoder": 1 block at the encoder's width.
      image_decoder=dict(layers=1, width=int_field(), heads=int_field()),
      # 4 bidirectional blocks at the text tower's width.
      text_decoder=dict(layers=4, width=int_field(), heads=int_field()),
      # Compute: `dtype` is the matrix products' (bfloat16 = mixed precision like torch AMP:
      # parameters, the residual stream, LayerNorm, softmax and every logit stay f32).
      dtype="float32",
      # 'auto': cuDNN flash attention on GPU in bf16, einsum elsewhere; or 'einsum',
      # 'dot_product_attention' (jax.nn's XLA path), 'cudnn' (padded fused kernel).
      attention="auto",
      scan_layers=False,
      remat="none",  # 'none' | 'full' (each block) | 'dots' (keeps matmul outputs)
  ))


def _resolve(section: ml_collections.ConfigDict, named: Optional[dict], where: str) -> dict:
  out = dict(named or {})
  for key, value in section.items():
    if value is not None:
      out[key] = value
  for key, value in out.items():
    if value is None:
      raise ValueError(f"config.model.{where}.{key} is not set and config.model.size is None; "
                       "set it or choose a named size.")
  return out


def resolve_specs(model_config: ml_collections.ConfigDict):
  """config.model -> (embed_dim, VisionSpec, TextSpec, image DecoderSpec, text DecoderSpec)."""
  named = NAMED_SIZES[canonical_size_name(model_config.size)] if model_config.size else {}
  vision = VisionSpec(**_resolve(model_config.vision, named.get("vision"), "vision"))
  text = TextSpec(**_resolve(model_config.text, named.get("text"), "text"))
  embed_dim = model_config.embed_dim or named.get("embed_dim")
  if embed_dim is None:
    raise ValueError("config.model.embed_dim is not set and config.model.size is None.")
  image_decoder = DecoderSpec(
      layers=model_config.image_decoder.layers,
      width=model_config.image_decoder.width or vision.width,
      heads=model_config.image_decoder.heads or vision.heads, mlp_ratio=vision.mlp_ratio)
  text_decoder = DecoderSpec(
      layers=model_config.text_decoder.layers,
      width=model_config.text_decoder.width or text.width,
      heads=model_config.text_decoder.heads or text.heads, mlp_ratio=text.mlp_ratio)
  for name, spec in (("vision", vision), ("text", text), ("image_decoder", image_decoder),
                     ("text_decoder", text_decoder)):
    if spec.width % spec.heads:
      raise ValueError(f"config.model.{name}: width {spec.width} is not divisible by "
                       f"{spec.heads} heads.")
  if vision.image_size % vision.patch_size:
    raise ValueError(f"config.model.vision.image_size={vision.image_size} is not divisible by "
                     f"patch_size={vision.patch_size}.")
  return embed_dim, vision, text, image_decoder, text_decoder
