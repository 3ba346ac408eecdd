"""Model FLOPs of one train step, counted from shapes, and MFU.

MFU (model FLOPs utilisation) = the model's FLOPs per step / step time / the devices' peak.
The numerator is counted here rather than taken from XLA's `compiled.cost_analysis()`: on GPU
the matrix products become library calls (cuBLAS, cuDNN) that XLA's count leaves out, which
made the logged MFU about 20x too low there. XLA's count stays as a cross-check on CPU, where
it sees every product (tests/test_flops.py holds the two within 5% at ViT-Ti/16 and ViT-S/16).

What is counted: every matrix product, as 2*M*N*K, with the passes make_loss_fn runs (see
`train_step_flops`). What is not: elementwise work (softmax, LayerNorm, GELU, the losses'
normalisations, the optimizer's update, the EMA), gathers and scatters (token embeddings,
mask indexing), and work that `remat` repeats in the backward pass: these are the model's
FLOPs (PaLM's MFU), not the hardware's. Attention is counted in full, T x T per head, as the
einsum path computes it: a causal kernel may skip half of the text tower's, and the fused
kernels compute padded lengths, but the model is the same.
"""
import dataclasses
import math
import os
from typing import Dict, Optional

from absl import logging
import jax

from maskclip_jax import masking
from maskclip_jax.models.transformer import remat_policy
from maskclip_jax.train_step import uses_teacher


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """FLOPs of one global train step by part, each forward and backward as it runs.

  image_tower        the contrastive image pass (full image; with contrastive_on_visible the
                     one pass on the visible patches that also feeds the decoder)
  text_tower         the clean caption pass
  student            the online image tower on the visible patches (its own pass)
  image_decoder      decoder_embed, blocks over every patch slot, decoder_pred
  image_head         the student's codeword head (or feature / pixel predictor) at the
                     masked patches
  teacher            the EMA teacher's forward: image tower on the full image, codeword head
                     at the masked patches
  masked_text_tower  the text tower on the masked caption (MLM)
  text_decoder       the MLM decoder's decoder_embed and blocks
  mlm_head           the vocabulary head at the prediction slots
  contrastive        the B x B logits
  """
  image_tower: float = 0.0
  text_tower: float = 0.0
  student: float = 0.0
  image_decoder: float = 0.0
  image_head: float = 0.0
  teacher: float = 0.0
  masked_text_tower: float = 0.0
  text_decoder: float = 0.0
  mlm_head: float = 0.0
  contrastive: float = 0.0

  @property
  def total(self) -> float:
    return float(sum(dataclasses.astuple(self)))

  def breakdown(self) -> Dict[str, float]:
    """{part: FLOPs} and 'total'."""
    return dict(dataclasses.asdict(self), total=self.total)

  def __str__(self):
    total = self.total
    parts = [f"{name} {value / 1e9:.4g} ({value / total:.1%})"
             for name, value in dataclasses.asdict(self).items() if value]
    return f"{total / 1e9:.4g} GFLOP: " + ", ".join(parts)


# Forward FLOPs per sample; the multipliers for the backward pass are applied in
# train_step_flops.
def dense_flops(tokens: int, d_in: int, d_out: int) -> int:
  return 2 * tokens * d_in * d_out


def block_flops(length: int, width: int, mlp_ratio: float) -> int:
  """One pre-LN block on `length` tokens: q/k/v, QK^T and AV, the output projection, MLP."""
  hidden = int(width * mlp_ratio)  # as transformer.ResidualAttentionBlock rounds it
  return (dense_flops(length, width, 3 * width)
          + 2 * (2 * length * length * width)  # QK^T and AV, all heads together
          + dense_flops(length, width, width)
          + dense_flops(length, width, hidden) + dense_flops(length, hidden, width))


def transformer_flops(length: int, width: int, layers: int, mlp_ratio: float) -> int:
  return layers * block_flops(length, width, mlp_ratio)


def train_step_flops(model, config, batch_size: int) -> StepFlops:
  """Model FLOPs of one train step on a global batch of `batch_size` (see the module doc).

  `model`: build_model(config.model, config.maskclip). The passes are those of train_step.make_loss_fn, with N
  patches, M = round(mask_ratio * N) masked, K = N - M visible, L caption tokens
  (config.input.context_length, else the model's) and P MLM slots (mlm_max_predictions, else
  masking.max_masked_tokens):
    the image tower on 1 + N tokens and its projection (with contrastive_on_visible one pass
      on 1 + K tokens, feeding the loss and the decoder: no separate student pass);
    the text tower on L tokens and its projection; the B x B x embed_dim logits;
    image branch: the student tower on 1 + K tokens, the decoder (decoder_embed on 1 + K,
      blocks on 1 + N, decoder_pred on M), the codeword head (or feature / pixel predictor)
      on M; the teacher's tower on 1 + N and its codeword head on M;
    text branch: the text tower again on the masked caption, the decoder (decoder_embed and
      blocks on L), the vocabulary head on P.
  The patch embedding (a p*p*3 -> width product per patch) runs on all N patches in every
  image pass: the visible ones are gathered after it.
  What trains costs 3x its forward (the backward pass takes two products per product: the
  input's and the weight's gradients), except the patch embedding, 2x (no gradient flows
  into the images); the teacher runs forward only, 1x. Outputs nobody reads (the projection
  of a pass whose embedding is unused) are left out, as XLA drops them.
  """
  cfg = config.maskclip
  v, t = model.vision, model.text_spec
  text_length = config.get("input", {}).get("context_length") or t.context_length
  n = v.num_patches
  masked = masking.num_masked_patches(n, cfg.mask_ratio)
  visible = n - masked
  embed = model.embed_dim
  patch_embed = dense_flops(n, v.patch_size ** 2 * 3, v.width)
  image_projection = dense_flops(1, v.width, embed)  # the class token's

  def vit(length, projection):
    """Trained ViT pass on `length` tokens (1 + patches): fwd + bwd."""
    return (2 * patch_embed + 3 * transformer_flops(length, v.width, v.layers, v.mlp_ratio)
            + (3 * image_projection if projection else 0))

  parts = {}
  if model.contrastive_on_visible:
    parts["image_tower"] = vit(1 + visible, projection=True)
  else:
    parts["image_tower"] = vit(1 + n, projection=True)
    if model.image_distill:
      parts["student"] = vit(1 + visible, projection=False)
  text_layers = transformer_flops(text_length, t.width, t.layers, t.mlp_ratio)
  parts["text_tower"] = 3 * (text_layers + dense_flops(1, t.width, embed))
  parts["contrastive"] = 3 * 2 * batch_size * embed  # per sample: a row of B x B x embed

  if model.image_distill:
    d = model.image_decoder_spec
    decoder = transformer_flops(1 + n, d.width, d.layers, d.mlp_ratio)
    if d.width != v.width:
      decoder += dense_flops(1 + visible, v.width, d.width)  # decoder_embed
    if model.distill_target == "codeword":
      if d.width != v.width:
        decoder += dense_flops(masked, d.width, v.width)  # decoder_pred
      head = dense_flops(masked, v.width, model.num_codewords)
    else:
      out = v.width if model.distill_target == "feature" else v.patch_size ** 2 * 3
      head = dense_flops(masked, d.width, out)  # image_predictor
    parts["image_decoder"] = 3 * decoder
    parts["image_head"] = 3 * head
    if uses_teacher(model):
      teacher = patch_embed + transformer_flops(1 + n, v.width, v.layers, v.mlp_ratio)
      if model.distill_target == "codeword":
        teacher += dense_flops(masked, v.width, model.num_codewords)
      parts["teacher"] = teacher

  if model.text_mlm:
    d = model.text_decoder_spec
    slots = (cfg.get("mlm_max_predictions")
             or masking.max_masked_tokens(text_length, cfg.text_mask_ratio))
    parts["masked_text_tower"] = 3 * text_layers
    decoder = transformer_flops(text_length, d.width, d.layers, d.mlp_ratio)
    if d.width != t.width:
      decoder += dense_flops(text_length, t.width, d.width)  # decoder_embed
    parts["text_decoder"] = 3 * decoder
    parts["mlm_head"] = 3 * dense_flops(slots, d.width, t.vocab_size)

  return StepFlops(**{name: float(batch_size * value) for name, value in parts.items()})


# Peak dense FLOP/s of one device, keyed by the prefix of `jax.Device.device_kind` (case
# insensitive, the longest matching prefix wins): bf16 / fp16 tensor-core rates without
# sparsity for accelerators, f32 FMA for CPU cores. The names are what devices report, e.g.
# 'NVIDIA H100 80GB HBM3', 'NVIDIA A100-SXM4-40GB', 'Tesla V100-SXM2-16GB', 'TPU v4',
# 'TPU v5 lite' (v5e), 'TPU v5' (v5p), 'TPU v6 lite' (v6e); the 'v5e' / 'v5p' / 'v6e'
# spellings are kept for tools that print those.
PEAK_FLOPS = {
    "Tesla V100": 125e12,
    "NVIDIA A100": 312e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H100 PCIe": 756e12,  # the PCIe card runs slower than SXM's 989
    "NVIDIA H200": 989e12,
    "NVIDIA GH200": 989e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,  # v5p reports 'TPU v5'; 'TPU v5 lite' (v5e) is matched first
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "cpu": 140e9 * (os.cpu_count() or 1),
}


def peak_flops_per_device(config, device_kind: Optional[str] = None) -> Optional[float]:
  """Peak FLOP/s of one device: `config.peak_flops_per_device` if set, else PEAK_FLOPS's
  entry for `device_kind` (default: the first device's); None for a device not listed."""
  if config.get("peak_flops_per_device"):
    return float(config.peak_flops_per_device)
  kind = (jax.devices()[0].device_kind if device_kind is None else device_kind).lower()
  matches = [name for name in PEAK_FLOPS if kind.startswith(name.lower())]
  return PEAK_FLOPS[max(matches, key=len)] if matches else None


def mfu(flops_per_step: float, seconds_per_step: float, num_devices: int,
        peak_per_device: float) -> float:
  """Model FLOPs utilisation: the step's FLOPs (global batch) over what `num_devices` devices
  at their peak could do in the step's time. The trainer logs this; so does the benchmark."""
  return flops_per_step / seconds_per_step / (num_devices * peak_per_device)


def xla_flops(compiled) -> float:
  """FLOPs XLA counts in a compiled computation (per device under SPMD), or nan if none.

  Incomplete on GPU (library calls are not counted); every product is counted on CPU, with
  the elementwise work too.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # some backends do not implement it
    return float("nan")
  # A dict in recent jax, a one-element list of dicts in older ones.
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


# On CPU XLA counts every product, and the elementwise work on top (a few % at ViT-Ti/16 and
# up): a gap past this means the analytic count has missed a pass.
XLA_CPU_TOLERANCE = 0.10
XLA_CHECK_MIN_FLOPS_PER_DEVICE = 1e10


def log_against_xla(step_flops: StepFlops, xla_per_device: float, num_devices: int,
                    config, backend: Optional[str] = None) -> float:
  """Logs the analytic count beside XLA's (per device x devices); returns XLA's / analytic
  (nan when XLA gives no count).

  On CPU, where XLA's count is complete, warns when the two differ by more than
  XLA_CPU_TOLERANCE, unless the step is one XLA cannot count like the model: scanned layers
  (XLA counts a loop's body once) or remat (XLA counts the recomputed forward).
  """
  total = step_flops.total
  xla_total = xla_per_device * num_devices
  ratio = xla_total / total if total and not math.isnan(xla_total) else float("nan")
  logging.info(
      "Train step: %.4g FLOPs analytic (the MFU numerator: %s); XLA counts %.4g (%.4g per "
      "device x %d), %.3fx the analytic. XLA's count misses the library calls on GPU and "
      "adds the elementwise work.", total, step_flops, xla_total, xla_per_device, num_devices,
      ratio)
  backend = backend or jax.default_backend()
  remat = remat_policy(config.model.get("remat")) != "none"
  # Below ~10 GFLOP per device (tiny test models) the elementwise work XLA adds (the
  # optimizer's update, repeated on every device's replicated parameters, most of all) is not
  # small beside the matrix products: the comparison says nothing there.
  real_size = total / num_devices >= XLA_CHECK_MIN_FLOPS_PER_DEVICE
  if (backend == "cpu" and real_size and not math.isnan(ratio)
      and abs(ratio - 1) > XLA_CPU_TOLERANCE and not config.model.get("scan_layers")
      and not remat):
    logging.warning(
        "XLA counts %.4g FLOPs per train step on CPU, %.0f%% %s the analytic count %.4g "
        "(maskclip_jax/flops.py), which MFU uses: more than the %.0f%% expected. In a tiny "
        "model the elementwise work XLA adds can explain it (the optimizer's update, which "
        "every device repeats on replicated parameters, most of all); in a real one the "
        "analytic count has likely missed or miscounted a pass.", xla_total, abs(ratio - 1) * 100,
        "above" if ratio > 1 else "below", total, XLA_CPU_TOLERANCE * 100)
  return ratio
