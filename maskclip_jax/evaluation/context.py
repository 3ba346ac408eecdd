"""What every evaluator gets: the model's encoders on the mesh, and the input settings.

An evaluator is a module with `evaluate(context: EvalContext, entry) -> dict[str, float]`, where
`entry` is its `config.evals.NAME` entry (see config.py). This module imports no evaluator, so
each of them (and the registry) can import it.
"""
import copy
import dataclasses
from typing import NamedTuple

import ml_collections
import numpy as np

from maskclip_jax import normalization
from maskclip_jax.evaluation import features as features_lib


class ProbeFeatures(NamedTuple):
  """Labelled features of a probe's train and test data (linear probe, k-NN)."""
  train_features: np.ndarray
  train_labels: np.ndarray
  test_features: np.ndarray
  test_labels: np.ndarray
  num_classes: int  # the largest label of either set + 1

  def counts(self) -> dict[str, float]:
    """The sizes every probe evaluator reports beside its accuracy (num_classes sets chance)."""
    return dict(num_train=float(len(self.train_labels)), num_test=float(len(self.test_labels)),
                num_classes=float(self.num_classes))


@dataclasses.dataclass
class EvalContext:
  encoders: features_lib.Encoders
  input_config: ml_collections.ConfigDict
  context_length: int

  def image_features(self, entry: ml_collections.ConfigDict, data: str,
                     keep=("label",)) -> dict[str, np.ndarray]:
    """Features of every example of `data` (an input-pipeline data string) with its labels,
    read with `entry`'s keys, batch size and image tower."""
    # Imported here: the k-NN and linear-probe modules import this one and stay tensorflow-free.
    from maskclip_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    input_config = copy.deepcopy(self.input_config)
    with input_config.unlocked():
      input_config.image_key = entry.image_key
      input_config.caption_key = entry.caption_key
      # TFDS classification sets name their label 'label'; the other sources need it set.
      input_config.label_key = entry.label_key or ("label" if data.startswith("tfds:") else "")
    iterator = pipeline.make_eval_iterator(input_config, global_batch_size=entry.batch_size,
                                           data=data, pad_forever=True)
    try:
      if "label" in keep and "label" not in iterator.element_spec:
        raise ValueError(f"Eval data {data!r} has no labels; set the evaluator's label_key to "
                         "the data's label field.")
      batches = (_normalized(b) for b in iterator)
      return self.encoders.image_features(batches, image_tower_name=entry.image_tower,
                                          keep=keep)
    finally:
      iterator.close()

  def probe_features(self, entry: ml_collections.ConfigDict) -> ProbeFeatures:
    """`entry.feature` of `entry.train_data` (its first `entry.max_train_examples`, 0: all)
    and of `entry.data`, with their labels."""
    train = _first(self.image_features(entry, entry.train_data), entry.max_train_examples)
    test = self.image_features(entry, entry.data)
    num_classes = int(max(train["label"].max(), test["label"].max())) + 1
    return ProbeFeatures(train[entry.feature], train["label"], test[entry.feature],
                         test["label"], num_classes)


def _normalized(batch):
  if batch["image"].dtype == np.uint8:  # input.image_dtype='uint8': CLIP-normalise here.
    batch = dict(batch, image=np.asarray(normalization.normalize(batch["image"])))
  return batch


def _first(features: dict, limit: int) -> dict:
  return {k: v[:limit] for k, v in features.items()} if limit else features
