"""The trainer end to end on tiny configs: resume, preemption, crashes, failures, logging."""
import glob
import os
import re
import signal

import jax
import numpy as np
import pytest

from conftest import Run, assert_bit_identical, finished, read_state, tiny_train_config, wait_for
from maskclip_jax import checkpoint, train


def test_resume_is_exact(tfds_dir, tmp_path):
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  train.train_and_evaluate(tiny_train_config(tfds_dir), straight)
  train.train_and_evaluate(tiny_train_config(tfds_dir, stop_at_step=6), split)
  assert checkpoint.latest_step(split) == 6
  train.train_and_evaluate(tiny_train_config(tfds_dir), split)  # resumes at 6, runs to 12
  a, b = read_state(straight, 12), read_state(split, 12)
  for part in ("params", "teacher", "opt_state", "center", "step", "rng"):
    assert_bit_identical(a[part], b[part])
  # Training moved the parameters: the comparison above is not between two inits.
  init_like = read_state(split, 6)["params"]["visual"]["proj"]
  assert not np.array_equal(init_like, a["params"]["visual"]["proj"])


def test_tensorboard_has_the_listed_scalars(tfds_dir, tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_train_config(tfds_dir, total_steps=6), workdir)
  from tensorboard.backend.event_processing import event_accumulator
  files = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert files
  tags = set()
  for path in files:
    accumulator = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
    accumulator.Reload()
    tags |= set(accumulator.Tags()["tensors"]) | set(accumulator.Tags()["scalars"])
  expected = {"loss", "loss_i2t", "loss_t2i", "loss_dist", "loss_mlm", "acc_i2t", "acc_t2i",
              "lr", "logit_scale", "grad_norm", "ema_momentum", "codeword_perplexity",
              "skipped_samples", "bad_shards", "step_time", "images_per_second",
              "images_per_second_per_core", "mfu", "uptime", "steps_per_sec"}
  assert expected <= tags, expected - tags
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert os.path.exists(os.path.join(workdir, "run_info.json"))


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tfds_dir, tmp_path):
  workdir = str(tmp_path)
  # A good run to step 6, then an absurd learning rate from there on.
  train.train_and_evaluate(tiny_train_config(tfds_dir, stop_at_step=6), workdir)
  good = read_state(workdir, 6)
  config = tiny_train_config(tfds_dir, **{"optim.lr": 1e30, "checkpoint.every_steps": 1})
  with pytest.raises(train.NonFiniteLossError, match=r"Non-finite .*loss.* at step \d+"):
    train.train_and_evaluate(config, workdir)
  latest = checkpoint.latest_step(workdir)
  state = read_state(workdir, latest)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
  assert_bit_identical(read_state(workdir, 6)["params"], good["params"])


def test_nonfinite_steps_can_be_skipped_and_counted(tfds_dir, tmp_path):
  config = tiny_train_config(tfds_dir, skip_nonfinite_steps=True, total_steps=6,
                             **{"optim.lr": 1e30})
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 6
  assert result["nonfinite_skipped_steps"] >= 1


def test_mismatched_model_on_resume_names_the_shapes(tfds_dir, tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_train_config(tfds_dir, total_steps=1), workdir)
  config = tiny_train_config(tfds_dir, **{"model.vision.width": 64})
  with pytest.raises(ValueError, match=r"params/visual/conv1/kernel: checkpoint \(8, 8, 3, 32\) "
                                       r"vs model \(8, 8, 3, 64\)"):
    train.train_and_evaluate(config, workdir)


def test_batch_not_divisible_by_devices_fails_before_anything(tfds_dir, tmp_path):
  with pytest.raises(ValueError, match="batch_size=12 is not divisible by 8 devices"):
    train.train_and_evaluate(tiny_train_config(tfds_dir, batch_size=12), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_unwritable_or_full_workdir_fails_at_start(tfds_dir, tmp_path, monkeypatch):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(PermissionError, match="is not writable"):
    train.train_and_evaluate(tiny_train_config(tfds_dir), str(blocker / "workdir"))
  import shutil
  usage = shutil.disk_usage(str(tmp_path))
  monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                      lambda path: usage._replace(free=1024))
  with pytest.raises(OSError, match="GiB free, less than"):
    train.train_and_evaluate(tiny_train_config(tfds_dir), str(tmp_path / "full"))


# ---------------------------------------------------------------- the command line, as a user runs it
def test_runlocal_variant_of_the_paper_config_runs_two_steps(tfds_dir, tmp_path):
  code, output = finished(Run(str(tmp_path), tfds_dir))
  assert code == 0, output[-3000:]
  assert checkpoint.latest_step(str(tmp_path)) == 2


def test_mistyped_config_field_is_an_error(tfds_dir, tmp_path):
  code, output = finished(Run(str(tmp_path), tfds_dir, "--config.optim.lrr=0.1"))
  assert code != 0
  assert "lrr" in output


def complete_steps(workdir):
  return sorted(int(os.path.basename(p)) for p in glob.glob(os.path.join(workdir, "checkpoints",
                                                                          "*"))
                if os.path.basename(p).isdigit())


def test_sigterm_saves_and_exits_zero_then_resumes(tfds_dir, tmp_path):
  workdir = str(tmp_path)
  run = Run(workdir, tfds_dir, "--config.total_steps=100000",
               "--config.checkpoint.every_steps=100000")
  # Wait for training to be under way (the console writer's first metrics line), then preempt.
  assert wait_for(lambda: re.search(r"^step +\d+/", run.output, re.M), 400, run), run.output[-3000:]
  run.process.send_signal(signal.SIGTERM)
  code, output = finished(run)
  assert code == 0, output[-3000:]
  steps = complete_steps(workdir)
  assert len(steps) == 1 and 1 <= steps[0] < 100000
  reached = steps[0]
  code, output = finished(Run(workdir, tfds_dir, "--config.total_steps=100000",
                                 f"--config.stop_at_step={reached + 2}"))
  assert code == 0, output[-3000:]
  assert f"Resumed from step {reached}" in output
  assert checkpoint.latest_step(workdir) == reached + 2


def test_kill_9_during_an_async_save_leaves_the_previous_checkpoint(tfds_dir, tmp_path):
  workdir = str(tmp_path)
  run = Run(workdir, tfds_dir, "--config.total_steps=100000",
               "--config.checkpoint.every_steps=1", "--config.checkpoint.keep=1000")
  in_progress = lambda: glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*"))
  assert wait_for(lambda: complete_steps(workdir) and in_progress(), 400, run), run.output[-3000:]
  run.process.kill()
  run.process.wait()
  steps = complete_steps(workdir)
  assert steps
  latest = checkpoint.latest_step(workdir)
  assert latest == steps[-1]
  read_state(workdir, latest)  # the latest complete checkpoint restores
  code, output = finished(Run(workdir, tfds_dir, "--config.total_steps=100000",
                                 f"--config.stop_at_step={latest + 1}"))
  assert code == 0, output[-3000:]
  assert f"Resumed from step {latest}" in output
