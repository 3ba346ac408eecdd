"""Pre-LN transformer blocks shared by the image tower, the text tower and the decoders.

Parameter names mirror open_clip's `ResidualAttentionBlock` (`ln_1`, `attn/in_proj`,
`attn/out_proj`, `ln_2`, `mlp/c_fc`, `mlp/c_proj`) so that export is a renaming.
"""
import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

# open_clip's LayerNorm and nn.GELU (exact erf form) are the reference.
LN_EPS = 1e-5
ATTENTION_KINDS = ("einsum", "dot_product_attention", "cudnn")
Initializer = Callable[..., jax.Array]

# Initialisation follows open_clip, so a CLIP trained here and one trained there start alike:
# its image tower keeps PyTorch's defaults, its text tower draws normals (`text_block_init`).
# torch's nn.Linear / nn.Conv2d weight: kaiming_uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)).
TORCH_LINEAR_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
# torch's MultiheadAttention in_proj_weight (the (3w, w) matrix as one): xavier-uniform.
TORCH_IN_PROJ_INIT = nn.initializers.xavier_uniform()


def torch_linear_bias_init(fan_in: int) -> Initializer:
  """torch's nn.Linear bias: U(+-1/sqrt(fan_in))."""
  bound = fan_in ** -0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                    bound)


def torch_linear(features: int, name: str, dtype: Any = jnp.float32,
                 kernel_init: Initializer = TORCH_LINEAR_INIT,
                 zero_bias: bool = False) -> Callable[[jax.Array], jax.Array]:
  """A dense layer initialised like torch's nn.Linear (bias U(+-1/sqrt(fan_in)), or zeros)."""
  def apply(x):
    bias_init = nn.initializers.zeros if zero_bias else torch_linear_bias_init(x.shape[-1])
    return nn.Dense(features, dtype=dtype, kernel_init=kernel_init, bias_init=bias_init,
                    name=name)(x)
  return apply


@dataclasses.dataclass(frozen=True)
class BlockInit:
  """Kernel initialisers of a block's four matrices. Biases are torch's whatever these are:
  zero in attention (MultiheadAttention resets them), U(+-1/sqrt(fan_in)) in the MLP."""
  in_proj: Initializer = TORCH_IN_PROJ_INIT
  out_proj: Initializer = TORCH_LINEAR_INIT
  c_fc: Initializer = TORCH_LINEAR_INIT
  c_proj: Initializer = TORCH_LINEAR_INIT


# PyTorch's defaults: open_clip's image tower and (our choice) the distillation decoders.
TORCH_BLOCK_INIT = BlockInit()


def text_block_init(width: int, layers: int) -> BlockInit:
  """open_clip's `TextTransformer.init_parameters`: normals whose residual-branch outputs
  shrink with depth (std width^-0.5 * (2 * layers)^-0.5)."""
  normal = nn.initializers.normal
  proj_std = width ** -0.5 * (2 * layers) ** -0.5
  return BlockInit(in_proj=normal(width ** -0.5), out_proj=normal(proj_std),
                   c_fc=normal((2 * width) ** -0.5), c_proj=normal(proj_std))


def layer_norm(name: str, dtype: Any) -> nn.LayerNorm:
  # Statistics in f32 even under bf16 compute: LN in low precision drifts.
  return nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class MultiHeadAttention(nn.Module):
  """Self-attention with one fused q/k/v projection, like torch's `in_proj_weight`."""
  num_heads: int
  dtype: Any = jnp.float32
  attention: str = "einsum"
  init: BlockInit = TORCH_BLOCK_INIT

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None,
               is_causal: bool = False) -> jax.Array:
    batch, length, width = x.shape
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
    head_dim = width // self.num_heads
    qkv = torch_linear(3 * width, "in_proj", self.dtype, self.init.in_proj, zero_bias=True)(x)
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
    return torch_linear(width, "out_proj", self.dtype, self.init.out_proj, zero_bias=True)(out)


class Mlp(nn.Module):
  hidden: int
  dtype: Any = jnp.float32
  init: BlockInit = TORCH_BLOCK_INIT

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    x = torch_linear(self.hidden, "c_fc", self.dtype, self.init.c_fc)(x)
    x = nn.gelu(x, approximate=False)
    return torch_linear(width, "c_proj", self.dtype, self.init.c_proj)(x)


class ResidualAttentionBlock(nn.Module):
  """x + attn(ln_1(x)); x + mlp(ln_2(x))."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention: str = "einsum"
  is_causal: bool = False
  init: BlockInit = TORCH_BLOCK_INIT

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    width = x.shape[-1]
    y = layer_norm("ln_1", self.dtype)(x).astype(self.dtype)
    y = MultiHeadAttention(self.num_heads, self.dtype, self.attention, self.init, name="attn")(
        y, mask=mask, is_causal=self.is_causal)
    x = x + y
    y = layer_norm("ln_2", self.dtype)(x).astype(self.dtype)
    y = Mlp(int(width * self.mlp_ratio), self.dtype, self.init, name="mlp")(y)
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
  init: BlockInit = TORCH_BLOCK_INIT

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    block_kwargs = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
                        attention=self.attention, is_causal=self.is_causal, init=self.init)
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
