"""The image tower: a ViT laid out like open_clip's `VisionTransformer`."""
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskclip_jax.models.transformer import TORCH_LINEAR_INIT, Transformer, layer_norm

# How the learned positional embedding starts: open_clip's N(0, width^-0.5) ('normal'), or the
# fixed 2-D sine-cosine table of MAE and big_vision ('sincos2d'), then trained as usual. Either
# way it is one parameter of open_clip's shape, so export does not change.
POSEMB_INITS = ("normal", "sincos2d")


def sincos2d_posemb(grid_rows: int, grid_cols: int, width: int,
                    temperature: float = 10_000.0) -> np.ndarray:
  """(rows * cols, width) float32: sin and cos of the column, then of the row, at width / 4
  frequencies each (MAE's and big_vision's `posemb_sincos_2d`), patches in raster order."""
  if width % 4:
    raise ValueError(f"a 2-D sine-cosine positional embedding needs a width divisible by 4, "
                     f"not {width}; use posemb_init='normal'.")
  rows, cols = np.mgrid[:grid_rows, :grid_cols]
  omega = 1.0 / temperature ** (np.arange(width // 4) / max(width // 4 - 1, 1))
  cols = cols.reshape(-1, 1) * omega
  rows = rows.reshape(-1, 1) * omega
  table = np.concatenate([np.sin(cols), np.cos(cols), np.sin(rows), np.cos(rows)], axis=1)
  return table.astype(np.float32)


def check_posemb_init(kind: str, width: int) -> None:
  """Raises ValueError, naming --config.model.vision.posemb_init, for an unknown start or a
  sine-cosine start at a width it cannot fill (config_checks runs this before anything is
  built)."""
  if kind not in POSEMB_INITS:
    raise ValueError(f"--config.model.vision.posemb_init={kind!r} is unknown; use one of "
                     f"{POSEMB_INITS}.")
  if kind == "sincos2d" and width % 4:
    raise ValueError(f"--config.model.vision.posemb_init=sincos2d needs a width divisible by "
                     f"4, not {width}; change --config.model.vision.width or use "
                     "posemb_init=normal.")


def positional_embedding_init(kind: str, grid_rows: int, grid_cols: int, width: int):
  """The initialiser of the (1 + rows * cols, width) table: the class token's row, then the
  patches'."""
  check_posemb_init(kind, width)
  if kind == "normal":
    return nn.initializers.normal(width ** -0.5)
  # The class token's row starts at zero: it has no place in the grid.
  table = np.concatenate([np.zeros((1, width), np.float32),
                          sincos2d_posemb(grid_rows, grid_cols, width)])
  return lambda key, shape, dtype=jnp.float32: jnp.asarray(table, dtype).reshape(shape)


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
  posemb_init: str = "normal"  # POSEMB_INITS

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
    positional_embedding = self.param(
        "positional_embedding",
        positional_embedding_init(self.posemb_init, height // p, width_px // p, self.width),
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
