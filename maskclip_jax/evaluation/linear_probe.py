"""Linear probe: multinomial logistic regression on frozen features, L2 chosen on a held-out split.

As CLIP's evaluation (Radford et al. 2021, appendix A.3): an L2 sweep over a log grid, each
value fitted on part of the train set and scored on the rest, then a refit on the whole train
set with the best value, scored on the test set. Features are standardised with the fitting
set's mean and standard deviation. The optimiser is full-batch L-BFGS (optax, zoom line
search) in one jitted loop; the data pass inside it goes in chunks of `chunk_size` examples,
so memory is bounded by the chunk's logits, not by examples x classes.

`l2` is the weight of `0.5 * ||W||^2` added to the mean cross-entropy (the bias is not
penalised): scikit-learn's `C` is `1 / (l2 * num_train)`.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from maskclip_jax.evaluation.context import EvalContext
from maskclip_jax.ranking import topk_accuracy

DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# L-BFGS stops at this gradient norm; it also stops once a step no longer lowers the loss
# (float32's precision floor), or after max_steps.
_GRAD_TOL = 1e-6


def check_labelled_features(train_features, train_labels, test_features, test_labels,
                            num_classes=None):
  """Validated (train_x f32, train_y i32, test_x f32, test_y i32, num_classes).

  `num_classes` defaults to the largest label + 1; every label must be in [0, num_classes).
  """
  arrays = []
  for name, features, labels in (("train", train_features, train_labels),
                                 ("test", test_features, test_labels)):
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2 or not len(features):
      raise ValueError(f"{name}_features has shape {features.shape}; pass a non-empty "
                       "(num_examples, dim) array.")
    if labels.shape != (len(features),):
      raise ValueError(f"{name}_labels has shape {labels.shape}, but {name}_features holds "
                       f"{len(features)} examples; pass one integer label an example, "
                       f"shape ({len(features)},).")
    if not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"{name}_labels has dtype {labels.dtype}; pass integer class indices.")
    if not np.isfinite(features).all():
      raise ValueError(f"{name}_features holds NaN or inf values; check the feature "
                       "extraction (e.g. a diverged checkpoint).")
    arrays.append((features.astype(np.float32), labels.astype(np.int64)))
  (train_x, train_y), (test_x, test_y) = arrays
  if train_x.shape[1] != test_x.shape[1]:
    raise ValueError(f"train_features have dimension {train_x.shape[1]} but test_features "
                     f"{test_x.shape[1]}; extract both with the same model and feature.")
  largest = int(max(train_y.max(), test_y.max()))
  if num_classes is None:
    num_classes = largest + 1
  smallest = int(min(train_y.min(), test_y.min()))
  if smallest < 0 or largest >= num_classes:
    raise ValueError(f"Labels range over [{smallest}, {largest}], outside [0, num_classes="
                     f"{num_classes}); pass num_classes larger than every label, and no "
                     "negative (missing) labels.")
  return train_x, train_y.astype(np.int32), test_x, test_y.astype(np.int32), int(num_classes)


def _standardizer(x: np.ndarray):
  """x' -> x' standardised with the mean and deviation of `x` (constant dimensions: scale 1)."""
  mean = x.mean(axis=0)
  std = x.std(axis=0)
  scale = np.where(std > 0, std, 1.0).astype(np.float32)
  return lambda other: (other - mean) / scale


def _holdout_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """A boolean mask of held-out rows: `fraction` of each class, chosen at random."""
  order = np.random.default_rng(seed).permutation(len(labels))
  holdout = np.zeros(len(labels), bool)
  for label in np.unique(labels):
    members = order[labels[order] == label]
    holdout[members[:int(round(fraction * len(members)))]] = True
  return holdout


@functools.partial(jax.jit, static_argnames=("max_steps", "chunk_size"))
def _fit(x, y, weights, l2, init, *, max_steps, chunk_size):
  """L-BFGS on the weighted mean cross-entropy + 0.5 * l2 * ||W||^2 -> {'w', 'b'}."""
  num, dim = x.shape
  num_chunks = -(-num // chunk_size)
  pad = num_chunks * chunk_size - num
  chunks = (jnp.pad(x, ((0, pad), (0, 0))).reshape(num_chunks, chunk_size, dim),
            jnp.pad(y, (0, pad)).reshape(num_chunks, chunk_size),
            jnp.pad(weights, (0, pad)).reshape(num_chunks, chunk_size))
  total_weight = weights.sum()

  # Rematerialised, so the backward pass keeps one chunk's logits at a time.
  @jax.checkpoint
  def chunk_loss(params, chunk):
    xc, yc, wc = chunk
    logits = xc @ params["w"] + params["b"]
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, yc[:, None], -1)[:, 0]
    return jnp.sum(wc * nll)

  def loss_fn(params):
    total, _ = jax.lax.scan(lambda acc, chunk: (acc + chunk_loss(params, chunk), None),
                            jnp.zeros((), x.dtype), chunks)
    return total / total_weight + 0.5 * l2 * jnp.sum(params["w"] ** 2)

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss_fn)

  def step(carry):
    params, state, _ = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                   value_fn=loss_fn)
    decrease = value - optax.tree.get(state, "value")
    return optax.apply_updates(params, updates), state, decrease

  def keep_going(carry):
    _, state, decrease = carry
    count = optax.tree.get(state, "count")
    grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
    return (count == 0) | ((count < max_steps) & (grad_norm > _GRAD_TOL) & (decrease > 0))

  params, _, _ = jax.lax.while_loop(keep_going, step,
                                    (init, solver.init(init), jnp.array(jnp.inf, x.dtype)))
  return params


def _scores(x: np.ndarray, params) -> np.ndarray:
  return x @ np.asarray(params["w"]) + np.asarray(params["b"])


def linear_probe(train_features, train_labels, test_features, test_labels, *,
                 num_classes: int | None = None, l2_grid=DEFAULT_L2_GRID,
                 holdout_fraction: float = 0.2, seed: int = 0, max_steps: int = 1000,
                 chunk_size: int = 65536) -> dict:
  """Fits a logistic regression probe on train features and scores it on test features.

  Args:
    train_features, test_features: (num_examples, dim) float arrays.
    train_labels, test_labels: (num_examples,) integer class indices.
    num_classes: the number of classes; default the largest label + 1.
    l2_grid: L2 weights to sweep (see the module doc for the scale).
    holdout_fraction: the part of each train class held out to choose the L2 weight.
    seed: picks the held-out examples.
    max_steps: L-BFGS iterations at most, per fit.
    chunk_size: examples per chunk of the data pass (bounds memory; not a minibatch).

  Returns:
    {'top1', 'top5' (with 5 classes or more): test accuracy of the refitted probe,
     'l2': the chosen grid value, 'holdout_top1': its accuracy on the held-out split}.
  """
  train_x, train_y, test_x, test_y, num_classes = check_labelled_features(
      train_features, train_labels, test_features, test_labels, num_classes)
  grid = sorted({float(v) for v in np.asarray(l2_grid, dtype=np.float64).ravel()}, reverse=True)
  if not grid or not all(np.isfinite(v) and v >= 0 for v in grid):
    raise ValueError(f"l2_grid={l2_grid!r}: pass one or more finite L2 weights >= 0, e.g. "
                     f"{DEFAULT_L2_GRID}.")
  if not 0 < holdout_fraction < 1:
    raise ValueError(f"holdout_fraction={holdout_fraction}: pass a fraction in (0, 1), e.g. 0.2.")
  if max_steps < 1 or chunk_size < 1:
    raise ValueError(f"max_steps={max_steps} and chunk_size={chunk_size} must be positive.")
  if num_classes < 2:
    raise ValueError(f"num_classes={num_classes}: a probe needs at least 2 classes.")
  holdout = _holdout_split(train_y, holdout_fraction, seed)
  if holdout.all() or not holdout.any():
    raise ValueError(f"{len(train_y)} train examples with holdout_fraction={holdout_fraction} "
                     "leave nothing to fit or nothing to hold out; pass more train examples "
                     "(at least a few per class) or another fraction.")

  fit = functools.partial(_fit, max_steps=int(max_steps),
                          chunk_size=int(min(chunk_size, len(train_y))))
  params = {"w": jnp.zeros((train_x.shape[1], num_classes), jnp.float32),
            "b": jnp.zeros((num_classes,), jnp.float32)}
  # The sweep fits on the non-held-out rows (held-out rows weigh 0: one compiled shape serves
  # the sweep and the refit), from the most regularised value down, each fit starting from
  # the previous solution.
  standardize = _standardizer(train_x[~holdout])
  sweep_x = standardize(train_x)
  fit_weights = (~holdout).astype(np.float32)
  best = None  # (holdout top-1, l2, params)
  for l2 in grid:
    params = fit(sweep_x, train_y, fit_weights, jnp.float32(l2), params)
    top1 = topk_accuracy(_scores(sweep_x[holdout], params), train_y[holdout], 1)
    if best is None or top1 > best[0]:  # Ties keep the larger (earlier) L2.
      best = (top1, l2, params)
  holdout_top1, l2, params = best

  standardize = _standardizer(train_x)
  params = fit(standardize(train_x), train_y, np.ones(len(train_y), np.float32),
               jnp.float32(l2), params)
  scores = _scores(standardize(test_x), params)
  out = {"top1": topk_accuracy(scores, test_y, 1), "l2": l2, "holdout_top1": holdout_top1}
  if num_classes >= 5:
    out["top5"] = topk_accuracy(scores, test_y, 5)
  return out


def evaluate(context: EvalContext, entry: ml_collections.ConfigDict) -> dict[str, float]:
  """A probe fitted on `entry.train_data`, scored on `entry.data` (config type 'linear_probe')."""
  probe = context.probe_features(entry)
  context.encoders.check_stop()  # the fit runs as one compiled loop: stop before it, if asked
  metrics = linear_probe(probe.train_features, probe.train_labels, probe.test_features,
                         probe.test_labels, num_classes=probe.num_classes,
                         l2_grid=tuple(entry.l2_grid), holdout_fraction=entry.holdout_fraction,
                         max_steps=entry.max_steps)
  metrics.update(probe.counts())
  return metrics
