"""The trainer: input -> model -> sharding -> restore -> loop (step, log, checkpoint) -> save.

Reads top to bottom; each phase is under a banner. `train_and_evaluate(config, workdir)` is
the whole run; main.py only parses flags.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Optional

from absl import logging
import jax
import ml_collections
import numpy as np
from clu import periodic_actions

from maskclip_jax import checkpoint, console, distributed, flops, sharding
from maskclip_jax import train_step as train_step_lib
from maskclip_jax.config_checks import check_config
from maskclip_jax.data import device_put, pipeline
from maskclip_jax.evaluation.features import EvaluationInterrupted
from maskclip_jax.evaluation.registry import Evaluations
from maskclip_jax.models.maskclip import build_model
from maskclip_jax.models.transformer import remat_policy
from maskclip_jax.optimizer import make_optimizer
from maskclip_jax.pytree_paths import path_name

LOSS_TERMS = ("loss", "loss_i2t", "loss_t2i", "loss_sigmoid", "loss_dist", "loss_mlm",
              "grad_norm")


class NonFiniteLossError(RuntimeError):
  pass


class PreemptionHandler:
  """SIGTERM/SIGINT: finish the current step, save, exit 0. A second signal exits at once.

  Several processes must stop at the same step, though a signal may reach only one of them
  (a TPU maintenance event, a scheduler): there SIGTERM is left to jax's preemption service
  (started by jax.distributed.initialize), which agrees on the step to stop at, and SIGINT is
  passed on to it as a SIGTERM. `stop_requested(step)` is asked once a step.
  """

  def __init__(self):
    self.requested: Optional[int] = None
    self._previous = {}
    self._multiprocess = jax.process_count() > 1
    self._forwarded = False  # SIGINT passed on to the preemption service (several processes)

  def __enter__(self):
    for sig in (signal.SIGINT,) if self._multiprocess else (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def interrupts_evaluation(self) -> bool:
    """Asked between evaluation batches: a signal stops a running evaluation (which is redone
    on resume) so that the save is not lost to a scheduler's grace period. One process only:
    with several, the signal reaches some of them and they must stop at the same step, which
    only the per-step preemption sync point agrees on."""
    return not self._multiprocess and self.requested is not None

  def stop_requested(self, step: int) -> bool:
    if self._multiprocess and self.requested is None:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      if multihost_utils.reached_preemption_sync_point(step):
        self.requested = signal.SIGTERM
    return self.requested is not None

  def _handle(self, signum, frame):
    del frame
    if self._multiprocess and not self._forwarded:
      self._forwarded = True
      os.kill(os.getpid(), signal.SIGTERM)
      return
    if self.requested is not None or self._forwarded:
      logging.warning("Second signal %d: exiting now without saving.", signum)
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.requested = signum
    logging.warning("Signal %d: saving a checkpoint after this step, then exiting.", signum)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def check_workdir(workdir: str, needed_bytes: int) -> None:
  """Fails at start (not at the first save) on a workdir that cannot hold checkpoints."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe_{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f"--workdir={workdir!r} is not writable ({e}); choose a directory "
                          "you can write to.") from e
  free = shutil.disk_usage(workdir).free
  if free < needed_bytes:
    raise OSError(f"--workdir={workdir!r} has {free / 2**30:.2f} GiB free, less than the "
                  f"{needed_bytes / 2**30:.2f} GiB that config.checkpoint.min_free_checkpoints "
                  "checkpoints of this model need; free space or use another workdir.")


def git_commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__),
                          capture_output=True, text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def shape_mismatches(abstract_state, metadata) -> list:
  """'path: checkpoint (a, b) vs model (c, d)' for every leaf whose shape differs."""
  saved = {path_name(p): tuple(m.shape) for p, m in
           jax.tree_util.tree_leaves_with_path(metadata) if hasattr(m, "shape")}
  wanted = {path_name(p): tuple(x.shape) for p, x in
            jax.tree_util.tree_leaves_with_path(abstract_state)}
  problems = [f"{k}: checkpoint {saved[k]} vs model {wanted[k]}"
              for k in sorted(wanted) if k in saved and saved[k] != wanted[k]]
  problems += [f"{k}: in the model, not in the checkpoint" for k in sorted(wanted)
               if k not in saved]
  problems += [f"{k}: in the checkpoint, not in the model" for k in sorted(saved)
               if k not in wanted]
  return problems


def resolve_total_steps(config, train_examples: Optional[int]) -> None:
  if config.total_epochs:
    if not train_examples:
      raise ValueError(f"--config.total_epochs={config.total_epochs} needs the training data's "
                       f"size, which {config.input.train_data!r} does not give; set "
                       "--config.total_steps instead.")
    config.total_steps = max(1, int(config.total_epochs * train_examples / config.batch_size))
  elif not config.total_steps:
    raise ValueError("Set --config.total_steps or --config.total_epochs.")
  if config.optim.warmup_steps >= config.total_steps:
    raise ValueError(f"--config.optim.warmup_steps={config.optim.warmup_steps} is not below the "
                     f"{config.total_steps} training steps; lower it.")


def warm_start(config, state, state_shardings):
  """Params (and teacher) from `config.init_from`: a workdir, or 'openclip:PATH'."""
  source = config.init_from
  if source.startswith("openclip:"):
    from maskclip_jax.export import load_open_clip_checkpoint  # pylint: disable=g-import-not-at-top
    loaded = load_open_clip_checkpoint(source[len("openclip:"):], config)
  else:
    loaded, _ = checkpoint.load_state_numpy(source)
    loaded = loaded["params"]
  params = dict(state["params"])
  for name, value in loaded.items():
    if name not in params:
      continue
    problems = shape_mismatches({name: params[name]}, {name: value})
    if problems:
      raise ValueError(f"--config.init_from={source!r} does not fit this model:\n  "
                       + "\n  ".join(problems))
    params[name] = value
  params = jax.device_put(params, state_shardings["params"])
  state = dict(state, params=params)
  if state["teacher"]:
    state["teacher"] = jax.device_put(train_step_lib.teacher_of(params),
                                      state_shardings["teacher"])
  logging.info("Warm-started %s from %s.", sorted(loaded), source)
  return state


def input_for_resume(directory: str, step: int, train_iter, make_train_iter, seed: int):
  """(the training input to resume `step` with, whether to restore its saved position).

  `directory` holds the positions saved at `step`; `make_train_iter(seed)` builds the stream.

  Positions are saved per process of the stream. With as many stream processes as the run
  that saved them (any mesh), the stream continues exactly. With another number, no saved
  position describes a process's new share of the data: the stream restarts, seeded with
  `config.seed + step` so as not to replay the run's first batches, and a warning says so.
  A stream every process reads whole (input.every_process_reads_all) has the same single
  position for any process count, so it always continues exactly.
  """
  saved = train_iter.saved_description(directory)
  if saved is None:
    counts = pipeline.saved_process_counts(directory)
    logging.warning(
        "The checkpoint at step %d holds the input positions of a stream over %s process(es); "
        "this run splits its input over %d, so the data cannot continue exactly: the training "
        "stream restarts with seed %d (config.seed + step).", step,
        " or ".join(map(str, counts)) or "no", train_iter.process_count, seed + step)
    train_iter.close()
    return make_train_iter(seed + step), False
  if 0 < saved["seed"] - seed <= step:  # a stream that an earlier resume restarted
    train_iter.close()
    train_iter = make_train_iter(saved["seed"])
  return train_iter, True


def check_fits_model(abstract_state, directory: str):
  """`check_metadata` for checkpoint.restore_verified: a checkpoint of another model is a
  config error (ValueError naming the shapes), not a damaged checkpoint to fall back from."""
  def check(step: int, metadata) -> None:
    problems = shape_mismatches(abstract_state, metadata)
    # Parameters first: the optimizer's moments repeat every parameter's mismatch.
    problems.sort(key=lambda p: (p.startswith("opt_state"), p))
    if problems:
      raise ValueError(
          f"The checkpoint at step {step} in {directory} does not match this config's model:"
          "\n  " + "\n  ".join(problems[:20])
          + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
          + "\nResume with the config it was trained with, or use a new --workdir.")
  return check


def resume(config, manager, abstract_state, train_iter, make_train_iter):
  """(the restored state, the training input) from the checkpoint at --config.resume_step or,
  when that is None, from the newest that passes verification (checkpoint.restore_verified:
  checksums, finite values, files, metadata; each failing step is logged with its reason).
  The input position is the chosen step's own. Checkpoints newer than the chosen step (failed,
  or passed over by resume_step) are moved to WORKDIR/checkpoints_set_aside/, never deleted:
  the run saves those steps again."""
  directory = os.fspath(manager.directory)
  state, step, rejected = checkpoint.restore_verified(
      manager, abstract_state, step=config.resume_step, input_iterator=train_iter,
      check_metadata=check_fits_model(abstract_state, directory))
  newer = {s: rejected.get(s, f"newer than --config.resume_step={step}")
           for s in manager.all_steps() if s > step}
  if newer:
    checkpoint.set_aside(manager, newer)
  train_iter, exact_input = input_for_resume(checkpoint.input_position_dir(manager, step), step,
                                             train_iter, make_train_iter, config.seed)
  if exact_input:
    checkpoint.restore_input_position(manager, step, train_iter)
  logging.info("Resumed from step %d (%d samples skipped and %d bad shards so far).", step,
               train_iter.skipped_count, train_iter.bad_shard_count)
  return state, train_iter


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint. Returns the last
  logged metrics."""
  run_start = time.perf_counter()
  # ------------------------------------------------------------------ set-up and checks
  distributed.check_same_config(config)  # several processes: all must run this config
  check_config(config, jax.device_count())  # before anything is built or compiled
  model = build_model(config)  # a description only: nothing is initialised yet
  if config.input.image_size != model.vision.image_size:
    raise ValueError(f"--config.input.image_size={config.input.image_size} differs from the "
                     f"model's image size {model.vision.image_size}; set "
                     "config.model.vision.image_size to match.")
  is_lead = jax.process_index() == 0

  # ------------------------------------------------------------------ input pipeline
  # The stream is split over the processes (each reads its share), or read whole by each
  # (input.every_process_reads_all), its devices taking their rows: see data/config.py.
  stream_processes = 1 if config.input.every_process_reads_all else jax.process_count()
  make_train_iter = lambda seed: pipeline.make_train_iterator(
      config.input, global_batch_size=config.batch_size, seed=seed,
      process_index=jax.process_index() if stream_processes > 1 else 0,
      process_count=stream_processes)
  train_iter = make_train_iter(config.seed)
  train_examples = (train_iter.num_examples * stream_processes
                    if train_iter.num_examples else None)
  with config.unlocked():
    resolve_total_steps(config, train_examples)
  total_steps = config.total_steps

  # ------------------------------------------------------------------ model and optimizer
  tx = make_optimizer(config)  # after total_steps is known: the LR schedule needs it
  init_fn = lambda: train_step_lib.init_train_state(model, config, tx,
                                                    jax.random.PRNGKey(config.seed))

  # ------------------------------------------------------------------ sharding
  mesh = sharding.make_mesh(config.mesh)
  abstract_state = jax.eval_shape(init_fn)
  state_shardings = sharding.tree_shardings(abstract_state, mesh, config.sharding_rules)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state,
      state_shardings)
  batch_sharding = sharding.batch_sharding(mesh)
  next_batch = lambda: device_put.make_global_batch(next(train_iter), batch_sharding,
                                                    process_count=stream_processes)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))
  check_workdir(workdir, int(state_bytes * config.checkpoint.min_free_checkpoints))
  checkpoint.write_config(workdir, config)
  if is_lead:
    with open(os.path.join(workdir, "run_info.json"), "w") as f:
      json.dump(dict(git_commit=git_commit(), argv=sys.argv, devices=jax.device_count(),
                     processes=jax.process_count(), mesh=dict(mesh.shape),
                     total_steps=total_steps), f, indent=1)

  # ------------------------------------------------------------------ restore or initialise
  manager = checkpoint.make_manager(workdir, max_to_keep=config.checkpoint.keep,
                                    async_save=config.checkpoint.async_save)
  if manager.latest_step() is not None or config.resume_step is not None:
    state, train_iter = resume(config, manager, abstract_state, train_iter, make_train_iter)
  else:
    state = jax.jit(init_fn, out_shardings=state_shardings)()
    if config.init_from:
      state = warm_start(config, state, state_shardings)
  start_step = int(state["step"])

  # ------------------------------------------------------------------ compile
  if is_lead:
    logging.info("%s", console.start_line(start_step, total_steps, config.batch_size,
                                          jax.device_count(), jax.devices()[0].platform,
                                          config.log_every_steps))
  train_step = train_step_lib.make_train_step(model, config, tx)
  step_fn = sharding.compile_train_step(train_step, mesh, state_shardings)
  first_batch = next_batch()
  compiled = step_fn.lower(state, first_batch).compile()
  # MFU counts the model's FLOPs from its shapes (XLA's count misses the matrix products that
  # become library calls on GPU); XLA's is logged beside it as a cross-check.
  step_flops = flops.train_step_flops(model, config, config.batch_size)
  if remat_policy(config.model.remat) != "none" and not config.model.scan_layers:
    # Measured on XLA's CPU backend (ViT-S/16 blocks, batch 32): an unrolled stack's temporary
    # memory grows with remat (4.6 -> 5.1 GB), a scanned one's shrinks (4.2 -> 0.7 GB, full).
    logging.warning("--config.model.remat=%s without --config.model.scan_layers=True: XLA may "
                    "schedule the recomputation early and save no memory; scan the layers "
                    "for remat to take effect.", config.model.remat)
  flops.log_against_xla(step_flops, flops.xla_flops(compiled), jax.device_count(), config)
  peak = flops.peak_flops_per_device(config)

  # ------------------------------------------------------------------ loop
  writer = console.make_writer(workdir, lead=is_lead)  # TensorBoard (+ log lines: --verbose)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()})
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_steps=config.log_every_steps)
  run_console = console.RunConsole(start_step, total_steps, lead=is_lead)
  evaluations = Evaluations(config, model, mesh, workdir, writer)
  interval_metrics, interval_start, interval_steps = [], time.perf_counter(), 0
  nonfinite_skipped = 0
  last_logged = {}
  # For the summary: each evaluator's latest metrics and step, and the time they took.
  latest_evals, eval_steps, eval_seconds = {}, {}, 0.0
  stopped = None  # why the loop ended before total_steps: for the summary

  def evaluate(names):
    nonlocal eval_seconds
    run_console.evaluating(names)
    eval_start = time.perf_counter()
    try:
      results = evaluations.run(step, state["params"], state["teacher"], names,
                                should_stop=preemption.interrupts_evaluation)
    finally:
      eval_seconds += time.perf_counter() - eval_start
    run_console.log_evals(step, results, evaluations.seconds)
    for name, metrics in results.items():
      last_logged.update({f"eval/{name}/{k}": v for k, v in metrics.items()})
    latest_evals.update(results)
    eval_steps.update(dict.fromkeys(results, step))
    return time.perf_counter() - eval_start

  batch = first_batch
  step = start_step
  with PreemptionHandler() as preemption:
    interrupted = False
    redo = evaluations.missing(step, total_steps) if step > 0 else []
    if redo:  # interrupted (or crashed) before they wrote their results
      logging.info("Evaluating %s of step %d again: they had not finished.", redo, step)
      try:
        evaluate(redo)
      except EvaluationInterrupted:
        logging.warning("Signal during the evaluation at step %d; exiting (step %d is saved).",
                        step, step)
        interrupted = True
        stopped = f"signal {preemption.requested}"
    saved_step = start_step
    while not interrupted and step < total_steps:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        new_state, metrics = compiled(state, batch)
      metrics = jax.device_get(metrics)
      bad_terms = [k for k in LOSS_TERMS if k in metrics and not np.isfinite(metrics[k])]
      if bad_terms and not config.skip_nonfinite_steps:
        raise NonFiniteLossError(
            f"Non-finite {', '.join(bad_terms)} at step {step + 1} "
            f"({', '.join(f'{k}={metrics[k]}' for k in bad_terms)}); stopping. The last good "
            f"checkpoint is step {manager.latest_step()} in {checkpoint.checkpoint_dir(workdir)}"
            ". Lower --config.optim.lr or set --config.optim.grad_clip_norm, or set "
            "--config.skip_nonfinite_steps=True to drop such steps.")
      nonfinite_skipped += int(metrics.pop("skipped_nonfinite", 0))
      state = new_state
      step += 1
      interval_metrics.append(metrics)
      interval_steps += 1
      progress(step)
      run_console.step_done()

      if step % config.log_every_steps == 0 or step == total_steps:
        seconds = (time.perf_counter() - interval_start) / interval_steps
        summary = {k: float(np.mean([m[k] for m in interval_metrics])) for k in metrics}
        images_per_second = config.batch_size / seconds
        summary.update(
            step_time=seconds, images_per_second=images_per_second,
            images_per_second_per_core=images_per_second / jax.device_count(),
            skipped_samples=float(train_iter.skipped_count * stream_processes),
            bad_shards=float(train_iter.bad_shard_count * stream_processes),
            nonfinite_skipped_steps=float(nonfinite_skipped))
        if peak:
          summary["mfu"] = flops.mfu(step_flops.total, seconds, jax.device_count(), peak)
        writer.write_scalars(step, summary)
        last_logged = dict(summary, step=step)
        run_console.log_interval(step, summary, interval_steps)
        interval_metrics, interval_start, interval_steps = [], time.perf_counter(), 0

      signalled = preemption.stop_requested(step)
      stop = signalled or (config.stop_at_step is not None and step >= config.stop_at_step)
      if step % config.checkpoint.every_steps == 0 or step == total_steps or stop:
        checkpoint.save(manager, step, state, train_iter, force=True)
        saved_step = step
      if stop:
        stopped = (f"signal {preemption.requested}" if signalled
                   else f"--config.stop_at_step={config.stop_at_step}")
        logging.warning("Saved step %d (%s); exiting.", step,
                        f"signal {preemption.requested}" if signalled else "stop_at_step")
        break
      due = evaluations.due(step, total_steps)
      if due:
        try:
          interval_start += evaluate(due)  # not part of the step time
        except EvaluationInterrupted:
          if saved_step != step:
            checkpoint.save(manager, step, state, train_iter, force=True)
          logging.warning("Signal %s during the evaluation at step %d: saved step %d; exiting. "
                          "The evaluation runs again on resume.", preemption.requested, step,
                          step)
          stopped = f"signal {preemption.requested} during an evaluation"
          break
        except Exception:
          manager.wait_until_finished()  # An evaluator's error lets this step's save land.
          raise
      if step < total_steps:
        batch = next_batch()

  # ------------------------------------------------------------------ final save, summary
  manager.wait_until_finished()
  latest = manager.latest_step()
  manager.close()
  run_console.close()
  writer.flush()
  if nonfinite_skipped:
    logging.warning("Skipped %d steps with a non-finite loss.", nonfinite_skipped)
  last_logged["nonfinite_skipped_steps"] = float(nonfinite_skipped)
  if is_lead:
    logging.info("%s", console.summary(
        config, workdir, step=step, total_steps=total_steps, evals=latest_evals,
        eval_steps=eval_steps,
        checkpoint_dir=(os.path.join(checkpoint.checkpoint_dir(workdir), str(latest))
                        if latest is not None else None),
        wall_seconds=time.perf_counter() - run_start, eval_seconds=eval_seconds,
        stopped=stopped, curves=write_curves(workdir)))
  return last_logged


def write_curves(workdir: str) -> Optional[str]:
  """WORKDIR/curves.png from the run's TensorBoard events (plot.py); a failure only warns."""
  try:
    from maskclip_jax import plot  # pylint: disable=g-import-not-at-top
    return plot.write_curves(workdir)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("Could not write %s/curves.png (%s: %s); the run is not affected.",
                    workdir, type(e).__name__, e)
    return None


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, name + "."))
    elif isinstance(value, (int, float, str, bool)):
      out[name] = value
    else:
      out[name] = str(value)
  return out

