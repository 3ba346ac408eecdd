"""Pre-LN transformer blocks shared by the image tower, the text tower and the decoders.

Parameter names mirror open_clip's `ResidualAttentionBlock` (`ln_1`, `attn/in_proj`,
`attn/out_proj`, `ln_2`, `mlp/c_fc`, `mlp/c_proj`) so that export is a renaming.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# open_clip's LayerNorm and nn.GELU (exact erf form) are the reference.
LN_EPS = 1e-5
ATTENTION_KINDS = ("einsum", "dot_product_attention", "cudnn")
# Xavier-uniform kernels and zero biases, as torch's MultiheadAttention and big_vision's ViT.
DENSE_INIT = nn.initializers.xavier_uniform()


def layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
  # Statistics in f32 even under bf16 compute: LN in low precision drifts.
  return nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class MultiHeadAttention(nn.Module):
  """Self-attention with one fused q/k/v projection, like torch's `in_proj_weight`."""
  num_heads: int
  dtype: Any = jnp.float32
  attention: str = "einsum"

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None,
               is_causal: bool = False) -> jax.Array:
    batch, length, width = x.shape
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
    head_dim = width // self.num_heads
    qkv = nn.Dense(3 * width, dtype=self.dtype, kernel_init=DENSE_INIT, name="in_proj")(x)
    qkv = qkv.reshape(batch, length, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, N, H)

    if self.attention == "einsum":
      logits = jnp.einsum("btnh,bsnh->bnts", q, k) * (head_dim ** -0.5)
      logits = logits.astype(jnp.float32)
      if is_causal:
        causal = jnp.tril(jnp.ones((length, length), dtype=bool))
        mask = causal[None, None] if mask is None else (mask & causal[None, None])
      if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
      weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
      out = jnp.einsum("bnts,bsnh->btnh", weights, v)
    else:
      implementation = "cudnn" if self.attention == "cudnn" else None
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                         implementation=implementation)
    out = out.reshape(batch, length, width)
    return nn.Dense(width, dtype=self.dtype, kernel_init=DENSE_INIT, name="out_proj")(out)


class Mlp(nn.Module):
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    x = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=DENSE_INIT, name="c_fc")(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(width, dtype=self.dtype, kernel_init=DENSE_INIT, name="c_proj")(x)


class ResidualAttentionBlock(nn.Module):
  """x + attn(ln_1(x)); x + mlp(ln_2(x))."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention: str = "einsum"
  is_causal: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    width = x.shape[-1]
    y = layer_norm("ln_1", self.dtype)(x).astype(self.dtype)
    y = MultiHeadAttention(self.num_heads, self.dtype, self.attention, name="attn")(
        y, mask=mask, is_causal=self.is_causal)
    x = x + y
    y = layer_norm("ln_2", self.dtype)(x).astype(self.dtype)
    y = Mlp(int(width * self.mlp_ratio), self.dtype, name="mlp")(y)
    return x + y


class _ScanBody(nn.Module):
  """Adapts a block to nn.scan's (carry, xs) -> (carry, ys) calling convention."""
  block_kwargs: dict

  @nn.compact
  def __call__(self, x, mask):
    return ResidualAttentionBlock(**self.block_kwargs, name="block")(x, mask), None


class Transformer(nn.Module):
  """A stack of `layers` blocks, unrolled (`resblocks_{i}`) or scanned (`resblocks`, stacked).

  `scan` compiles one block instead of `layers` copies (faster compiles for deep models);
  `remat` recomputes each block's activations in the backward pass (less memory, more FLOPs).
  """
  layers: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention: str = "einsum"
  is_causal: bool = False
  scan: bool = False
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    block_kwargs = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
                        attention=self.attention, is_causal=self.is_causal)
    if self.scan:
      body = nn.remat(_ScanBody, prevent_cse=False) if self.remat else _ScanBody
      stack = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=nn.broadcast, length=self.layers)
      x, _ = stack(block_kwargs, name="resblocks")(x, mask)
      return x
    block_cls = nn.remat(ResidualAttentionBlock) if self.remat else ResidualAttentionBlock
    for i in range(self.layers):
      x = block_cls(**block_kwargs, name=f"resblocks_{i}")(x, mask)
    return x
