"""Host-side (numpy) ranking of embeddings: L2 normalisation, and top-k accuracy over score
matrices, one count for the evaluators (zero-shot, linear probe, retrieval) and for the test
that checks the same figure on the exported open_clip model (tests/open_clip_zeroshot.py).

The jax L2 normalisation (the losses', k-NN's and the heat maps') is `losses.l2_normalize`.
"""
import numpy as np


def l2_normalize(x: np.ndarray) -> np.ndarray:
  """Rows of `x` scaled to unit L2 norm, in float64 (a norm below 1e-12 is taken as 1e-12)."""
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
  """The fraction of rows whose label is among the k highest scores (a tie counts against the
  true class)."""
  true = scores[np.arange(len(labels)), labels]
  return float(np.mean((scores > true[:, None]).sum(axis=1) < k))
