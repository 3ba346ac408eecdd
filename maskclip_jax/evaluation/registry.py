"""The evaluator registry: `config.evals` entries run on a model's params, metrics written out.

    evaluations = Evaluations(config, model, mesh, workdir, writer)
    for name in evaluations.due(step, total_steps): ...
    metrics = evaluations.run(step, params, teacher)   # {name: {metric: value}}

Every process runs every evaluator (each reads its own share of the data); only process 0
writes TensorBoard scalars (`eval/NAME/METRIC`) and `W/evals/NAME_stepN.json`. An entry's
`type` picks its evaluator in EVALUATORS: a module's `evaluate(context, entry)` (context.py).

Each evaluation's start and result lines go to the logger named after this module (`_progress`):
the trainer's console shows its own shorter eval line instead and turns that logger down
without --verbose; maskclip-eval shows them.
"""
import json
import logging
import os
import time
from typing import Callable, Mapping, Optional

import jax
import ml_collections

from maskclip_jax.evaluation import features as features_lib
from maskclip_jax.evaluation import knn, linear_probe, retrieval, zeroshot
from maskclip_jax.evaluation.context import EvalContext

# Each config type's `evaluate(context, entry) -> {metric: value}`.
EVALUATORS: Mapping[str, Callable[[EvalContext, ml_collections.ConfigDict],
                                  dict[str, float]]] = {
    "zeroshot": zeroshot.evaluate,
    "retrieval": retrieval.evaluate,
    "linear_probe": linear_probe.evaluate,
    "knn": knn.evaluate,
}
_progress = logging.getLogger(__name__)


def format_metrics(metrics: dict) -> str:
  """'top1=0.2280, num_examples=1000': metrics to 4 decimals, counts (num_*) as whole numbers."""
  return ", ".join(f"{k}={int(v)}" if k.startswith("num_") else f"{k}={v:.4f}"
                   for k, v in metrics.items())


class Evaluations:
  """Runs `config.evals` and writes their metrics (scalars + JSON, process 0 only)."""

  def __init__(self, config, model, mesh, workdir: str, writer=None,
               output_dir: Optional[str] = None):
    self.entries = {name: config.evals[name] for name in sorted(config.evals.keys())}
    self.model, self.mesh, self.writer = model, mesh, writer
    self.input_config = config.input
    self.output_dir = output_dir or os.path.join(workdir, "evals")
    self.seconds: dict[str, float] = {}  # each evaluator's duration at its latest run
    self.latest: dict[str, dict[str, float]] = {}  # each evaluator's latest metrics ...
    self.latest_step: dict[str, int] = {}  # ... and the step they are of
    self.total_seconds = 0.0  # every run's time, the interrupted ones included

  def due(self, step: int, total_steps: int) -> list[str]:
    return [name for name, entry in self.entries.items()
            if step == total_steps or (entry.every_steps and step % entry.every_steps == 0)]

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
    context = EvalContext(features_lib.Encoders(self.model, self.mesh, params, teacher,
                                                should_stop=should_stop),
                          self.input_config, self.model.text_spec.context_length)
    results = {}
    run_start = time.perf_counter()
    try:
      for name in names:
        entry = self.entries[name]
        _progress.info("Evaluating %s (%s) at step %d.", name, entry.type, step)
        start = time.perf_counter()
        metrics = {k: float(v) for k, v in EVALUATORS[entry.type](context, entry).items()}
        seconds = time.perf_counter() - start
        results[name] = metrics
        self.seconds[name] = seconds
        self.latest[name], self.latest_step[name] = metrics, step
        _progress.info("Eval %s at step %d (%.1f s): %s", name, step, seconds,
                       format_metrics(metrics))
        if jax.process_index() == 0:
          self._write(name, entry, step, metrics, seconds)
    finally:
      self.total_seconds += time.perf_counter() - run_start
    return results

  def _write(self, name, entry, step, metrics, seconds):
    if self.writer is not None:
      self.writer.write_scalars(step, {f"eval/{name}/{k}": v for k, v in metrics.items()})
    os.makedirs(self.output_dir, exist_ok=True)
    record = dict(name=name, step=step, seconds=seconds, metrics=metrics,
                  eval_config=entry.to_dict())
    path = self.result_path(name, step)
    with open(path + ".tmp", "w") as f:
      json.dump(record, f, indent=1, default=list)
    os.replace(path + ".tmp", path)  # A reader never sees a half-written file.
