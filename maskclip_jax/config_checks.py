"""Checks a config before anything is built or compiled; errors name the field and the fix."""
from typing import Optional

import ml_collections

from maskclip_jax.data.config import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_DTYPES, SYNTHETIC_KINDS
from maskclip_jax.evaluation.config import check_evals
from maskclip_jax.losses import FEATURE_LOSSES
from maskclip_jax.masking import num_masked_patches
from maskclip_jax.models.maskclip import CONTRASTIVE_LOSSES, DISTILL_TARGETS, TEACHER_KINDS
from maskclip_jax.models.sizes import resolve_specs
from maskclip_jax.models.transformer import ATTENTION_KINDS, remat_policy
from maskclip_jax.models.vit import check_posemb_init
from maskclip_jax.sharding import mesh_shape

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def check_input(input_config: ml_collections.ConfigDict) -> None:
  """The `config.input` choices (the pipeline takes them as checked); training checks them in
  check_config, evaluation before it reads data."""
  if input_config.image_dtype not in IMAGE_DTYPES:
    raise ValueError(f"--config.input.image_dtype={input_config.image_dtype!r}: use 'float32' "
                     "(CLIP-normalised on the host) or 'uint8' (normalised on the device).")
  max_pixels = input_config.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)
  if max_pixels is None or isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or (
      max_pixels < 0):
    raise ValueError(f"--config.input.max_image_pixels={max_pixels!r}: use a pixel count "
                     f"(height x width; default {DEFAULT_MAX_IMAGE_PIXELS:_}, PIL's limit) or 0 "
                     "for no limit.")
  if input_config.synthetic_kind not in SYNTHETIC_KINDS:
    raise ValueError(f"--config.input.synthetic_kind={input_config.synthetic_kind!r} is "
                     f"unknown; use one of {SYNTHETIC_KINDS}.")


def check_evaluation_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """What maskclip-eval reads: the input section and the evaluators (check_config checks
  these too, for training)."""
  check_input(config.input)
  check_evals(config, num_devices)


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
  check_posemb_init(vision.posemb_init, vision.width)  # raises, naming the field
  if config.model.dtype not in COMPUTE_DTYPES:
    fail(f"--config.model.dtype={config.model.dtype!r} is unknown; use one of "
         f"{COMPUTE_DTYPES}.")
  check_input(config.input)
  method = config.maskclip
  if not 0 <= method.mask_ratio < 1:
    fail(f"--config.maskclip.mask_ratio={method.mask_ratio} must be in [0, 1).")
  if round(method.mask_ratio * vision.num_patches) >= vision.num_patches:
    fail(f"--config.maskclip.mask_ratio={method.mask_ratio} leaves no visible patch of "
         f"{vision.num_patches}; lower it.")
  if method.w_dist > 0 and num_masked_patches(vision.num_patches, method.mask_ratio) == 0:
    fail(f"--config.maskclip.mask_ratio={method.mask_ratio} masks none of {vision.num_patches} "
         f"patches, so the image distillation (w_dist={method.w_dist}) has nothing to predict; "
         "raise mask_ratio or set --config.maskclip.w_dist=0.")
  if not 0 < method.text_mask_ratio < 1:
    fail(f"--config.maskclip.text_mask_ratio={method.text_mask_ratio} must be in (0, 1).")
  for name in ("w_dist", "w_mlm"):
    if method[name] < 0:
      fail(f"--config.maskclip.{name}={method[name]} must be >= 0 (0 turns the branch off).")
  if method.distill_target not in DISTILL_TARGETS:
    fail(f"--config.maskclip.distill_target={method.distill_target!r} is unknown; use one of "
         f"{DISTILL_TARGETS}.")
  if method.contrastive_loss not in CONTRASTIVE_LOSSES:
    fail(f"--config.maskclip.contrastive_loss={method.contrastive_loss!r} is unknown; use one of "
         f"{CONTRASTIVE_LOSSES}.")
  if method.teacher not in TEACHER_KINDS:
    fail(f"--config.maskclip.teacher={method.teacher!r} is unknown; use one of {TEACHER_KINDS}.")
  if method.feature_loss not in FEATURE_LOSSES:
    fail(f"--config.maskclip.feature_loss={method.feature_loss!r} is unknown; use one of "
         f"{tuple(FEATURE_LOSSES)}.")
  if method.mlm_max_predictions is not None and method.mlm_max_predictions < 1:
    fail(f"--config.maskclip.mlm_max_predictions={method.mlm_max_predictions} must be >= 1 "
         "(or None).")
  for name in ("teacher_temp", "student_temp", "num_codewords"):
    if method[name] <= 0:
      fail(f"--config.maskclip.{name}={method[name]} must be positive.")
  if not 0 <= method.ema_momentum_start <= method.ema_momentum_end <= 1:
    fail(f"--config.maskclip.ema_momentum_start={method.ema_momentum_start} and "
         f"ema_momentum_end={method.ema_momentum_end} must satisfy 0 <= start <= end <= 1.")
  check_evals(config, num_devices)


def resolve_total_steps(config, train_examples: Optional[int]) -> None:
  """Sets `config.total_steps` from `total_epochs` and the data's size where epochs are given;
  checks that the warm-up ends before the run does."""
  if config.total_epochs:
    if not train_examples:
      raise ValueError(f"--config.total_epochs={config.total_epochs} needs the training data's "
                       f"size, which {config.input.train_data!r} does not give; set "
                       "--config.total_steps instead.")
    config.total_steps = max(1, int(config.total_epochs * train_examples / config.batch_size))
  elif not config.total_steps:
    raise ValueError("Set --config.total_steps or --config.total_epochs.")
  if config.optim.warmup_steps >= config.total_steps:
    raise ValueError(f"--config.optim.warmup_steps={config.optim.warmup_steps} is not below the "
                     f"{config.total_steps} training steps; lower it.")
