"""The analytic FLOP count behind MFU: against XLA's CPU count, by hand, and in the trainer."""
import logging

import jax
import jax.numpy as jnp
import pytest

from conftest import tiny_train_config
from maskclip_jax import flops, sharding, train, train_step as train_step_lib
from maskclip_jax.config_defaults import apply_variants, base_config
from maskclip_jax.models.maskclip import build_model
from maskclip_jax.optimizer import make_optimizer

# CPU codegen at its cheapest: the HLO that XLA counts is the same, the compile 1.5x faster.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def xla_cpu_flops(config) -> float:
  """XLA's count for the compiled train step, as bench/train_step.py builds it, on one CPU
  device (so the count is the whole global step, not one device's share; and complete, which
  it is not on GPU)."""
  model = build_model(config.model, config.maskclip)
  tx = make_optimizer(config)
  mesh = sharding.make_mesh(config.mesh, devices=jax.devices("cpu")[:1])
  init_fn = lambda: train_step_lib.init_train_state(model, config, tx, jax.random.PRNGKey(0))
  state = jax.eval_shape(init_fn)  # shapes are all compiling needs
  shardings = sharding.tree_shardings(state, mesh, config.sharding_rules)
  step = sharding.compile_train_step(train_step_lib.make_train_step(model, config, tx), mesh,
                                     shardings)
  size, length = model.vision.image_size, config.input.context_length
  batch = dict(image=jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jnp.float32),
               text=jax.ShapeDtypeStruct((config.batch_size, length), jnp.int32))
  return flops.xla_flops(step.lower(state, batch).compile(compiler_options=FAST_COMPILE))


@pytest.mark.parametrize("size", ["ViT-Ti/16", "ViT-S/16"])
@pytest.mark.parametrize("variant", ["clip", "maskclip"])
def test_analytic_count_matches_xla_on_cpu(size, variant):
  config = apply_variants(base_config(), [variant])
  config.model.size = size
  # 4 images: the products (~12 GFLOP an image at ViT-Ti/16) still outweigh the optimizer's
  # elementwise update (~20 FLOPs a parameter, 0.6 GFLOP at ViT-Ti/16) 80 to 1.
  config.batch_size = 4
  analytic = flops.train_step_flops(build_model(config.model, config.maskclip), config, config.batch_size)
  xla = xla_cpu_flops(config)
  # XLA counts every product and the elementwise work on top: it is the larger, by a few %.
  excess = xla / analytic.total - 1
  assert -0.005 < excess < 0.05, (
      f"{size} {variant}: XLA {xla / 1e9:.3f} GFLOP vs analytic {analytic.total / 1e9:.3f} "
      f"({excess:+.2%}); analytic {analytic}")


def tiny_model_config(variant="maskclip", **maskclip):
  """1-layer towers small enough to count by hand: 32 px images of 16 px patches (N = 4),
  width 8; 6-token captions over 100 ids, width 8; decoders of width 4 (so decoder_embed and
  decoder_pred exist); K = 16 codewords; embed_dim 4; half the patches and tokens masked."""
  config = apply_variants(base_config(), [variant])
  config.model.size = None
  config.model.embed_dim = 4
  config.model.vision.update(image_size=32, patch_size=16, width=8, layers=1, heads=2)
  config.model.text.update(context_length=6, vocab_size=100, width=8, layers=1, heads=2)
  config.model.image_decoder.update(width=4, heads=1, layers=1)
  config.model.text_decoder.update(width=4, heads=1, layers=1)
  config.input.context_length = 6
  config.maskclip.update(num_codewords=16, mask_ratio=0.5, text_mask_ratio=0.5, **maskclip)
  return config


# Per image/caption, by hand. A block on T tokens of width W (MLP 4W) is
#   q/k/v 2*T*W*3W + QK^T and AV 2 * 2*T*T*W + out 2*T*W*W + MLP 2 * 2*T*W*4W
#   = 24*T*W^2 + 4*T^2*W.
def hand_block(t, w):
  return 24 * t * w * w + 4 * t * t * w


PATCH_EMBED = 2 * 4 * (16 * 16 * 3) * 8   # 4 patches, 768 -> 8
HAND = dict(
    # patch embedding fwd + weight grad (2x), block on 1 + 4 tokens (3x), projection 8 -> 4
    image_tower=2 * PATCH_EMBED + 3 * hand_block(5, 8) + 3 * (2 * 8 * 4),
    # the student: 2 visible patches + class token; its projection is unused
    student=2 * PATCH_EMBED + 3 * hand_block(3, 8),
    text_tower=3 * (hand_block(6, 8) + 2 * 8 * 4),
    # decoder_embed 8 -> 4 on 1 + 2 tokens, a block on 1 + 4 slots, decoder_pred 4 -> 8 on 2
    image_decoder=3 * (2 * 3 * 8 * 4 + hand_block(5, 4) + 2 * 2 * 4 * 8),
    image_head=3 * (2 * 2 * 8 * 16),  # codeword head 8 -> 16 on the 2 masked patches
    # forward only: patch embedding, block on 1 + 4 tokens, codeword head on 2 patches
    teacher=PATCH_EMBED + hand_block(5, 8) + 2 * 2 * 8 * 16,
    masked_text_tower=3 * hand_block(6, 8),  # no projection: the MLM reads the tokens
    text_decoder=3 * (2 * 6 * 8 * 4 + hand_block(6, 4)),  # decoder_embed 8 -> 4, a block
    mlm_head=3 * (2 * 2 * 4 * 100),  # ceil(0.5 * 4 word tokens) = 2 slots, 4 -> 100 ids
    contrastive=3 * (2 * 2 * 4),  # a row of the 2 x 2 x 4 logits, fwd + 2 grads
)


def test_tiny_maskclip_counted_by_hand():
  config = tiny_model_config()
  counted = flops.train_step_flops(build_model(config.model, config.maskclip), config, batch_size=2)
  expected = {name: 2.0 * value for name, value in HAND.items()}
  assert counted.breakdown() == dict(expected, total=sum(expected.values()))


def test_tiny_variants_counted_by_hand():
  # CLIP: no branches.
  config = tiny_model_config("clip")
  counted = flops.train_step_flops(build_model(config.model, config.maskclip), config, 1).breakdown()
  assert {k: v for k, v in counted.items() if v} == dict(
      image_tower=HAND["image_tower"], text_tower=HAND["text_tower"],
      contrastive=3 * 2 * 4, total=HAND["image_tower"] + HAND["text_tower"] + 3 * 2 * 4)
  # FLIP-style: one online pass on the visible patches, with the projection; no student.
  config = tiny_model_config("efficient")
  counted = flops.train_step_flops(build_model(config.model, config.maskclip), config, 1)
  assert counted.image_tower == 2 * PATCH_EMBED + 3 * hand_block(3, 8) + 3 * (2 * 8 * 4)
  assert counted.student == 0 and counted.teacher == HAND["teacher"]
  # Pixel targets: no teacher, no decoder_pred; the predictor maps 4 -> 16*16*3 on 2 patches.
  config = tiny_model_config("pixel")
  counted = flops.train_step_flops(build_model(config.model, config.maskclip), config, 1)
  assert counted.teacher == 0 and counted.mlm_head == 0
  assert counted.image_decoder == 3 * (2 * 3 * 8 * 4 + hand_block(5, 4))
  assert counted.image_head == 3 * (2 * 2 * 4 * 768)
  # The MLM head runs on mlm_max_predictions slots when it is set.
  config = tiny_model_config(mlm_max_predictions=1)
  assert flops.train_step_flops(build_model(config.model, config.maskclip), config, 1).mlm_head == 3 * 2 * 4 * 100


def test_mfu_formula():
  # 4e12 FLOPs in 0.5 s on 4 devices of 4e12 FLOP/s: half their peak.
  assert flops.mfu(4e12, 0.5, 4, 4e12) == pytest.approx(0.5)


@pytest.mark.parametrize("kind, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-40GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12), ("Tesla V100-SXM2-16GB", 125e12),
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12), ("cpu", flops.PEAK_FLOPS["cpu"]), ("Quadro RTX 6000", None),
])
def test_peak_flops_by_device_kind(kind, peak):
  assert flops.peak_flops_per_device(base_config(), kind) == peak


def test_peak_flops_override_and_this_device():
  config = base_config()
  assert flops.peak_flops_per_device(config) == flops.peak_flops_per_device(
      config, jax.devices()[0].device_kind)  # the default: this process's devices
  config.peak_flops_per_device = 1e12
  assert flops.peak_flops_per_device(config, "NVIDIA H100 80GB HBM3") == 1e12


def test_xla_flops_reads_either_cost_analysis_form():
  class Compiled:
    def __init__(self, cost):
      self.cost = cost

    def cost_analysis(self):
      if isinstance(self.cost, Exception):
        raise self.cost
      return self.cost

  assert flops.xla_flops(Compiled({"flops": 5.0})) == 5.0
  assert flops.xla_flops(Compiled([{"flops": 6.0}])) == 6.0
  for cost in (None, {}, NotImplementedError()):
    assert flops.xla_flops(Compiled(cost)) != flops.xla_flops(Compiled(cost))  # nan


def test_cpu_warning_when_xla_disagrees(caplog):
  config = base_config()
  counted = flops.StepFlops(image_tower=1e12)
  with caplog.at_level(logging.INFO):
    assert flops.log_against_xla(counted, 13e10, 8, config, backend="cpu") == 1.04
  assert "XLA counts 1.04e+12 (1.3e+11 per device x 8)" in caplog.text
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
  with caplog.at_level(logging.INFO):
    flops.log_against_xla(counted, 20e10, 8, config, backend="cpu")
  assert "60% above the analytic count 1e+12" in caplog.text
  caplog.clear()
  # GPU: XLA's count is incomplete; scanned layers: XLA counts the loop body once; a tiny
  # model: the elementwise work is not small beside its matrix products.
  flops.log_against_xla(counted, 2e10, 8, config, backend="gpu")
  flops.log_against_xla(flops.StepFlops(image_tower=1e9), 2e9, 8, config, backend="cpu")
  config.model.scan_layers = True
  flops.log_against_xla(counted, 2e10, 8, config, backend="cpu")
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_trainer_logs_mfu_of_the_analytic_count(tfds_dir, tmp_path, caplog):
  config = tiny_train_config(tfds_dir, total_steps=3, log_every_steps=3,
                             peak_flops_per_device=1e9)
  with caplog.at_level(logging.INFO):
    logged = train.train_and_evaluate(config, str(tmp_path))
  total = flops.train_step_flops(build_model(config.model, config.maskclip), config, config.batch_size).total
  assert logged["mfu"] == pytest.approx(
      flops.mfu(total, logged["step_time"], jax.device_count(), 1e9), rel=1e-9)
  assert f"Train step: {total:.4g} FLOPs analytic" in caplog.text  # the XLA cross-check
