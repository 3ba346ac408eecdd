"""Fused attention on padded sequences, the mixed-precision policy, and remat policies."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_batch
from maskclip_jax import train_step as train_step_lib
from maskclip_jax.config_checks import check_config
from maskclip_jax.models import transformer
from maskclip_jax.models.maskclip import MaskCLIP, build_model
from maskclip_jax.optimizer import make_optimizer

# (name, sequence length, heads, head dim, causal, with per-sample lengths): MaskCLIP's towers
# at ViT-B/16 sizes: the image tower and the image decoder (1 + 196), the student (1 + 49),
# the causal text tower (77), the bidirectional text decoder over each caption's real tokens.
SHAPES = [
    ("image_tower", 197, 2, 64, False, False),
    ("student", 50, 2, 64, False, False),
    ("image_decoder", 197, 2, 32, False, False),
    ("text_tower", 77, 2, 64, True, False),
    ("text_decoder", 77, 2, 64, False, True),
]


def _qkv(length, heads, head_dim, dtype, seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(2, length, heads, head_dim)), dtype) for _ in range(3)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name,length,heads,head_dim,causal,with_lengths", SHAPES,
                         ids=[s[0] for s in SHAPES])
def test_padded_fused_attention_equals_einsum(name, length, heads, head_dim, causal,
                                              with_lengths, dtype):
  del name
  q, k, v = _qkv(length, heads, head_dim, dtype)
  lengths = jnp.array([length - 9, 12], jnp.int32) if with_lengths else None
  reference = transformer.einsum_attention(*(x.astype(jnp.float32) for x in (q, k, v)),
                                           is_causal=causal, kv_lengths=lengths)
  # The GPU kernel's padding and masking, run through jax.nn's XLA implementation here.
  padded = transformer.padded_fused_attention(q, k, v, is_causal=causal, kv_lengths=lengths,
                                              implementation="xla")
  unpadded = transformer.einsum_attention(q, k, v, is_causal=causal, kv_lengths=lengths)
  assert padded.shape == q.shape and padded.dtype == q.dtype
  atol = 1e-5 if dtype == "float32" else 3e-2
  np.testing.assert_allclose(np.asarray(padded, np.float32), reference, atol=atol)
  np.testing.assert_allclose(np.asarray(unpadded, np.float32), reference, atol=atol)
  if with_lengths:  # the padding really is masked: changing it changes nothing
    k2 = k.at[1, 12:].set(100.0)
    again = transformer.padded_fused_attention(q, k2, v, kv_lengths=lengths,
                                               implementation="xla")
    np.testing.assert_array_equal(np.asarray(again), np.asarray(padded))


def test_padding_reaches_the_kernels_tile():
  assert [transformer.padded_length(n) for n in (50, 64, 77, 197)] == [64, 64, 128, 256]


def test_auto_attention_per_backend_and_dtype():
  resolve = transformer.resolve_attention
  assert resolve("auto", jnp.bfloat16, 64, backend="gpu") == "cudnn"
  assert resolve("auto", jnp.float16, 64, backend="cuda") == "cudnn"
  assert resolve("auto", jnp.float32, 64, backend="gpu") == "einsum"  # no f32 flash kernel
  assert resolve("auto", jnp.bfloat16, 60, backend="gpu") == "einsum"  # head dim % 8
  assert resolve("auto", jnp.bfloat16, 64, backend="cpu") == "einsum"
  assert resolve("auto", jnp.bfloat16, 64, backend="tpu") == "einsum"
  assert resolve("einsum", jnp.bfloat16, 64, backend="gpu") == "einsum"
  with pytest.raises(ValueError, match="config.model.attention='flash'"):
    resolve("flash", jnp.float32, 64)


def test_config_checks_name_the_compute_fields(tiny_config):
  for field, value in (("attention", "flash"), ("remat", "some"), ("dtype", "float8")):
    config = tiny_config()
    config.model[field] = value
    with pytest.raises(ValueError, match=f"config.model.{field}"):
      check_config(config, 1)


def test_mixed_precision_keeps_the_stream_and_every_logit_in_f32(tiny_config):
  """bf16 matrix products; f32 parameters, residual stream, LayerNorm and logits."""
  config = tiny_config()
  config.model.dtype = "bfloat16"
  model = build_model(config.model, config.maskclip)
  tx = make_optimizer(config)
  state = train_step_lib.init_train_state(model, config, tx, jax.random.PRNGKey(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state["params"]))
  batch = random_batch(0, batch_size=2)
  variables = {"params": state["params"]}
  images = jnp.asarray(batch["image"])
  visible = jnp.tile(jnp.arange(4, dtype=jnp.int32), (2, 1))
  masked = jnp.tile(jnp.arange(4, 16, dtype=jnp.int32), (2, 1))

  seen = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__":
      if isinstance(module, transformer.ResidualAttentionBlock):
        seen.setdefault("stream", set()).add(out.dtype)
      elif isinstance(module, transformer.MultiHeadAttention):
        seen.setdefault("attention_out", set()).add(out.dtype)
    return out

  import flax.linen as nn
  with nn.intercept_methods(record):
    embedding, tokens = model.apply(variables, images, method=MaskCLIP.encode_image)
    codewords = model.apply(variables, images, visible, masked,
                            method=MaskCLIP.predict_masked_patches)
    mlm = model.apply(variables, jnp.asarray(batch["text"]),
                      jnp.zeros(batch["text"].shape, bool),
                      jnp.asarray(batch["text"] > 0), jnp.zeros((2, 3), jnp.int32),
                      method=MaskCLIP.predict_masked_tokens)
  assert seen["stream"] == {jnp.dtype(jnp.float32)}       # the residual stream
  assert seen["attention_out"] == {jnp.dtype(jnp.bfloat16)}  # matrix products in bf16
  assert embedding.dtype == tokens.dtype == jnp.float32
  assert codewords.dtype == jnp.float32 and mlm.dtype == jnp.float32  # logits


def _train(config, steps):
  model = build_model(config.model, config.maskclip)
  tx = make_optimizer(config)
  state = train_step_lib.init_train_state(model, config, tx, jax.random.PRNGKey(0))
  step = jax.jit(train_step_lib.make_train_step(model, config, tx))
  history = []
  batch = random_batch(0)  # one batch: the losses fall, so drift would show
  for _ in range(steps):
    state, metrics = step(state, batch)
    history.append({k: float(v) for k, v in metrics.items()})
  return history


def test_bf16_train_step_stays_finite_and_close_to_f32(tiny_config):
  f32 = _train(tiny_config(), 20)
  config = tiny_config()
  config.model.dtype = "bfloat16"
  bf16 = _train(config, 20)
  for name in ("loss", "loss_dist", "loss_mlm", "grad_norm"):
    ours = np.array([m[name] for m in bf16])
    reference = np.array([m[name] for m in f32])
    assert np.isfinite(ours).all(), name
    np.testing.assert_allclose(ours, reference, rtol=0.05, atol=0.02, err_msg=name)
  assert f32[-1]["loss"] < f32[0]["loss"] and bf16[-1]["loss"] < bf16[0]["loss"]


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_policies_change_memory_not_gradients(tiny_config, policy):
  config = tiny_config()
  model = build_model(config.model, config.maskclip)
  tx = make_optimizer(config)
  state = train_step_lib.init_train_state(model, config, tx, jax.random.PRNGKey(0))
  batch = random_batch(0)
  rng = jax.random.PRNGKey(1)

  def grads_of(config):
    loss_fn = train_step_lib.make_loss_fn(build_model(config.model, config.maskclip), config)
    return jax.jit(jax.grad(lambda p: loss_fn(p, state["teacher"], state["center"], batch,
                                              rng)[0]))(state["params"])

  reference = grads_of(config)
  config = tiny_config()
  config.model.remat = policy
  remat = grads_of(config)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
               remat, reference)


def test_teacher_forward_is_outside_the_gradient(tiny_config):
  """The step computes the teacher's features itself and hands them to the differentiated loss,
  so none of the teacher's activations can be kept for a backward pass."""
  import inspect
  config = tiny_config()
  model = build_model(config.model, config.maskclip)
  tx = make_optimizer(config)
  state = train_step_lib.init_train_state(model, config, tx, jax.random.PRNGKey(0))
  step = train_step_lib.make_train_step(model, config, tx)
  inside_loss = []
  original = train_step_lib.teacher_patch_features

  def spy(*args, **kwargs):
    inside_loss.append(any(frame.function == "loss_fn" for frame in inspect.stack()))
    return original(*args, **kwargs)

  train_step_lib.teacher_patch_features = spy
  try:
    jax.make_jaxpr(step)(state, random_batch(0))
  finally:
    train_step_lib.teacher_patch_features = original
  assert inside_loss == [False]  # once per step, by the step, never inside the loss


def test_remat_in_a_scanned_stack_shrinks_the_step_memory():
  """What `remat` is for: fewer bytes of temporaries kept for the backward pass (XLA's buffer
  assignment, compile only). Measured in a scanned stack, where XLA keeps the recomputation
  where remat puts it (the trainer warns about unrolled stacks)."""
  x = jnp.ones((8, 65, 64))
  temps = {}
  for policy in transformer.REMAT_POLICIES:
    stack = transformer.Transformer(6, 2, remat=policy, scan=True)
    params = stack.init(jax.random.PRNGKey(0), x[:1])
    grad = jax.jit(jax.grad(lambda p, x: (stack.apply(p, x) ** 2).sum()))
    temps[policy] = grad.lower(params, x).compile().memory_analysis().temp_size_in_bytes
  assert temps["full"] < temps["dots"] < temps["none"], temps


def test_auto_falls_back_to_einsum_where_the_fused_kernel_is_refused(monkeypatch):
  """On a GPU 'auto' asks for cuDNN; where jax refuses the kernel while tracing (here: no cuDNN
  on this CPU), the einsum path computes the same attention instead of the run failing."""
  monkeypatch.setattr(transformer, "resolve_attention",
                      lambda kind, dtype, head_dim, backend=None:
                      "cudnn" if kind == "auto" else kind)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 77, 64)), jnp.float32)
  lengths = jnp.array([77, 20], jnp.int32)

  def attend(kind):
    layer = transformer.MultiHeadAttention(2, attention=kind)
    params = layer.init(jax.random.PRNGKey(0), x)
    return layer.apply(params, x, is_causal=True, kv_lengths=lengths)

  with pytest.raises(Exception):
    attend("cudnn")  # asked for by name, the kernel's refusal is the user's to see
  np.testing.assert_allclose(attend("auto"), attend("einsum"), atol=1e-6)
