"""Each loss against a plain NumPy reference on random inputs."""
import jax
import numpy as np
import optax

from maskclip_jax import losses


def log_softmax(x, axis=-1):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def test_contrastive_loss_matches_numpy():
  rng = np.random.default_rng(0)
  image, text = rng.normal(size=(2, 12, 16))
  for log_scale in (np.log(1 / 0.07), np.log(300.0)):  # the second is clamped at 100
    out = losses.contrastive_loss(image, text, np.float32(log_scale))
    scale = min(np.exp(log_scale), 100.0)
    i = image / np.linalg.norm(image, axis=1, keepdims=True)
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    logits = scale * i @ t.T
    expected_i2t = -np.mean(np.diag(log_softmax(logits, 1)))
    expected_t2i = -np.mean(np.diag(log_softmax(logits.T, 1)))
    np.testing.assert_allclose(out["loss_i2t"], expected_i2t, rtol=1e-5)
    np.testing.assert_allclose(out["loss_t2i"], expected_t2i, rtol=1e-5)
    np.testing.assert_allclose(out["acc_i2t"], np.mean(logits.argmax(1) == np.arange(12)))
    np.testing.assert_allclose(out["logit_scale"], scale, rtol=1e-6)


def test_codeword_distill_loss_matches_numpy_and_stops_teacher_gradient():
  rng = np.random.default_rng(1)
  student, teacher = rng.normal(size=(2, 3, 5, 10)).astype(np.float32)
  center = rng.normal(size=(10,)).astype(np.float32) * 0.1
  loss, aux = losses.codeword_distill_loss(student, teacher, center, 0.04, 0.1)
  t = np.exp(log_softmax((teacher - center) / 0.04))
  expected = -(t * log_softmax(student / 0.1)).sum(-1).mean()
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  mean_p = t.reshape(-1, 10).mean(0)
  np.testing.assert_allclose(aux["codeword_perplexity"],
                             np.exp(-(mean_p * np.log(mean_p)).sum()), rtol=1e-5)
  np.testing.assert_allclose(aux["teacher_logits_mean"], teacher.reshape(-1, 10).mean(0),
                             rtol=1e-5, atol=1e-6)
  grad_teacher = jax.grad(lambda t_: losses.codeword_distill_loss(student, t_, center, .04, .1)[0])(
      teacher)
  assert not np.asarray(grad_teacher).any()


def test_mlm_loss_ignores_zero_weight_positions():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(4, 6, 50)).astype(np.float32)
  targets = rng.integers(0, 50, size=(4, 6))
  weights = (rng.random((4, 6)) < 0.5).astype(np.float32)
  loss, accuracy = losses.mlm_loss(logits, targets, weights)
  per = -np.take_along_axis(log_softmax(logits), targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, (per * weights).sum() / weights.sum(), rtol=1e-5)
  np.testing.assert_allclose(accuracy,
                             ((logits.argmax(-1) == targets) * weights).sum() / weights.sum())
  # Garbage at ignored positions changes nothing.
  logits2 = np.where(weights[..., None] > 0, logits, 1e3 * rng.normal(size=logits.shape))
  np.testing.assert_allclose(losses.mlm_loss(logits2, targets, weights)[0], loss, rtol=1e-6)
  # The gradient is optax's one-hot cross-entropy's (softmax - one-hot, weighted).
  def optax_form(x):
    per_token = optax.softmax_cross_entropy_with_integer_labels(x, targets)
    return (per_token * weights).sum() / weights.sum()
  np.testing.assert_allclose(jax.grad(lambda x: losses.mlm_loss(x, targets, weights)[0])(logits),
                             jax.grad(optax_form)(logits), rtol=1e-5, atol=1e-7)


def test_feature_and_pixel_losses_match_numpy():
  rng = np.random.default_rng(3)
  pred, target = rng.normal(size=(2, 2, 5, 8)).astype(np.float32)
  diff = np.abs(pred - target)
  huber = np.where(diff < 1, 0.5 * diff ** 2, diff - 0.5).mean()
  np.testing.assert_allclose(losses.feature_distill_loss(pred, target, "smooth_l1"), huber,
                             rtol=1e-5)
  cos = (pred * target).sum(-1) / np.linalg.norm(pred, axis=-1) / np.linalg.norm(target, axis=-1)
  np.testing.assert_allclose(losses.feature_distill_loss(pred, target, "cosine"),
                             (1 - cos).mean(), rtol=1e-5)

  images = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  masked_idx = np.array([[0, 3], [1, 2]])
  patches = images.reshape(2, 2, 4, 2, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 4, 48)
  target = np.take_along_axis(patches, masked_idx[..., None], 1)
  target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, keepdims=True) + 1e-6)
  predicted = rng.normal(size=(2, 2, 48)).astype(np.float32)
  np.testing.assert_allclose(losses.pixel_distill_loss(predicted, images, masked_idx, 4),
                             ((predicted - target) ** 2).mean(), rtol=1e-5)
