"""Pre-LN transformer blocks shared by the image tower, the text tower and the decoders.

Parameter names mirror open_clip's `ResidualAttentionBlock` (`ln_1`, `attn/in_proj`,
`attn/out_proj`, `ln_2`, `mlp/c_fc`, `mlp/c_proj`) so that export is a renaming.
"""
import dataclasses
from typing import Any, Callable, Optional

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp

# open_clip's LayerNorm and nn.GELU (exact erf form) are the reference.
LN_EPS = 1e-5
# 'auto' resolves per backend (resolve_attention); 'cudnn' is the fused kernel on padded
# sequences; 'dot_product_attention' is jax.nn's XLA implementation.
ATTENTION_KINDS = ("auto", "einsum", "dot_product_attention", "cudnn")
# Fused attention pads sequences to a multiple of this (cuDNN flash attention's tile).
FUSED_SEQ_MULTIPLE = 64
# model.remat: 'none'; 'full' recomputes each block in the backward pass; 'dots' keeps the
# outputs of the matrix products with weights and recomputes the rest (attention's softmax,
# GELU, LayerNorm): most of full remat's memory saving for little of its extra compute.
REMAT_POLICIES = ("none", "full", "dots")
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


def f32_output_dot_general(lhs, rhs, dimension_numbers, precision=None,
                           preferred_element_type=None, **kwargs):
  """lax.dot_general on the inputs' dtype (bf16 under mixed precision) that accumulates and
  returns f32: for logits that a softmax with a small temperature reads (codeword logits / 0.04
  amplify bf16's rounding 25 times)."""
  del preferred_element_type
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=jnp.float32, **kwargs)


def torch_linear(features: int, name: str, dtype: Any = jnp.float32,
                 kernel_init: Initializer = TORCH_LINEAR_INIT,
                 zero_bias: bool = False, f32_output: bool = False
                 ) -> Callable[[jax.Array], jax.Array]:
  """A dense layer initialised like torch's nn.Linear (bias U(+-1/sqrt(fan_in)), or zeros).
  `f32_output`: the product runs in `dtype` but returns f32 (logit heads)."""
  def apply(x):
    return logits_dense(features, x.shape[-1], name, dtype, kernel_init, zero_bias,
                        f32_output)(x)
  return apply


def logits_dense(features: int, fan_in: int, name: Optional[str] = None,
                 dtype: Any = jnp.float32, kernel_init: Initializer = TORCH_LINEAR_INIT,
                 zero_bias: bool = False, f32_output: bool = True) -> nn.Dense:
  """torch_linear as a module (for heads built in `setup`); f32 output by default."""
  bias_init = nn.initializers.zeros if zero_bias else torch_linear_bias_init(fan_in)
  extra = dict(dot_general=f32_output_dot_general) if f32_output else {}
  return nn.Dense(features, dtype=dtype, kernel_init=kernel_init, bias_init=bias_init,
                  name=name, **extra)


@jax.custom_vjp
def add_bias_matvec_grad(y: jax.Array, bias: jax.Array) -> jax.Array:
  """y + bias whose backward pass sums the rows of the gradient as a matrix-vector product.

  The same values and gradients as `y + bias`. For a wide output (the MLM head's 49408 words)
  XLA's CPU backend reduces the (rows, 49408) gradient over its rows slowly: the head's forward
  and backward took 2x as long with its bias as without (59 vs 30 ms at 128 rows). A product
  with a vector of ones runs on the matrix library instead (29 ms). Narrow layers keep
  nn.Dense: there the custom gradient stops XLA fusing the bias, and the step got slower.
  """
  return y + bias


def _add_bias_forward(y, bias):
  return y + bias, None


def _add_bias_backward(_, grad):
  rows = grad.reshape(-1, grad.shape[-1])
  ones = jnp.ones((rows.shape[0],), rows.dtype)
  bias_grad = jax.lax.dot_general(ones, rows, (((0,), (0,)), ((), ())),
                                  preferred_element_type=jnp.float32)
  return grad, bias_grad.astype(grad.dtype)


add_bias_matvec_grad.defvjp(_add_bias_forward, _add_bias_backward)


class VocabularyHead(nn.Module):
  """(..., D) -> (..., vocab) f32 logits: `torch_linear(vocab, f32_output=True)` (the same
  `kernel` and `bias` parameters, initialised alike) for very wide outputs.

  The rows are flattened to one matrix product and the bias goes through
  `add_bias_matvec_grad`; with `losses.mlm_loss`, the head and its loss run forward and
  backward in 31 ms instead of 69 (the default's 64 captions x 2 slots, 2 CPU cores), and the
  default's MaskCLIP step in 174 ms instead of 214.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", TORCH_LINEAR_INIT, (fan_in, self.features), jnp.float32)
    bias = self.param("bias", torch_linear_bias_init(fan_in), (self.features,), jnp.float32)
    rows = x.reshape(-1, fan_in).astype(self.dtype)
    logits = f32_output_dot_general(rows, kernel.astype(self.dtype), (((1,), (0,)), ((), ())))
    logits = add_bias_matvec_grad(logits, bias)
    return logits.reshape(*x.shape[:-1], self.features)


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


def resolve_attention(kind: str, dtype: Any, head_dim: int,
                      backend: Optional[str] = None) -> str:
  """The attention implementation `kind` stands for: 'auto' picks per backend and dtype.

  'auto' is cuDNN's fused flash attention on a GPU in bf16/fp16 (its kernels take no f32, and
  want head dims that are multiples of 8 up to 128), and the einsum path elsewhere: on CPU it
  measured faster than jax.nn.dot_product_attention's XLA path, and on TPU the two are the
  same computation.
  """
  if kind not in ATTENTION_KINDS:
    raise ValueError(f"config.model.attention={kind!r} is unknown; use one of "
                     f"{ATTENTION_KINDS}.")
  if kind != "auto":
    return kind
  backend = backend or jax.default_backend()
  low_precision = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  if backend in ("gpu", "cuda") and low_precision and head_dim % 8 == 0 and head_dim <= 128:
    return "cudnn"
  return "einsum"


def einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array] = None,
                     is_causal: bool = False, kv_lengths: Optional[jax.Array] = None
                     ) -> jax.Array:
  """Attention spelled out: q, k, v (B, T, N, H); logits and softmax in f32.

  `mask` (broadcastable to (B, N, T, S), True = attend), `is_causal` and `kv_lengths` (B,)
  (keys at or past the length are padding) combine.
  """
  length, keys, head_dim = q.shape[1], k.shape[1], q.shape[-1]
  # Heads next to the batch before the products: batched matrix products whose batch
  # dimensions lead run 2.5x faster forward on XLA's CPU backend than the same einsum on
  # (B, T, N, H) (ViT-S/16 shapes, bench notes in the README).
  q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # (B, N, T, H)
  logits = jnp.einsum("bnth,bnsh->bnts", q, k) * (head_dim ** -0.5)
  logits = logits.astype(jnp.float32)
  allowed = mask
  if is_causal:
    causal = jnp.tril(jnp.ones((length, keys), dtype=bool))[None, None]
    allowed = causal if allowed is None else (allowed & causal)
  if kv_lengths is not None:
    real = (jnp.arange(keys)[None, :] < kv_lengths[:, None])[:, None, None, :]
    allowed = real if allowed is None else (allowed & real)
  if allowed is not None:
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.swapaxes(jnp.einsum("bnts,bnsh->bnth", weights, v), 1, 2)


def padded_length(length: int, multiple: int = FUSED_SEQ_MULTIPLE) -> int:
  return -(-length // multiple) * multiple


def padded_fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, is_causal: bool = False,
                           kv_lengths: Optional[jax.Array] = None,
                           implementation: Optional[str] = "cudnn",
                           multiple: int = FUSED_SEQ_MULTIPLE) -> jax.Array:
  """jax.nn.dot_product_attention on sequences padded to a multiple of `multiple`.

  cuDNN's flash kernels reject the sequence lengths and the (B, 1, 1, S) padding bias that
  MaskCLIP's towers have (197 image tokens, 50 student tokens, 77 text tokens with padding).
  Padding to a multiple of 64 (the kernels' tile) and handing the real lengths as
  `query_seq_lengths` / `key_value_seq_lengths` (cuDNN's padding mask, no bias tensor) fits
  every tower: padded keys are never attended to, padded query rows are sliced off.
  `implementation='xla'` runs the same padding on any backend (the tests' reference).
  """
  batch, length = q.shape[:2]
  target = padded_length(length, multiple)
  kv_lengths = (jnp.full((batch,), length, jnp.int32) if kv_lengths is None
                else kv_lengths.astype(jnp.int32))
  query_lengths = jnp.full((batch,), length, jnp.int32)
  if target != length:
    pad = ((0, 0), (0, target - length), (0, 0), (0, 0))
    q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
  out = jax.nn.dot_product_attention(q, k, v, is_causal=is_causal,
                                     query_seq_lengths=query_lengths,
                                     key_value_seq_lengths=kv_lengths,
                                     implementation=implementation)
  return out[:, :length]


def fused_or_einsum_attention(q, k, v, is_causal=False, kv_lengths=None) -> jax.Array:
  """'auto' on a GPU: the padded cuDNN kernel, or the einsum path where jax refuses the kernel
  while tracing (an old cuDNN, a GPU or head size it does not serve), with one warning."""
  try:
    return padded_fused_attention(q, k, v, is_causal, kv_lengths, implementation="cudnn")
  except (NotImplementedError, ValueError, RuntimeError) as e:
    if not _FALLBACK_WARNED:
      _FALLBACK_WARNED.append(True)
      logging.warning("attention='auto': cuDNN's fused attention is not available for q %s "
                      "(%s: %s); using the einsum attention.", q.shape, type(e).__name__, e)
    return einsum_attention(q, k, v, is_causal=is_causal, kv_lengths=kv_lengths)


_FALLBACK_WARNED = []


class MultiHeadAttention(nn.Module):
  """Self-attention with one fused q/k/v projection, like torch's `in_proj_weight`."""
  num_heads: int
  dtype: Any = jnp.float32
  attention: str = "einsum"
  block_init: BlockInit = TORCH_BLOCK_INIT  # not `init`: that would hide Module.init

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None,
               is_causal: bool = False, kv_lengths: Optional[jax.Array] = None) -> jax.Array:
    """x (B, T, D) -> (B, T, D). `kv_lengths` (B,): each sequence's real length (the keys past
    it are padding); `mask` (B|1, N|1, T, T) bool, the einsum path only (analysis tools)."""
    batch, length, width = x.shape
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
    head_dim = width // self.num_heads
    qkv = torch_linear(3 * width, "in_proj", self.dtype, self.block_init.in_proj, zero_bias=True)(x)
    qkv = qkv.reshape(batch, length, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, N, H)

    kind = resolve_attention(self.attention, self.dtype, head_dim)
    if kind == "einsum" or mask is not None:
      out = einsum_attention(q, k, v, mask, is_causal, kv_lengths)
    elif kind == "cudnn" and self.attention == "auto":
      out = fused_or_einsum_attention(q, k, v, is_causal, kv_lengths)
    elif kind == "cudnn":
      out = padded_fused_attention(q, k, v, is_causal, kv_lengths, implementation="cudnn")
    else:  # 'dot_product_attention': jax.nn's XLA implementation, unpadded.
      out = jax.nn.dot_product_attention(
          q, k, v, is_causal=is_causal, implementation="xla",
          key_value_seq_lengths=None if kv_lengths is None else kv_lengths.astype(jnp.int32))
    out = out.reshape(batch, length, width)
    return torch_linear(width, "out_proj", self.dtype, self.block_init.out_proj,
                        zero_bias=True)(out)


class Mlp(nn.Module):
  hidden: int
  dtype: Any = jnp.float32
  block_init: BlockInit = TORCH_BLOCK_INIT  # not `init`: that would hide Module.init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    x = torch_linear(self.hidden, "c_fc", self.dtype, self.block_init.c_fc)(x)
    x = nn.gelu(x, approximate=False)
    return torch_linear(width, "c_proj", self.dtype, self.block_init.c_proj)(x)


class ResidualAttentionBlock(nn.Module):
  """x + attn(ln_1(x)); x + mlp(ln_2(x)).

  Mixed precision like torch AMP: the residual stream `x` stays in its own dtype (f32, the
  towers' input), LayerNorm runs in f32, the branches' matrix products in `dtype`.
  """
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention: str = "einsum"
  is_causal: bool = False
  block_init: BlockInit = TORCH_BLOCK_INIT  # not `init`: that would hide Module.init

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None,
               kv_lengths: Optional[jax.Array] = None) -> jax.Array:
    width = x.shape[-1]
    y = layer_norm("ln_1", self.dtype)(x).astype(self.dtype)
    y = MultiHeadAttention(self.num_heads, self.dtype, self.attention, self.block_init,
                           name="attn")(y, mask=mask, is_causal=self.is_causal,
                                        kv_lengths=kv_lengths)
    x = x + y.astype(x.dtype)
    y = layer_norm("ln_2", self.dtype)(x).astype(self.dtype)
    y = Mlp(int(width * self.mlp_ratio), self.dtype, self.block_init, name="mlp")(y)
    return x + y.astype(x.dtype)


def remat_policy(remat) -> Optional[str]:
  """config.model.remat -> one of REMAT_POLICIES (True / False: configs before the policies)."""
  if remat is True:
    return "full"
  if remat in (False, None):
    return "none"
  if remat not in REMAT_POLICIES:
    raise ValueError(f"config.model.remat={remat!r} is unknown; use one of {REMAT_POLICIES}.")
  return remat


def _checkpointed(module_cls, remat, **kwargs):
  """module_cls under nn.remat with the policy `remat` names (module_cls itself for 'none')."""
  policy = remat_policy(remat)
  if policy == "none":
    return module_cls
  saveable = (jax.checkpoint_policies.dots_with_no_batch_dims_saveable if policy == "dots"
              else None)
  return nn.remat(module_cls, policy=saveable, **kwargs)


class _ScanBody(nn.Module):
  """Adapts a block to nn.scan's (carry, xs) -> (carry, ys) calling convention."""
  block_kwargs: dict

  @nn.compact
  def __call__(self, x, kv_lengths):
    return ResidualAttentionBlock(**self.block_kwargs, name="block")(
        x, kv_lengths=kv_lengths), None


class Transformer(nn.Module):
  """A stack of `layers` blocks, unrolled (`resblocks_{i}`) or scanned (`resblocks`, stacked).

  `scan` compiles one block instead of `layers` copies (faster compiles for deep models);
  `remat` (REMAT_POLICIES) recomputes block activations in the backward pass (less memory,
  more compute).
  """
  layers: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention: str = "einsum"
  is_causal: bool = False
  scan: bool = False
  remat: Any = "none"
  block_init: BlockInit = TORCH_BLOCK_INIT  # not `init`: that would hide Module.init

  @nn.compact
  def __call__(self, x: jax.Array, kv_lengths: Optional[jax.Array] = None) -> jax.Array:
    """x (B, T, D) -> (B, T, D); `kv_lengths` (B,): real lengths, later tokens are padding."""
    block_kwargs = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
                        attention=self.attention, is_causal=self.is_causal,
                        block_init=self.block_init)
    if self.scan:
      body = _checkpointed(_ScanBody, self.remat, prevent_cse=False)
      stack = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=nn.broadcast, length=self.layers)
      x, _ = stack(block_kwargs, name="resblocks")(x, kv_lengths)
      return x
    block_cls = _checkpointed(ResidualAttentionBlock, self.remat)
    for i in range(self.layers):
      x = block_cls(**block_kwargs, name=f"resblocks_{i}")(x, None, kv_lengths)
    return x
