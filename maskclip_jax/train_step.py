"""The train state and one pure train step: all branches, the loss, AdamW, the EMA teacher.

The state is one pytree (a dict), checkpointed whole:
  step       int32 scalar
  params     the online model (see models/maskclip.py for its collections)
  teacher    EMA copy of params['visual'] (+ params['codeword_head']); empty without a teacher
  center     running mean of the teacher's codeword logits (K,), for centring
  opt_state  AdamW's state
  rng        the run's base key; step k draws from fold_in(rng, k)
"""
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from maskclip_jax import losses, masking, normalization
from maskclip_jax.models.maskclip import (MaskCLIP, TEACHER_COLLECTIONS, codeword_head,
                                          image_tower)
from maskclip_jax.optimizer import ema_momentum, learning_rate_schedule

State = Dict[str, Any]
Metrics = Dict[str, jax.Array]


def uses_teacher(model: MaskCLIP) -> bool:
  """The `pixel` target regresses pixels: no teacher."""
  return model.image_distill and model.distill_target in ("codeword", "feature")


def teacher_of(params) -> Dict[str, Any]:
  return {name: params[name] for name in TEACHER_COLLECTIONS if name in params}


def dummy_inputs(model: MaskCLIP, mask_ratio: float, text_mask_ratio: float, batch_size=1):
  """Arrays of the right shapes and dtypes for `model.init`."""
  v, t = model.vision, model.text_spec
  images = jnp.zeros((batch_size, v.image_size, v.image_size, 3), jnp.float32)
  text = jnp.zeros((batch_size, t.context_length), jnp.int32)
  patch_mask = masking.random_patch_mask(jax.random.PRNGKey(0), batch_size, v.num_patches,
                                         mask_ratio)
  token_mask = masking.random_token_mask(jax.random.PRNGKey(0), text, text_mask_ratio,
                                         t.vocab_size, max_predictions=1)
  return (images, text, patch_mask.visible_idx, patch_mask.masked_idx, token_mask.masked_text,
          token_mask.replaced, token_mask.valid, token_mask.positions)


def init_train_state(model: MaskCLIP, config: ml_collections.ConfigDict,
                     tx: optax.GradientTransformation, rng: jax.Array) -> State:
  """A fresh state; jit it with out_shardings to create it sharded (see sharding.py)."""
  init_rng, run_rng = jax.random.split(rng)
  params = model.init(init_rng, *dummy_inputs(model, config.maskclip.mask_ratio,
                                               config.maskclip.text_mask_ratio))["params"]
  teacher = teacher_of(params) if uses_teacher(model) else {}
  has_codewords = model.image_distill and model.distill_target == "codeword"
  return dict(
      step=jnp.zeros((), jnp.int32),
      params=params,
      teacher=jax.tree.map(jnp.copy, teacher),
      # Without codewords one unused zero: orbax refuses to save a zero-size array.
      center=jnp.zeros((model.num_codewords if has_codewords else 1,), jnp.float32),
      opt_state=tx.init(params),
      rng=run_rng,
  )


def image_distill_loss(model: MaskCLIP, config: ml_collections.ConfigDict, student_pred,
                       teacher_patch_features, masked_idx, teacher_params, center, images):
  """The image distillation term and its metrics, on the masked patches only.

  student_pred: the student's output at `masked_idx` (B, M, ...); teacher_patch_features:
  the teacher's ln_post features at every patch (B, N, D), gathered here at `masked_idx`.
  """
  cfg = config.maskclip
  aux = {}
  if model.distill_target == "pixel":
    return losses.pixel_distill_loss(student_pred, images, masked_idx,
                                     model.vision.patch_size), aux, center
  target = jnp.take_along_axis(teacher_patch_features, masked_idx[:, :, None], axis=1)
  if model.distill_target == "feature":
    return losses.feature_distill_loss(student_pred, target, cfg.feature_loss), aux, center
  teacher_logits = codeword_head(model).apply({"params": teacher_params["codeword_head"]},
                                              target)
  loss, aux = losses.codeword_distill_loss(student_pred, teacher_logits, center,
                                           cfg.teacher_temp, cfg.student_temp)
  new_center = (cfg.center_momentum * center
                + (1 - cfg.center_momentum) * aux.pop("teacher_logits_mean"))
  return loss, aux, new_center


def contrastive_terms(model: MaskCLIP, params, image_embedding, text_embedding
                      ) -> Tuple[jax.Array, Metrics]:
  """The contrastive loss the model is configured for, and its metrics."""
  if model.contrastive_loss == "sigmoid":
    metrics = losses.sigmoid_loss(image_embedding, text_embedding, params["logit_scale"],
                                  params["logit_bias"])
    return metrics["loss_sigmoid"], metrics
  metrics = losses.contrastive_loss(image_embedding, text_embedding, params["logit_scale"])
  return metrics["loss_i2t"] + metrics["loss_t2i"], metrics


def device_images(images: jax.Array) -> jax.Array:
  """The batch's images as the model takes them: uint8 batches (input.image_dtype='uint8')
  are CLIP-normalised here, on the device; float batches come normalised from the host."""
  if images.dtype == jnp.uint8:
    return normalization.normalize(images)
  return images


def teacher_patch_features(model: MaskCLIP, teacher, images: jax.Array) -> jax.Array:
  """The EMA teacher's ln_post features at every patch (B, N, D), from the full image.

  The train step runs this before `jax.value_and_grad`, so that nothing of the teacher's
  forward is part of the differentiated function (it has no backward pass).
  """
  teacher = jax.lax.stop_gradient(teacher)
  _, tokens = image_tower(model).apply({"params": teacher["visual"]}, images)
  return tokens[:, 1:]


def make_loss_fn(model: MaskCLIP, config: ml_collections.ConfigDict) -> Callable:
  """(params, teacher, center, batch, rng[, teacher_features]) -> (loss, (metrics, center)).

  `teacher_features`: teacher_patch_features of the batch, computed outside the gradient (the
  train step does); None computes them here (direct callers, tests).
  """
  cfg = config.maskclip
  # Patches are masked for the student (the image branch), or for the contrastive tower
  # itself when it runs on the visible patches only (FLIP).
  masks_patches = model.image_distill or model.contrastive_on_visible

  def loss_fn(params, teacher, center, batch, rng, teacher_features=None
              ) -> Tuple[jax.Array, Tuple[Metrics, Any]]:
    images, text = device_images(batch["image"]), batch["text"]
    variables = {"params": params}
    patch_rng, token_rng = jax.random.split(rng)
    student_pred = patch_mask = None
    if masks_patches:
      patch_mask = masking.random_patch_mask(patch_rng, images.shape[0],
                                             model.vision.num_patches, cfg.mask_ratio)
    if model.contrastive_on_visible:
      # One online pass on the visible patches feeds both the contrastive loss and the decoder.
      image_embedding, student_pred = model.apply(
          variables, images, patch_mask.visible_idx, patch_mask.masked_idx,
          method=MaskCLIP.encode_image_masked)
    else:
      image_embedding, _ = model.apply(variables, images, method=MaskCLIP.encode_image)
      if model.image_distill:
        student_pred = model.apply(variables, images, patch_mask.visible_idx,
                                   patch_mask.masked_idx, method=MaskCLIP.predict_masked_patches)
    text_embedding, _ = model.apply(variables, text, method=MaskCLIP.encode_text)
    loss, metrics = contrastive_terms(model, params, image_embedding, text_embedding)

    if model.image_distill:
      if uses_teacher(model) and teacher_features is None:
        teacher_features = teacher_patch_features(model, teacher, images)
      loss_dist, aux, center = image_distill_loss(
          model, config, student_pred, teacher_features, patch_mask.masked_idx,
          jax.lax.stop_gradient(teacher), center, images)
      loss = loss + cfg.w_dist * loss_dist
      metrics.update(aux, loss_dist=loss_dist)

    if model.text_mlm:
      token_mask = masking.random_token_mask(token_rng, text, cfg.text_mask_ratio,
                                             model.text_spec.vocab_size,
                                             cfg.mlm_max_predictions)
      mlm_logits = model.apply(variables, token_mask.masked_text, token_mask.replaced,
                               token_mask.valid, token_mask.positions,
                               method=MaskCLIP.predict_masked_tokens)
      loss_mlm, mlm_accuracy = losses.mlm_loss(mlm_logits, token_mask.targets,
                                               token_mask.weights)
      loss = loss + cfg.w_mlm * loss_mlm
      metrics.update(loss_mlm=loss_mlm, mlm_accuracy=mlm_accuracy)

    metrics["loss"] = loss
    return loss, (metrics, center)

  return loss_fn


def update_teacher(teacher, params, momentum: jax.Array, kind: str):
  """teacher <- m * teacher + (1 - m) * online (`ema`), or a copy of online (`online`)."""
  online = teacher_of(params)
  if kind == "online":
    return online
  return optax.incremental_update(new_tensors=online, old_tensors=teacher,
                                  step_size=1.0 - momentum)


def _is_schedule_state(node) -> bool:
  return isinstance(node, optax.ScaleByScheduleState)


def schedule_count(opt_state) -> jax.Array:
  """The update count of the optimizer's learning-rate schedule (it sets the rate applied)."""
  found = [n for n in jax.tree.leaves(opt_state, is_leaf=_is_schedule_state)
           if _is_schedule_state(n)]
  if len(found) != 1:
    raise ValueError(f"expected one learning-rate schedule in the optimizer state, found "
                     f"{len(found)}")
  return found[0].count


def make_train_step(model: MaskCLIP, config: ml_collections.ConfigDict,
                    tx: optax.GradientTransformation) -> Callable:
  """(state, batch, rng) -> (state, metrics). Pure: jit it (see sharding.compile_train_step).

  `rng` defaults to fold_in(state['rng'], state['step']), so a resumed run draws the same
  masks as an uninterrupted one.
  """
  loss_fn = make_loss_fn(model, config)
  lr_schedule = learning_rate_schedule(config)

  def train_step(state: State, batch: Dict[str, jax.Array], rng: Optional[jax.Array] = None
                 ) -> Tuple[State, Metrics]:
    step = state["step"]
    if rng is None:
      rng = jax.random.fold_in(state["rng"], step)
    teacher_features = None
    if uses_teacher(model):  # the teacher's forward, outside the differentiated function
      teacher_features = teacher_patch_features(model, state["teacher"],
                                                device_images(batch["image"]))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (metrics, center)), grads = grad_fn(state["params"], state["teacher"], state["center"],
                                            batch, rng, teacher_features)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    # CLIP keeps the temperature's log in [0, log 100] after every update.
    params = dict(params, logit_scale=jnp.clip(params["logit_scale"], 0.0,
                                               losses.LOG_MAX_LOGIT_SCALE))

    momentum = ema_momentum(step, config.total_steps, config.maskclip.ema_momentum_start,
                            config.maskclip.ema_momentum_end)
    teacher = state["teacher"]
    if uses_teacher(model):
      teacher = update_teacher(teacher, params, momentum, config.maskclip.teacher)

    grad_norm = optax.tree.norm(grads)
    # The rate this update applied: optax's own schedule count, which equals `step`.
    metrics.update(grad_norm=grad_norm, lr=lr_schedule(schedule_count(state["opt_state"])),
                   ema_momentum=momentum)
    new_state = dict(step=step + 1, params=params, teacher=teacher, center=center,
                     opt_state=opt_state, rng=state["rng"])
    if config.skip_nonfinite_steps:
      # Drop the update (params, Adam's moments and count, teacher, centre); the step and the
      # learning-rate schedule's count still move on, so the data, the EMA momentum and the
      # rate stay those of `step`.
      finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
      keep_old = lambda new, old: jnp.where(finite, new, old)
      kept = jax.tree.map(keep_old, new_state, state)
      kept["opt_state"] = jax.tree.map(
          lambda new, old: new if _is_schedule_state(new) else jax.tree.map(keep_old, new, old),
          opt_state, state["opt_state"], is_leaf=_is_schedule_state)
      new_state = dict(kept, step=step + 1)
      metrics["skipped_nonfinite"] = (~finite).astype(jnp.int32)
    return new_state, metrics

  return train_step
