"""Top-k accuracy over host score matrices: one count for the evaluators (zero-shot, linear
probe) and for export's check of the same figure on the exported open_clip model."""
import numpy as np


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
  """The fraction of rows whose label is among the k highest scores (a tie counts against the
  true class)."""
  true = scores[np.arange(len(labels)), labels]
  return float(np.mean((scores > true[:, None]).sum(axis=1) < k))
