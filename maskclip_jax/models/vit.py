"""The image tower: a ViT laid out like open_clip's `VisionTransformer`."""
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskclip_jax.models.transformer import TORCH_LINEAR_INIT, Transformer, layer_norm


class VisionTransformer(nn.Module):
  """conv1 (no bias) -> [class token; patches] + positional_embedding -> ln_pre -> blocks
  -> ln_post -> class token @ proj.

  With `visible_idx` (B, K) the tower encodes only those K patches (plus the class token), the
  MAE-style student: its sequence is 1 + K long, not 1 + num_patches.
  """
  patch_size: int
  width: int
  layers: int
  heads: int
  output_dim: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention: str = "einsum"
  scan: bool = False
  remat: Any = "none"  # transformer.REMAT_POLICIES

  @nn.compact
  def __call__(self, images: jax.Array, visible_idx: Optional[jax.Array] = None
               ) -> Tuple[jax.Array, jax.Array]:
    """images (B, H, W, 3) -> (embedding (B, output_dim), tokens (B, 1 + K, width)).

    `tokens` are the ln_post features of the class token and of every encoded patch, in the
    order of `visible_idx` (all patches in raster order when it is None): the teacher's
    per-patch features and the decoder's input.
    """
    batch, height, width_px, _ = images.shape
    p = self.patch_size
    if height % p or width_px % p:
      raise ValueError(f"image size {height}x{width_px} is not divisible by patch size {p}")
    num_patches = (height // p) * (width_px // p)
    scale = self.width ** -0.5

    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                dtype=self.dtype, kernel_init=TORCH_LINEAR_INIT,
                name="conv1")(images.astype(self.dtype))
    # The residual stream is f32 from here on (mixed precision like torch AMP: only the blocks'
    # matrix products run in `dtype`).
    x = x.reshape(batch, num_patches, self.width).astype(jnp.float32)
    class_embedding = self.param("class_embedding", nn.initializers.normal(scale),
                                 (self.width,))
    positional_embedding = self.param("positional_embedding", nn.initializers.normal(scale),
                                      (num_patches + 1, self.width))
    x = x + positional_embedding[1:]
    if visible_idx is not None:
      x = jnp.take_along_axis(x, visible_idx[:, :, None], axis=1)
    cls = class_embedding + positional_embedding[0]
    x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, self.width)), x], axis=1)

    x = layer_norm("ln_pre", self.dtype)(x)
    x = Transformer(self.layers, self.heads, self.mlp_ratio, self.dtype, self.attention,
                    is_causal=False, scan=self.scan, remat=self.remat, name="transformer")(x)
    tokens = layer_norm("ln_post", self.dtype)(x)
    proj = self.param("proj", nn.initializers.normal(scale), (self.width, self.output_dim))
    embedding = tokens[:, 0] @ proj
    return embedding, tokens
