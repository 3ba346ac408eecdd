"""MaskCLIP's losses as pure functions of arrays.

The contrastive loss sees the *global* batch: under jit with a sharded batch, XLA gathers the
embeddings across devices, so the logits are (global B, global B) on every mesh.
"""
import math
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import optax

MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(logit_scale) at 100.
LOG_MAX_LOGIT_SCALE = math.log(MAX_LOGIT_SCALE)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Rows of `x` scaled to unit L2 norm, in float32 (a norm below `eps` is taken as `eps`).

  The one jax copy: the losses use eps 1e-6, k-NN and the heat maps 1e-12 (as the numpy copy
  for host arrays, `ranking.l2_normalize`).
  """
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def contrastive_loss(image_embedding: jax.Array, text_embedding: jax.Array,
                     logit_scale: jax.Array) -> Dict[str, jax.Array]:
  """CLIP's symmetric InfoNCE: i2t and t2i cross-entropies (each a batch mean) and accuracies.

  `logit_scale` is the log of the temperature's inverse, as CLIP stores it.
  """
  scale = jnp.minimum(jnp.exp(logit_scale.astype(jnp.float32)), MAX_LOGIT_SCALE)
  image = l2_normalize(image_embedding)
  text = l2_normalize(text_embedding)
  logits = scale * image @ text.T
  labels = jnp.arange(logits.shape[0])
  loss_i2t = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  loss_t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
  return dict(
      loss_i2t=loss_i2t, loss_t2i=loss_t2i,
      acc_i2t=(jnp.argmax(logits, axis=1) == labels).mean(),
      acc_t2i=(jnp.argmax(logits, axis=0) == labels).mean(),
      logit_scale=scale)


def sigmoid_loss(image_embedding: jax.Array, text_embedding: jax.Array,
                 logit_scale: jax.Array, logit_bias: jax.Array) -> Dict[str, jax.Array]:
  """SigLIP's pairwise loss (Zhai et al. 2023): each (image, text) pair of the batch is a
  binary problem, positive on the diagonal; -sum(log sigmoid(+-logits)) / batch size.

  No softmax over the batch, so no row or column needs the whole batch's logits at once.
  """
  scale = jnp.minimum(jnp.exp(logit_scale.astype(jnp.float32)), MAX_LOGIT_SCALE)
  logits = (scale * l2_normalize(image_embedding) @ l2_normalize(text_embedding).T
            + logit_bias.astype(jnp.float32))
  batch = logits.shape[0]
  signs = 2.0 * jnp.eye(batch, dtype=jnp.float32) - 1.0
  labels = jnp.arange(batch)
  return dict(
      loss_sigmoid=-jax.nn.log_sigmoid(signs * logits).sum() / batch,
      acc_i2t=(jnp.argmax(logits, axis=1) == labels).mean(),
      acc_t2i=(jnp.argmax(logits, axis=0) == labels).mean(),
      logit_scale=scale, logit_bias=logit_bias.astype(jnp.float32))


def codeword_distill_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                          center: jax.Array, teacher_temp: float, student_temp: float
                          ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Cross-entropy of the student's codeword distribution against the teacher's.

  student_logits, teacher_logits: (..., K) at the same masked patches. The teacher side is
  centred (DINO/iBOT, against collapse onto one codeword), sharpened by `teacher_temp`, and
  carries no gradient. Returns the mean loss and the teacher logits' batch mean (for the
  running centre) and the perplexity of the batch-mean teacher distribution (K = uniform use,
  1 = collapse).
  """
  teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))
  teacher_probs = jax.nn.softmax((teacher_logits - center) / teacher_temp, axis=-1)
  student_log_probs = jax.nn.log_softmax(student_logits.astype(jnp.float32) / student_temp,
                                         axis=-1)
  loss = -(teacher_probs * student_log_probs).sum(axis=-1).mean()
  num_codewords = teacher_logits.shape[-1]
  mean_probs = teacher_probs.reshape(-1, num_codewords).mean(axis=0)
  entropy = -(mean_probs * jnp.log(jnp.maximum(mean_probs, 1e-12))).sum()
  return loss, dict(
      teacher_logits_mean=teacher_logits.reshape(-1, num_codewords).mean(axis=0),
      codeword_perplexity=jnp.exp(entropy))


def _smooth_l1(predicted: jax.Array, target: jax.Array) -> jax.Array:
  return optax.huber_loss(predicted, target, delta=1.0).mean()


def _cosine_distance(predicted: jax.Array, target: jax.Array) -> jax.Array:
  return (1.0 - (l2_normalize(predicted) * l2_normalize(target)).sum(-1)).mean()


# config.maskclip.feature_loss -> the regression loss (config_checks validates the name).
FEATURE_LOSSES = {"smooth_l1": _smooth_l1, "cosine": _cosine_distance}


def feature_distill_loss(predicted: jax.Array, target: jax.Array, kind: str = "smooth_l1"
                         ) -> jax.Array:
  """Regression to the teacher's features at the masked patches: smooth-L1 or cosine."""
  return FEATURE_LOSSES[kind](predicted.astype(jnp.float32),
                              jax.lax.stop_gradient(target.astype(jnp.float32)))


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """(B, H, W, C) -> (B, N, p*p*C), patches in raster order (the ViT's order)."""
  batch, height, width, channels = images.shape
  p = patch_size
  x = images.reshape(batch, height // p, p, width // p, p, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch, (height // p) * (width // p), p * p * channels)


def pixel_distill_loss(predicted: jax.Array, images: jax.Array, masked_idx: jax.Array,
                       patch_size: int) -> jax.Array:
  """MAE's target: per-patch normalised pixels at the masked patches, mean squared error."""
  target = jnp.take_along_axis(patchify(images.astype(jnp.float32), patch_size),
                               masked_idx[:, :, None], axis=1)
  mean = target.mean(axis=-1, keepdims=True)
  var = target.var(axis=-1, keepdims=True)
  target = (target - mean) / jnp.sqrt(var + 1e-6)
  return jnp.mean((predicted.astype(jnp.float32) - target) ** 2)


def mlm_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array
             ) -> Tuple[jax.Array, jax.Array]:
  """Cross-entropy over the vocabulary at the predicted positions, weighted (0 = ignore).

  Returns (loss, accuracy), both means over the positions with weight 1. The cross-entropy is
  logsumexp - the target's logit (optax's one-hot form builds and reads a one-hot (positions,
  49408) array), and a position counts as right when its target's logit is the largest (a tie
  counts too) rather than an argmax over the logits: with
  VocabularyHead, 69 -> 31 ms for the default's MLM head forward and backward on 2 CPU cores.
  """
  logits = logits.astype(jnp.float32)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  per_token = jax.nn.logsumexp(logits, axis=-1) - target_logit
  total = jnp.maximum(weights.sum(), 1.0)
  right = jax.lax.stop_gradient(target_logit >= logits.max(axis=-1))
  accuracy = (right * weights).sum() / total
  return (per_token * weights).sum() / total, accuracy
