"""Where a run's state comes from: its newest verified checkpoint, or a fresh initialisation
(optionally warm-started from another run or an open_clip checkpoint).

    state, train_iter = restore.restore_or_initialise(config, manager, abstract_state,
                                                      state_shardings, init_fn, train_iter,
                                                      make_train_iter)

A resume restores the state and the training input's position together; `input_for_resume`
says what happens when the number of input processes changed since the save.
"""
import os

from absl import logging
import jax

from maskclip_jax import checkpoint
from maskclip_jax import train_step as train_step_lib
from maskclip_jax.data import pipeline


def restore_or_initialise(config, manager, abstract_state, state_shardings, init_fn, train_iter,
                          make_train_iter):
  """(state, training input): from the checkpoint when the workdir has one (or
  --config.resume_step is set), else `init_fn()` created in its shardings and warm-started
  from --config.init_from when that is set."""
  if manager.latest_step() is not None or config.resume_step is not None:
    return from_checkpoint(config, manager, abstract_state, train_iter, make_train_iter)
  state = jax.jit(init_fn, out_shardings=state_shardings)()
  if config.init_from:
    state = warm_start(config, state, state_shardings)
  return state, train_iter


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
    problems = checkpoint.shape_mismatches({name: params[name]}, {name: value})
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


def from_checkpoint(config, manager, abstract_state, train_iter, make_train_iter):
  """(the restored state, the training input) from the checkpoint at --config.resume_step or,
  when that is None, from the newest that passes verification (checkpoint.restore_verified:
  checksums, finite values, files, metadata; each failing step is logged with its reason).
  The input position is the chosen step's own. Checkpoints newer than the chosen step (failed,
  or passed over by resume_step) are moved to WORKDIR/checkpoints_set_aside/, never deleted:
  the run saves those steps again."""
  directory = os.fspath(manager.directory)
  state, step, rejected = checkpoint.restore_verified(
      manager, abstract_state, step=config.resume_step, input_iterator=train_iter,
      check_metadata=checkpoint.check_fits_model(abstract_state, directory))
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
