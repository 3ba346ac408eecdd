"""A signal during a long evaluation: the trainer saves within seconds and exits cleanly, and
the resumed run evaluates that step again before it trains on."""
import os
import signal
import time

from conftest import tiny_train_config
from maskclip_jax import checkpoint, train
from maskclip_jax.evaluation import features
from maskclip_jax.evaluation.config import eval_config

SECONDS_PER_BATCH = 1.0  # the slow evaluation: its 8 image batches (and the prompts) take 10 s+


def _config(tfds_dir, total_steps):
  config = tiny_train_config(tfds_dir, total_steps=total_steps, log_every_steps=1)
  with config.unlocked():
    config.checkpoint.every_steps = 100  # the evaluated step is not a checkpoint step
    config.evals.zs = eval_config("zeroshot", data="synthetic:test", classes="synthetic",
                                  batch_size=8, every_steps=3)
  return config


def test_sigterm_during_an_evaluation_saves_exits_and_the_resume_redoes_it(
    tfds_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path)
  original = features.Encoders.check_stop
  batches = []

  def slow_batches(encoders):
    if not batches:  # the first batch of the evaluation at step 3: a scheduler's SIGTERM
      os.kill(os.getpid(), signal.SIGTERM)
    batches.append(time.perf_counter())
    time.sleep(SECONDS_PER_BATCH)
    original(encoders)

  monkeypatch.setattr(features.Encoders, "check_stop", slow_batches)
  train.train_and_evaluate(_config(tfds_dir, total_steps=6), workdir)
  assert len(batches) == 1  # it stopped at the next batch, not after the whole evaluation
  assert checkpoint.latest_step(workdir) == 3  # saved at the evaluated step, then stopped
  result = os.path.join(workdir, "evals", "zs_step3.json")
  assert not os.path.exists(result)  # an interrupted evaluation writes nothing

  monkeypatch.setattr(features.Encoders, "check_stop", original)
  redone = []
  monkeypatch.setattr(train.Evaluations, "run", _recording(train.Evaluations.run, redone))
  train.train_and_evaluate(_config(tfds_dir, total_steps=6), workdir)
  assert redone[0] == (3, ["zs"])  # first thing on resume: step 3's evaluation, again
  assert os.path.exists(result)
  assert checkpoint.latest_step(workdir) == 6


def _recording(run, calls):
  def recorded(self, step, params, teacher, names=None, **kwargs):
    calls.append((step, list(names or [])))
    return run(self, step, params, teacher, names, **kwargs)
  return recorded

