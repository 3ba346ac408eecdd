"""The evaluator registry: `config.evals` entries run on a model's params, metrics written out.

    evaluations = Evaluations(config, model, mesh, workdir, writer)
    for name in evaluations.due(step, total_steps): ...
    metrics = evaluations.run(step, params, teacher)   # {name: {metric: value}}

Every process runs every evaluator (each reads its own share of the data); only process 0
writes TensorBoard scalars (`eval/NAME/METRIC`) and `W/evals/NAME_stepN.json`.
"""
import copy
import dataclasses
import json
import os
import time
from typing import Callable, Mapping, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from maskclip_jax import normalization
from maskclip_jax.data import pipeline
from maskclip_jax.evaluation import features as features_lib
from maskclip_jax.evaluation import retrieval, zeroshot
from maskclip_jax.evaluation.config import check_evals


@dataclasses.dataclass
class EvalContext:
  encoders: features_lib.Encoders
  input_config: ml_collections.ConfigDict
  context_length: int

  def image_features(self, ec, data: str, keep=("label",)) -> dict[str, np.ndarray]:
    """Features of every example of `data` (an input-pipeline data string) with its labels."""
    input_config = copy.deepcopy(self.input_config)
    with input_config.unlocked():
      input_config.image_key = ec.image_key
      input_config.caption_key = ec.caption_key
      # TFDS classification sets name their label 'label'; the other sources need it set.
      input_config.label_key = ec.label_key or ("label" if data.startswith("tfds:") else "")
    iterator = pipeline.make_eval_iterator(input_config, global_batch_size=ec.batch_size,
                                           data=data, pad_forever=True)
    try:
      if "label" in keep and "label" not in iterator.element_spec:
        raise ValueError(f"Eval data {data!r} has no labels; set the evaluator's label_key to "
                         "the data's label field.")
      batches = (_normalized(b) for b in iterator)
      return self.encoders.image_features(batches, image_tower_name=ec.image_tower, keep=keep)
    finally:
      iterator.close()


def _normalized(batch):
  if batch["image"].dtype == np.uint8:  # input.image_dtype='uint8': CLIP-normalise here.
    batch = dict(batch, image=np.asarray(normalization.normalize(batch["image"])))
  return batch


def _max_examples(feats: dict, limit: int) -> dict:
  return {k: v[:limit] for k, v in feats.items()} if limit else feats


def _probe_data(ctx, ec):
  train = _max_examples(ctx.image_features(ec, ec.train_data), ec.max_train_examples)
  test = ctx.image_features(ec, ec.data)
  num_classes = int(max(train["label"].max(), test["label"].max())) + 1
  return (train[ec.feature], train["label"], test[ec.feature], test["label"], num_classes)


def evaluate_linear_probe(ctx, ec) -> dict:
  from maskclip_jax.evaluation.linear_probe import linear_probe  # pylint: disable=g-import-not-at-top
  train_x, train_y, test_x, test_y, num_classes = _probe_data(ctx, ec)
  ctx.encoders.check_stop()  # the fit runs as one compiled loop: stop before it, if asked
  metrics = linear_probe(train_x, train_y, test_x, test_y, num_classes=num_classes,
                         l2_grid=tuple(ec.l2_grid), holdout_fraction=ec.holdout_fraction,
                         max_steps=ec.max_steps)
  metrics.update(num_train=float(len(train_y)), num_test=float(len(test_y)))
  return metrics


def evaluate_knn(ctx, ec) -> dict:
  from maskclip_jax.evaluation.knn import knn_accuracy  # pylint: disable=g-import-not-at-top
  train_x, train_y, test_x, test_y, num_classes = _probe_data(ctx, ec)
  metrics = knn_accuracy(train_x, train_y, test_x, test_y, k=ec.k, temperature=ec.temperature,
                         num_classes=num_classes)
  metrics.update(num_train=float(len(train_y)), num_test=float(len(test_y)))
  return metrics


EVALUATORS: Mapping[str, Callable] = {
    "zeroshot": zeroshot.evaluate,
    "retrieval": retrieval.evaluate,
    "linear_probe": evaluate_linear_probe,
    "knn": evaluate_knn,
}


def format_metrics(metrics: dict) -> str:
  """'top1=0.2280, num_examples=1000': metrics to 4 decimals, counts (num_*) as whole numbers."""
  return ", ".join(f"{k}={int(v)}" if k.startswith("num_") else f"{k}={v:.4f}"
                   for k, v in metrics.items())


class Evaluations:
  """Runs `config.evals` and writes their metrics (scalars + JSON, process 0 only)."""

  def __init__(self, config, model, mesh, workdir: str, writer=None,
               output_dir: Optional[str] = None):
    check_evals(config, mesh.size)
    self.entries = {name: config.evals[name] for name in sorted(config.evals.keys())}
    self.model, self.mesh, self.writer = model, mesh, writer
    self.input_config = config.input
    self.output_dir = output_dir or os.path.join(workdir, "evals")
    self.seconds: dict[str, float] = {}  # each evaluator's duration at its latest run

  def due(self, step: int, total_steps: int) -> list[str]:
    return [name for name, ec in self.entries.items()
            if step == total_steps or (ec.every_steps and step % ec.every_steps == 0)]

  def result_path(self, name: str, step: int) -> str:
    return os.path.join(self.output_dir, f"{name}_step{step}.json")

  def missing(self, step: int, total_steps: int) -> list[str]:
    """The evaluators due at `step` that wrote no result for it (one interrupted by a signal,
    or by a crash): a resumed run redoes them before it trains on."""
    return [name for name in self.due(step, total_steps)
            if not os.path.exists(self.result_path(name, step))]

  def run(self, step: int, params, teacher, names=None,
          should_stop=None) -> dict[str, dict[str, float]]:
    """Runs `names` (default: all) at `step`; `should_stop()`, asked between batches, raises
    features.EvaluationInterrupted to stop early (nothing is written for the evaluator)."""
    names = list(self.entries) if names is None else names
    unknown = sorted(set(names) - set(self.entries))
    if unknown:
      raise ValueError(f"No evaluator(s) {unknown} in config.evals; there are "
                       f"{sorted(self.entries)}.")
    ctx = EvalContext(features_lib.Encoders(self.model, self.mesh, params, teacher,
                                            should_stop=should_stop),
                      self.input_config, self.model.text_spec.context_length)
    results = {}
    for name in names:
      ec = self.entries[name]
      logging.info("Evaluating %s (%s) at step %d.", name, ec.type, step)
      start = time.perf_counter()
      metrics = {k: float(v) for k, v in EVALUATORS[ec.type](ctx, ec).items()}
      seconds = time.perf_counter() - start
      results[name] = metrics
      self.seconds[name] = seconds
      logging.info("Eval %s at step %d (%.1f s): %s", name, step, seconds,
                   format_metrics(metrics))
      if jax.process_index() == 0:
        self._write(name, ec, step, metrics, seconds)
    return results

  def _write(self, name, ec, step, metrics, seconds):
    if self.writer is not None:
      self.writer.write_scalars(step, {f"eval/{name}/{k}": v for k, v in metrics.items()})
    os.makedirs(self.output_dir, exist_ok=True)
    record = dict(name=name, step=step, seconds=seconds, metrics=metrics,
                  eval_config=ec.to_dict())
    path = self.result_path(name, step)
    with open(path + ".tmp", "w") as f:
      json.dump(record, f, indent=1, default=list)
    os.replace(path + ".tmp", path)  # A reader never sees a half-written file.
