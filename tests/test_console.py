"""The console a person reads: the trainer's lines and summary, the logging filter, --help."""
# pylint: disable=protected-access
import logging
import os
import re
import subprocess
import sys

from conftest import REPO
from maskclip_jax import console
from maskclip_jax.evaluation import eval_config

ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]", re.MULTILINE)


# ---------------------------------------------------------------- the trainer, as a user runs it
def test_a_run_without_a_terminal_prints_one_line_per_interval_and_a_summary(tfds_dir, tmp_path):
  workdir = str(tmp_path / "run")
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)
  command = [sys.executable, "-m", "maskclip_jax.cli.train", f"--config={REPO}/tests/tiny_config.py",
             f"--workdir={workdir}", f"--config.input.tfds_data_dir={tfds_dir}",
             "--config.total_steps=4", "--config.log_every_steps=2",
             "--config.checkpoint.every_steps=2"]
  # Bytes, not text: text mode would turn a carriage return into a newline.
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, timeout=600)
  output = (result.stdout + result.stderr).decode()
  assert result.returncode == 0, output[-3000:]
  assert "\r" not in output  # no progress bar, nothing overwritten
  assert not ABSL_PREFIX.search(output), ABSL_PREFIX.search(output).group()
  assert "Config:" not in output and "[Hyperparameters]" not in output
  assert "Setting work unit notes" not in output
  step_lines = re.findall(r"^step +(\d+)/4  loss \d+\.\d{3} \(clip .* dist .* mlm .*\)  acc .* "
                          r"img/s", output, re.MULTILINE)
  assert step_lines == ["2", "4"], output[-3000:]
  assert len(re.findall(r"^eval zeroshot @ step 4: top1 \d\.\d{3} top5 \d\.\d{3} \(\d+\.\d s\)$",
                        output, re.MULTILINE)) == 1, output[-3000:]
  # The summary comes last: results against chance, the checkpoint, what to run next.
  summary = result.stderr.decode().rpartition("Finished: step 4 of 4")[2]
  assert re.search(r"zeroshot  top1 \d\.\d{3}  \(chance 0\.028 = 1/36\)", summary), summary
  assert f"Checkpoint: {workdir}/checkpoints/4\n" in summary
  for command in (f"maskclip-eval --workdir {workdir}",
                  f"maskclip-export --workdir {workdir} --to open_clip --out {workdir}/open_clip",
                  f"maskclip-heatmap --workdir {workdir} --image ",
                  f"maskclip-plot --workdir {workdir}",
                  f"tensorboard --logdir {workdir}"):
    assert command in summary, summary
  assert summary.rstrip().endswith(f"tensorboard --logdir {workdir}")


def test_help_lists_the_flags_that_matter_before_jax_starts():
  code = ("import sys\nsys.argv = ['maskclip-train', '--help']\nfrom maskclip_jax.cli import train\n"
          "try:\n  train.run()\nexcept SystemExit as e:\n  assert e.code in (0, None), e.code\n"
          "print('jax' in sys.modules, 'tensorflow' in sys.modules)")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.rstrip().endswith("False False"), result.stdout
  for flag in ("--config FILE[:VARIANTS]", "--config.FIELD=VALUE", "--workdir", "--verbose",
               "--break_lock", "--coordinator_address", "--num_processes", "--process_id",
               "--helpfull", "maskclip-train --config configs/tiny_synthetic.py"):
    assert flag in result.stdout, flag
  assert "logtostderr" not in result.stdout and len(result.stdout.splitlines()) < 60
  full = subprocess.run([sys.executable, "-m", "maskclip_jax.cli.train", "--helpfull"], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert "logtostderr" in full.stdout + full.stderr  # absl: --[no]logtostderr


# ---------------------------------------------------------------- the lines
def test_step_line():
  metrics = dict(loss=9.4081, loss_i2t=2.06, loss_t2i=2.06, loss_dist=5.01, loss_mlm=8.2,
                 acc_i2t=0.0213, images_per_second=118.3, nonfinite_skipped_steps=0.0)
  assert (console.step_line(25, 300, metrics, eta_seconds=151.2)
          == "step  25/300  loss 9.408 (clip 4.12 dist 5.01 mlm 8.20)  acc 0.02  118 img/s  "
          "ETA 2m31s")
  clip_only = dict(loss=4.12, loss_i2t=2.06, loss_t2i=2.06, acc_i2t=0.5, images_per_second=9.5)
  assert (console.step_line(300, 300, clip_only, eta_seconds=0.0)
          == "step 300/300  loss 4.120  acc 0.50  9.50 img/s")
  sigmoid = dict(loss=1.5, loss_sigmoid=1.5, nonfinite_skipped_steps=2.0)
  assert (console.step_line(3, 9, sigmoid, None)
          == "step 3/9  loss 1.500  2 non-finite steps skipped")


def test_format_duration():
  assert [console.format_duration(s) for s in (0.4, 59, 151, 3600 * 2 + 5 * 60, 86400 * 3 + 7200)
          ] == ["0s", "59s", "2m31s", "2h05m", "3d02h"]


def test_eval_line_leaves_out_counts():
  metrics = dict(top1=0.1894, top5=0.7466, num_examples=1000.0, num_classes=36.0)
  assert (console.eval_line("zeroshot", 100, metrics, 2.44)
          == "eval zeroshot @ step 100: top1 0.189 top5 0.747 (2.4 s)")


def _config_with_evals():
  import ml_collections
  return ml_collections.ConfigDict(dict(
      input=dict(train_data="synthetic"),
      evals=dict(zeroshot=eval_config("zeroshot", data="synthetic:test"),
                 retrieval=eval_config("retrieval", data="synthetic:test"),
                 knn=eval_config("knn", data="synthetic:test"),
                 linear_probe=eval_config("linear_probe", data="synthetic:test"))))


def test_summary_states_results_against_chance_and_the_next_commands():
  evals = dict(zeroshot=dict(top1=0.19, top5=0.75, num_examples=1000.0, num_classes=36.0),
               retrieval=dict(i2t_r1=0.105, t2i_r1=0.098, i2t_r5=0.3, num_images=1000.0,
                              num_captions=1000.0),
               knn=dict(top1=0.45, num_train=2000.0, num_test=1000.0, num_classes=36.0),
               linear_probe=dict(top1=0.61, l2=1e-4, holdout_top1=0.6, num_classes=36.0))
  text = console.summary(_config_with_evals(), "/w", step=300, total_steps=300, evals=evals,
                         eval_steps=dict.fromkeys(evals, 300), checkpoint_dir="/w/checkpoints/300",
                         wall_seconds=252, eval_seconds=35, curves="/w/curves.png",
                         argv=["maskclip-train", "--config", "c.py", "--workdir", "/w"])
  lines = text.splitlines()
  assert lines[0] == "Finished: step 300 of 300 in 4m12s (evaluations 35s)."
  assert "  zeroshot      top1 0.190  (chance 0.028 = 1/36)" in lines
  assert "  retrieval     i2t R@1 0.105  t2i R@1 0.098  (chance 0.001 = 1/1000)" in lines
  assert "  knn           top1 0.450  (chance 0.028 = 1/36)" in lines
  assert "  linear_probe  top1 0.610  (chance 0.028 = 1/36)" in lines
  assert "Checkpoint: /w/checkpoints/300" in lines and "Curves: /w/curves.png" in lines
  assert "  maskclip-export --workdir /w --to open_clip --out /w/open_clip" in lines
  assert "  maskclip-plot --workdir /w" in lines and "  tensorboard --logdir /w" in lines
  assert not any(line.startswith("Resume") for line in lines)


def test_summary_of_a_stopped_run_says_how_to_resume():
  text = console.summary(
      _config_with_evals(), "/w", step=150, total_steps=300,
      evals=dict(zeroshot=dict(top1=0.1, num_classes=36.0)), eval_steps=dict(zeroshot=100),
      checkpoint_dir="/w/checkpoints/150", wall_seconds=100, eval_seconds=0, stopped="signal 15",
      argv=["x/main.py", "--config=c.py:ema", "--workdir=/w", "--config.stop_at_step", "150",
            "--config.stop_at_step=150", "--config.lr=0.1"])
  assert text.startswith("Stopped at step 150 of 300 (signal 15) after 1m40s.")
  assert "  zeroshot  top1 0.100  (chance 0.028 = 1/36)  (at step 100)" in text
  assert ("Resume (from the latest checkpoint): maskclip-train --config=c.py:ema --workdir=/w "
          "--config.lr=0.1\n") in text


# ---------------------------------------------------------------- what is logged
def _record(level, pathname, msg, *args, name="absl"):
  return logging.LogRecord(name, level, pathname, 1, msg, args, None)


def test_without_verbose_only_our_info_lines_and_marked_warnings_show():
  own = os.path.join(os.path.dirname(console.__file__), "train.py")
  library = "/site-packages/tensorflow_datasets/core/reader.py"
  keep, formatter = console._QuietFilter(), console._PlainFormatter()
  assert keep.filter(_record(logging.INFO, own, "Resumed from step %d.", 6))
  assert not keep.filter(_record(logging.INFO, library, "Creating a tf.data.Dataset"))
  assert not keep.filter(_record(logging.WARNING, "/x/tensorflow_datasets/core/features/feature.py",
                                 "`FeatureConnector.dtype` is deprecated. Please change"))
  warning = _record(logging.WARNING, library, "Disk %s is slow", "/d")
  assert keep.filter(warning) and formatter.format(warning) == "WARNING: Disk /d is slow"
  assert formatter.format(_record(logging.INFO, own, "step %d", 3)) == "step 3"
  # The registry's progress lines go to its own logger, which only --verbose shows.
  from maskclip_jax.evaluation import registry  # pylint: disable=g-import-not-at-top
  progress = _record(logging.INFO, registry.__file__, "Eval %s at step %d", "zs", 1,
                     name=registry._progress.name)
  assert not keep.filter(progress)
  assert keep.filter(_record(logging.WARNING, registry.__file__, "Eval %s failed", "zs",
                             name=registry._progress.name))


def test_native_info_lines_are_recognised():
  chatter = ("I0000 00:00:1796438465.914843   31864 port.cc:153] oneDNN custom operations are on",
             "W1205 02:41:08.733668 140490262393216 local_rendezvous.cc:404] Local rendezvous",
             "WARNING: All log messages before absl::InitializeLog() is called are written to "
             "STDERR")
  assert all(console._NATIVE_CHATTER.match(line) for line in chatter)
  assert not console._NATIVE_CHATTER.match(
      "E0000 00:00:1796438465.914843   31864 cuda.cc:1] failed")
