"""What the exporters need to know about a config's CLIP model, and how to name it in errors."""
import dataclasses
from typing import Optional

import ml_collections

from maskclip_jax.models.sizes import TextSpec, VisionSpec, resolve_specs

# The exports' image normalisation is maskclip_jax/normalization.py's CLIP_MEAN / CLIP_STD, the
# one the input pipeline applies (data/preprocess.py, which imports tensorflow, uses it too).
# Evaluation preprocessing of data/preprocess.py: shorter side to the size, bicubic, centre crop.
EVAL_INTERPOLATION = "bicubic"


@dataclasses.dataclass(frozen=True)
class ClipArchitecture:
  """The two towers and the joint embedding width; `size` is config.model.size (may be None)."""
  size: Optional[str]
  embed_dim: int
  vision: VisionSpec
  text: TextSpec

  def describe(self) -> str:
    """'ViT-Ti/16 (vision: 224 px, patch 16, width 192, 12 layers, 3 heads, mlp 4; text: ...)'."""
    v, t = self.vision, self.text
    dims = (f"vision: {v.image_size} px, patch {v.patch_size}, width {v.width}, {v.layers} layers,"
            f" {v.heads} heads, mlp {v.mlp_ratio:g}; text: context {t.context_length}, vocab"
            f" {t.vocab_size}, width {t.width}, {t.layers} layers, {t.heads} heads, mlp"
            f" {t.mlp_ratio:g}; embed {self.embed_dim}")
    name = self.size if self.size else "config.model.size=None"
    return f"{name} ({dims})"


def clip_architecture(config: ml_collections.ConfigDict) -> ClipArchitecture:
  embed_dim, vision, text, _, _ = resolve_specs(config.model)
  return ClipArchitecture(size=config.model.size, embed_dim=embed_dim, vision=vision, text=text)
