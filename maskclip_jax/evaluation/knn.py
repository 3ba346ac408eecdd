"""Weighted k-NN classification on L2-normalised features, as DINO's k-NN evaluation.

Each test example takes its k most cosine-similar train examples; neighbour j votes for its
class with weight exp(sim_j / temperature); the classes ranked by total vote are the
prediction (ties go to the lower class index). Test examples go in batches, so memory is
bounded by batch_size x num_train similarities.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maskclip_jax.evaluation.context import EvalContext
from maskclip_jax.evaluation.linear_probe import check_labelled_features
from maskclip_jax.losses import l2_normalize


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "ranks"))
def _batch_hits(train, train_labels, test, test_labels, valid, temperature, *, k, num_classes,
                ranks):
  """(number of valid rows whose label is the top-1 vote, ... among the top-`ranks` votes)."""
  sims, neighbours = jax.lax.top_k(l2_normalize(test, eps=1e-12) @ train.T, k)
  # Scaled by the row's largest weight, which leaves the ranking as it is and keeps exp() in
  # float32's range for any temperature.
  weights = jnp.exp((sims - sims[:, :1]) / temperature)
  votes = jnp.einsum("bk,bkc->bc", weights,
                     jax.nn.one_hot(train_labels[neighbours], num_classes, dtype=weights.dtype))
  _, predictions = jax.lax.top_k(votes, ranks)
  hits = (predictions == test_labels[:, None]) & valid[:, None]
  return hits[:, 0].sum(), hits.any(axis=1).sum()


def knn_accuracy(train_features, train_labels, test_features, test_labels, *, k: int = 20,
                 temperature: float = 0.07, num_classes: int | None = None,
                 batch_size: int = 256) -> dict:
  """Top-1 (and top-5, with 5 classes or more) accuracy of the weighted k-NN vote.

  Args:
    train_features, test_features: (num_examples, dim) float arrays (normalised here).
    train_labels, test_labels: (num_examples,) integer class indices.
    k: neighbours per test example, at most the number of train examples.
    temperature: the vote weight is exp(cosine similarity / temperature).
    num_classes: the number of classes; default the largest label + 1.
    batch_size: test examples per step.

  Returns:
    {'top1': fraction, 'top5': fraction (with 5 classes or more)}.
  """
  train_x, train_y, test_x, test_y, num_classes = check_labelled_features(
      train_features, train_labels, test_features, test_labels, num_classes)
  if not 1 <= k <= len(train_y):
    raise ValueError(f"k={k} neighbours from {len(train_y)} train examples; pass "
                     f"1 <= k <= {len(train_y)}.")
  if not temperature > 0:
    raise ValueError(f"temperature={temperature}: pass a positive temperature, e.g. 0.07.")
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size}: pass a positive number of test examples.")
  ranks = min(5, num_classes)
  train = l2_normalize(jnp.asarray(train_x), eps=1e-12)  # f32 already: its cast changes nothing
  labels = jnp.asarray(train_y)
  batch_size = min(batch_size, len(test_y))
  top1 = top5 = 0
  for start in range(0, len(test_y), batch_size):
    # The last batch is padded to the same shape (one compilation) and its padding masked.
    rows = np.arange(start, start + batch_size)
    valid = rows < len(test_y)
    rows = np.minimum(rows, len(test_y) - 1)
    hits1, hits5 = _batch_hits(train, labels, test_x[rows], test_y[rows], valid,
                               jnp.float32(temperature), k=k, num_classes=num_classes,
                               ranks=ranks)
    top1 += int(hits1)
    top5 += int(hits5)
  out = {"top1": top1 / len(test_y)}
  if num_classes >= 5:
    out["top5"] = top5 / len(test_y)
  return out


def evaluate(context: EvalContext, entry: ml_collections.ConfigDict) -> dict[str, float]:
  """k-NN accuracy of `entry.data`'s examples among `entry.train_data`'s (config type 'knn')."""
  probe = context.probe_features(entry)
  metrics = knn_accuracy(probe.train_features, probe.train_labels, probe.test_features,
                         probe.test_labels, k=entry.k, temperature=entry.temperature,
                         num_classes=probe.num_classes)
  metrics.update(probe.counts())
  return metrics
