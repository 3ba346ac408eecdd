"""Linear probe and k-NN on synthetic features: accuracy where it must be, NumPy references."""
import numpy as np
import pytest

from maskclip_jax.evaluation import eval_config, knn
from maskclip_jax.evaluation import linear_probe as linear_probe_lib
from maskclip_jax.evaluation.context import EvalContext
from maskclip_jax.evaluation.knn import knn_accuracy
from maskclip_jax.evaluation.linear_probe import DEFAULT_L2_GRID
from maskclip_jax.evaluation.linear_probe import linear_probe

NUM_CLASSES, DIM = 10, 32


def clusters(num, seed, spread=1.0):
  """Gaussian class clusters around fixed random centres: (features, labels)."""
  centres = np.random.default_rng(0).normal(size=(NUM_CLASSES, DIM))
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, num)
  return (centres[labels] + spread * rng.normal(size=(num, DIM))).astype(np.float32), labels


def test_linear_probe_separates_gaussian_clusters():
  train_x, train_y = clusters(1000, seed=1)
  test_x, test_y = clusters(1000, seed=2)
  out = linear_probe(train_x, train_y, test_x, test_y)
  assert out["top1"] > 0.95 and out["holdout_top1"] > 0.95
  assert out["top5"] >= out["top1"]
  assert out["l2"] in DEFAULT_L2_GRID


def test_linear_probe_on_random_labels_stays_near_chance():
  rng = np.random.default_rng(3)
  train_x, _ = clusters(1000, seed=4)
  test_x, _ = clusters(2000, seed=5)
  grid = (1e-4, 1e-2, 1.0)
  out = linear_probe(train_x, rng.integers(0, NUM_CLASSES, 1000), test_x,
                     rng.integers(0, NUM_CLASSES, 2000), l2_grid=grid)
  assert out["top1"] < 2 / NUM_CLASSES  # chance is 0.1; 2000 examples: sd 0.007
  assert out["l2"] in grid


def test_linear_probe_with_few_classes_has_no_top5():
  train_x, train_y = clusters(200, seed=6)
  test_x, test_y = clusters(50, seed=7)
  out = linear_probe(train_x, train_y % 3, test_x, test_y % 3, num_classes=3, l2_grid=(1e-3,),
                     max_steps=50)
  assert set(out) == {"top1", "l2", "holdout_top1"} and out["l2"] == 1e-3


def knn_reference(train_x, train_y, test_x, test_y, k, temperature, num_classes):
  """DINO's weighted k-NN vote, written plainly in NumPy -> (top-1, top-5) accuracy."""
  train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  test = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
  top1 = top5 = 0
  for features, label in zip(test, test_y):
    sims = train @ features
    neighbours = np.argsort(-sims, kind="stable")[:k]
    votes = np.zeros(num_classes)
    for j in neighbours:
      votes[train_y[j]] += np.exp(sims[j] / temperature)
    ranking = np.argsort(-votes, kind="stable")
    top1 += ranking[0] == label
    top5 += label in ranking[:5]
  return top1 / len(test_y), top5 / len(test_y)


@pytest.mark.parametrize("k, temperature, batch_size", [(20, 0.07, 16), (1, 0.07, 7),
                                                        (7, 0.5, 200)])
def test_knn_equals_a_numpy_reference(k, temperature, batch_size):
  # Spread-out clusters, so accuracy is neither 0 nor 1; 53 test examples: no batch divides it.
  train_x, train_y = clusters(300, seed=8, spread=3.0)
  test_x, test_y = clusters(53, seed=9, spread=3.0)
  out = knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=temperature,
                     num_classes=NUM_CLASSES, batch_size=batch_size)
  top1, top5 = knn_reference(train_x, train_y, test_x, test_y, k, temperature, NUM_CLASSES)
  assert 0.1 < top1 < 0.95
  assert out == {"top1": pytest.approx(top1, abs=1e-12), "top5": pytest.approx(top5, abs=1e-12)}


def test_knn_with_few_classes_has_no_top5():
  train_x, train_y = clusters(40, seed=10)
  test_x, test_y = clusters(9, seed=11)
  out = knn_accuracy(train_x, train_y % 2, test_x, test_y % 2, k=5, batch_size=4)
  assert set(out) == {"top1"}


@pytest.mark.parametrize("fn", [linear_probe, knn_accuracy])
def test_bad_inputs_say_what_to_pass(fn):
  x, y = clusters(20, seed=12)
  with pytest.raises(ValueError, match=r"train_features has shape \(20,\)"):
    fn(x[:, 0], y, x, y)
  with pytest.raises(ValueError, match=r"test_labels has shape \(19,\).*one integer label"):
    fn(x, y, x, y[:19])
  with pytest.raises(ValueError, match="train_labels has dtype float"):
    fn(x, y.astype(np.float32), x, y)
  with pytest.raises(ValueError, match="dimension 32 but test_features 16"):
    fn(x, y, x[:, :16], y)
  with pytest.raises(ValueError, match=r"outside \[0, num_classes=5\)"):
    fn(x, y, x, y, num_classes=5)
  with pytest.raises(ValueError, match=r"Labels range over \[-1, "):
    fn(x, np.where(y == 0, -1, y), x, y)
  with pytest.raises(ValueError, match="NaN or inf"):
    fn(np.full_like(x, np.nan), y, x, y)


def test_bad_settings_say_what_to_pass():
  x, y = clusters(20, seed=13)
  with pytest.raises(ValueError, match="l2_grid=()"):
    linear_probe(x, y, x, y, l2_grid=())
  with pytest.raises(ValueError, match="holdout_fraction=1.5"):
    linear_probe(x, y, x, y, holdout_fraction=1.5)
  with pytest.raises(ValueError, match="leave nothing to fit or nothing to hold out"):
    linear_probe(x[:3], np.array([0, 1, 2]), x, y % 3, holdout_fraction=0.1)
  with pytest.raises(ValueError, match=r"k=21 neighbours from 20 train examples"):
    knn_accuracy(x, y, x, y, k=21)
  with pytest.raises(ValueError, match="temperature=0"):
    knn_accuracy(x, y, x, y, temperature=0)


class _NoStop:
  def check_stop(self):
    pass


class _FixedFeatures(EvalContext):
  """An EvalContext whose data strings name fixed features: no model, no input pipeline."""

  def __init__(self, features_by_data):
    super().__init__(encoders=_NoStop(), input_config=None, context_length=0)
    self.features_by_data = features_by_data

  def image_features(self, entry, data, keep=("label",)):
    return self.features_by_data[data]


@pytest.mark.parametrize("evaluator, entry", [
    (knn.evaluate, eval_config("knn", data="test", train_data="train", k=5)),
    (linear_probe_lib.evaluate, eval_config("linear_probe", data="test", train_data="train",
                                            l2_grid=(1e-3,), max_steps=20)),
])
def test_probe_evaluators_report_the_class_count_of_their_labels(evaluator, entry):
  train_x, train_y = clusters(200, seed=14)
  test_x, test_y = clusters(30, seed=15)
  # Class 6 is only in the train set, the largest label of either set: 7 classes.
  train_y, test_y = train_y % 7, test_y % 6
  features = {"train": {"embedding": train_x, "class_token": train_x, "label": train_y},
              "test": {"embedding": test_x, "class_token": test_x, "label": test_y}}
  metrics = evaluator(_FixedFeatures(features), entry)
  assert metrics["num_classes"] == 7
  assert metrics["num_train"] == 200 and metrics["num_test"] == 30
  assert 0 <= metrics["top1"] <= 1 and "top5" in metrics
