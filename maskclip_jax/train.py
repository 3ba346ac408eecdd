"""The trainer: input -> model -> sharding -> restore -> loop (step, log, checkpoint) -> save.

Reads top to bottom; each phase is under a banner. `train_and_evaluate(config, workdir)` is
the whole run; cli/train.py only parses flags. The pieces live below it: the checks in
config_checks, where the state comes from in restore, checkpoints and the workdir in
checkpoint, signals in distributed, FLOPs and MFU in flops, what a person reads in console.
"""
import os
import time

from absl import logging
import jax
import ml_collections
import numpy as np
from clu import periodic_actions

from maskclip_jax import checkpoint, console, distributed, flops, plot, restore, sharding
from maskclip_jax import train_step as train_step_lib
from maskclip_jax.config_checks import check_config, resolve_total_steps
from maskclip_jax.data import device_put, pipeline
from maskclip_jax.evaluation.features import EvaluationInterrupted
from maskclip_jax.evaluation.registry import Evaluations
from maskclip_jax.models.maskclip import build_model
from maskclip_jax.models.transformer import remat_policy
from maskclip_jax.optimizer import make_optimizer

# The step's metrics that must stay finite (--config.skip_nonfinite_steps drops such steps).
LOSS_TERMS = ("loss", "loss_i2t", "loss_t2i", "loss_sigmoid", "loss_dist", "loss_mlm",
              "grad_norm")


class NonFiniteLossError(RuntimeError):
  pass


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint. Returns the last
  logged metrics."""
  run_start = time.perf_counter()
  # ------------------------------------------------------------------ set-up and checks
  distributed.check_same_config(config)  # several processes: all must run this config
  check_config(config, jax.device_count())  # before anything is built or compiled
  model = build_model(config.model, config.maskclip)  # a description: nothing initialised
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
  abstract_state, state_shardings = sharding.abstract_sharded_state(init_fn, mesh,
                                                                    config.sharding_rules)
  batch_sharding = sharding.batch_sharding(mesh)
  next_batch = lambda: device_put.make_global_batch(next(train_iter), batch_sharding,
                                                    process_count=stream_processes)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_state))
  checkpoint.check_workdir(workdir, int(state_bytes * config.checkpoint.min_free_checkpoints))
  checkpoint.write_config(workdir, config)
  checkpoint.write_run_info(workdir, mesh, total_steps)

  # ------------------------------------------------------------------ restore or initialise
  manager = checkpoint.make_manager(workdir, max_to_keep=config.checkpoint.keep,
                                    async_save=config.checkpoint.async_save)
  state, train_iter = restore.restore_or_initialise(config, manager, abstract_state,
                                                    state_shardings, init_fn, train_iter,
                                                    make_train_iter)
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
    writer.write_hparams(console.hparams(config))
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_steps=config.log_every_steps)
  run_console = console.RunConsole(start_step, total_steps, lead=is_lead)
  evaluations = Evaluations(config, model, mesh, workdir, writer)
  interval_metrics, interval_start, interval_steps = [], time.perf_counter(), 0
  nonfinite_skipped = 0
  last_logged = {}
  stopped = None  # why the loop ended before total_steps: for the summary

  def evaluate(names):
    """Runs `names` at `step` and prints their lines; returns the seconds they took."""
    run_console.evaluating(names)
    before = evaluations.total_seconds
    results = evaluations.run(step, state["params"], state["teacher"], names,
                              should_stop=preemption.interrupts_evaluation)
    run_console.log_evals(step, results, evaluations.seconds)
    return evaluations.total_seconds - before

  batch = first_batch
  step = start_step
  with distributed.PreemptionHandler() as preemption:
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
  last_logged.update({f"eval/{name}/{k}": v for name, metrics in evaluations.latest.items()
                      for k, v in metrics.items()})
  if is_lead:
    logging.info("%s", console.summary(
        config, workdir, step=step, total_steps=total_steps, evals=evaluations.latest,
        eval_steps=evaluations.latest_step,
        checkpoint_dir=(os.path.join(checkpoint.checkpoint_dir(workdir), str(latest))
                        if latest is not None else None),
        wall_seconds=time.perf_counter() - run_start,
        eval_seconds=evaluations.total_seconds,
        stopped=stopped, curves=plot.write_curves_or_warn(workdir)))
  return last_logged
