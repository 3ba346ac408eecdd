"""Checks a config before anything is built or compiled; errors name the field and the fix."""
import ml_collections

from maskclip_jax.data.config import SYNTHETIC_KINDS
from maskclip_jax.evaluation.config import check_evals
from maskclip_jax.masking import num_masked_patches
from maskclip_jax.models.maskclip import CONTRASTIVE_LOSSES, DISTILL_TARGETS, TEACHER_KINDS
from maskclip_jax.models.sizes import resolve_specs
from maskclip_jax.models.transformer import ATTENTION_KINDS, remat_policy
from maskclip_jax.sharding import mesh_shape

FEATURE_LOSSES = ("smooth_l1", "cosine")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ValueError for the first bad field found."""
  def fail(message):
    raise ValueError(message)

  if config.batch_size <= 0:
    fail(f"--config.batch_size={config.batch_size} must be positive (the global batch, a "
         f"multiple of the {num_devices} devices).")
  if config.batch_size % num_devices:
    fail(f"--config.batch_size={config.batch_size} is not divisible by {num_devices} devices; "
         f"use a multiple of {num_devices}.")
  mesh_shape(config.mesh, num_devices)  # raises, naming --config.mesh
  epochs = config.get("total_epochs")
  if epochs is not None:
    if epochs <= 0:
      fail(f"--config.total_epochs={epochs} must be positive.")
    if config.total_steps is not None:
      fail(f"--config.total_steps={config.total_steps} and --config.total_epochs={epochs} are "
           "both set; set one of them (the other to None).")
  elif config.total_steps is None or config.total_steps <= 0:
    fail(f"--config.total_steps={config.total_steps} must be positive (or set "
         "--config.total_epochs).")
  if not config.optim.lr > 0:  # also catches NaN
    fail(f"--config.optim.lr={config.optim.lr} must be positive: a negative rate climbs the "
         "loss (gradient ascent), zero trains nothing.")
  if config.optim.warmup_steps < 0 or (
      config.total_steps is not None and config.optim.warmup_steps >= config.total_steps):
    fail(f"--config.optim.warmup_steps={config.optim.warmup_steps} must be in "
         f"[0, total_steps={config.total_steps}).")
  _, vision, _, _, _ = resolve_specs(config.model)  # unknown size, missing fields.
  if config.model.attention not in ATTENTION_KINDS:
    fail(f"--config.model.attention={config.model.attention!r} is unknown; use one of "
         f"{ATTENTION_KINDS}.")
  remat_policy(config.model.remat)  # raises, naming --config.model.remat
  if config.model.dtype not in COMPUTE_DTYPES:
    fail(f"--config.model.dtype={config.model.dtype!r} is unknown; use one of "
         f"{COMPUTE_DTYPES}.")
  if config.input.synthetic_kind not in SYNTHETIC_KINDS:
    fail(f"--config.input.synthetic_kind={config.input.synthetic_kind!r} is unknown; use one "
         f"of {SYNTHETIC_KINDS}.")
  mc = config.maskclip
  if not 0 <= mc.mask_ratio < 1:
    fail(f"--config.maskclip.mask_ratio={mc.mask_ratio} must be in [0, 1).")
  if round(mc.mask_ratio * vision.num_patches) >= vision.num_patches:
    fail(f"--config.maskclip.mask_ratio={mc.mask_ratio} leaves no visible patch of "
         f"{vision.num_patches}; lower it.")
  if mc.w_dist > 0 and num_masked_patches(vision.num_patches, mc.mask_ratio) == 0:
    fail(f"--config.maskclip.mask_ratio={mc.mask_ratio} masks none of {vision.num_patches} "
         f"patches, so the image distillation (w_dist={mc.w_dist}) has nothing to predict; "
         "raise mask_ratio or set --config.maskclip.w_dist=0.")
  if not 0 < mc.text_mask_ratio < 1:
    fail(f"--config.maskclip.text_mask_ratio={mc.text_mask_ratio} must be in (0, 1).")
  for name in ("w_dist", "w_mlm"):
    if mc[name] < 0:
      fail(f"--config.maskclip.{name}={mc[name]} must be >= 0 (0 turns the branch off).")
  if mc.distill_target not in DISTILL_TARGETS:
    fail(f"--config.maskclip.distill_target={mc.distill_target!r} is unknown; use one of "
         f"{DISTILL_TARGETS}.")
  if mc.contrastive_loss not in CONTRASTIVE_LOSSES:
    fail(f"--config.maskclip.contrastive_loss={mc.contrastive_loss!r} is unknown; use one of "
         f"{CONTRASTIVE_LOSSES}.")
  if mc.teacher not in TEACHER_KINDS:
    fail(f"--config.maskclip.teacher={mc.teacher!r} is unknown; use one of {TEACHER_KINDS}.")
  if mc.feature_loss not in FEATURE_LOSSES:
    fail(f"--config.maskclip.feature_loss={mc.feature_loss!r} is unknown; use one of "
         f"{FEATURE_LOSSES}.")
  if mc.mlm_max_predictions is not None and mc.mlm_max_predictions < 1:
    fail(f"--config.maskclip.mlm_max_predictions={mc.mlm_max_predictions} must be >= 1 "
         "(or None).")
  for name in ("teacher_temp", "student_temp", "num_codewords"):
    if mc[name] <= 0:
      fail(f"--config.maskclip.{name}={mc[name]} must be positive.")
  if not 0 <= mc.ema_momentum_start <= mc.ema_momentum_end <= 1:
    fail(f"--config.maskclip.ema_momentum_start={mc.ema_momentum_start} and "
         f"ema_momentum_end={mc.ema_momentum_end} must satisfy 0 <= start <= end <= 1.")
  check_evals(config, num_devices)
