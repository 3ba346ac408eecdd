"""maskclip-plot (maskclip_jax/plot.py): reading clu-written events (the latest value of a
repeated step, hparams left out), the panels drawn, the PNG itself, the CLI, and its errors."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from clu import metric_writers
from PIL import Image

from conftest import REPO
from maskclip_jax import plot

STEPS = list(range(10, 110, 10))  # log_every_steps=10, 100 steps
LAST = STEPS[-1]
TRAINING_GROUPS = [plot.LOSS, plot.TRAIN_ACCURACY, plot.OPTIMISATION, plot.THROUGHPUT]
EVAL_GROUPS = ["eval/knn", "eval/linear_probe", "eval/retrieval", "eval/zeroshot"]


def _training_scalars(step: int, offset: float = 0.0) -> dict:
  """What train.py writes every log interval for the MaskCLIP variant, with plausible values."""
  t = step / LAST
  return dict(
      loss=7.5 - 2 * t + offset, loss_i2t=3.5 - t, loss_t2i=3.4 - t, loss_dist=4.5 - 2 * t,
      loss_mlm=10.0 - 4 * t, acc_i2t=0.05 + 0.3 * t, acc_t2i=0.06 + 0.28 * t,
      mlm_accuracy=0.1 + 0.2 * t, lr=1e-3 * min(1.0, 3 * t) * (1 - 0.5 * t),
      grad_norm=30 / (1 + 5 * t), logit_scale=14.28 - 0.1 * t, ema_momentum=0.98 + 0.02 * t,
      codeword_perplexity=300 - 200 * t, step_time=1.1, images_per_second=58.0 + t,
      images_per_second_per_core=58.0 + t, skipped_samples=0.0, bad_shards=0.0,
      nonfinite_skipped_steps=0.0, mfu=0.002 * (58.0 + t))  # MFU is images/s x a constant


def _write_run(workdir: str):
  writer = metric_writers.create_default_writer(workdir)
  writer.write_hparams({"batch_size": 64, "optim.lr": 1e-3, "model.size": "tiny"})
  for step in STEPS:
    writer.write_scalars(step, _training_scalars(step))
    if step in (50, LAST):  # zero-shot every 50 steps
      writer.write_scalars(step, {"eval/zeroshot/top1": 0.05 + step / 500,
                                  "eval/zeroshot/top5": 0.2 + step / 300,
                                  "eval/zeroshot/num_examples": 1000.0,
                                  "eval/zeroshot/num_classes": 36.0})
  # The rest at the end only.
  writer.write_scalars(LAST, {
      **{f"eval/retrieval/{d}_r{k}": 0.02 * k + (0.01 if d == "t2i" else 0)
         for d in ("i2t", "t2i") for k in (1, 5, 10)},
      "eval/retrieval/mean_recall": 0.12, "eval/retrieval/num_images": 1000.0,
      "eval/retrieval/num_captions": 1000.0})
  writer.write_scalars(LAST, {"eval/knn/top1": 0.3, "eval/knn/top5": 0.6,
                              "eval/knn/num_train": 2000.0, "eval/knn/num_test": 1000.0,
                              "eval/knn/num_classes": 36.0})
  writer.write_scalars(LAST, {"eval/linear_probe/top1": 0.35, "eval/linear_probe/top5": 0.7,
                              "eval/linear_probe/l2": 1e-4, "eval/linear_probe/holdout_top1": 0.33,
                              "eval/linear_probe/num_train": 2000.0,
                              "eval/linear_probe/num_test": 1000.0})
  writer.close()
  # A resumed run (a second event file) logs steps 90 and 100 again: those values count.
  writer = metric_writers.create_default_writer(workdir)
  for step in STEPS[-2:]:
    writer.write_scalars(step, _training_scalars(step, offset=-1.0))
  writer.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("plot") / "tiny_run")
  os.makedirs(path)
  _write_run(path)
  return path


def test_reads_clu_events_latest_value_per_step(workdir):
  assert len(plot.event_files(workdir)) == 2
  scalars = plot.read_scalars(workdir)
  assert not [t for t in scalars if t.startswith("_hparams_")]
  steps, values = scalars["loss"]
  np.testing.assert_array_equal(steps, STEPS)
  expected = [_training_scalars(s, offset=-1.0 if s >= 90 else 0.0)["loss"] for s in STEPS]
  np.testing.assert_allclose(values, expected, rtol=1e-6)
  np.testing.assert_array_equal(scalars["eval/zeroshot/top1"][0], [50, LAST])
  np.testing.assert_array_equal(scalars["eval/knn/top1"][0], [LAST])


def test_metric_groups(workdir):
  groups = plot.metric_groups(plot.read_scalars(workdir))
  assert list(groups) == TRAINING_GROUPS + EVAL_GROUPS
  assert groups[plot.LOSS] == ["loss", "loss_dist", "loss_i2t", "loss_mlm", "loss_t2i"]
  assert groups[plot.TRAIN_ACCURACY] == ["acc_i2t", "acc_t2i", "mlm_accuracy"]
  assert groups[plot.OPTIMISATION] == ["lr", "grad_norm", "logit_scale", "ema_momentum",
                                       "codeword_perplexity"]
  assert groups[plot.THROUGHPUT] == ["images_per_second", "mfu"]
  assert groups["eval/zeroshot"] == ["eval/zeroshot/top1", "eval/zeroshot/top5"]
  assert groups["eval/knn"] == ["eval/knn/top1", "eval/knn/top5"]
  # In the order logged, without the counts and the probe's chosen L2.
  assert groups["eval/linear_probe"] == ["eval/linear_probe/top1", "eval/linear_probe/top5",
                                         "eval/linear_probe/holdout_top1"]
  assert groups["eval/retrieval"] == [f"eval/retrieval/{m}" for m in (
      "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mean_recall")]
  drawn = {t for tags in groups.values() for t in tags}
  assert not {t for t in drawn if t.rsplit("/", 1)[-1].startswith("num_")}


def test_metric_groups_skipped_and_other():
  one = (np.array([10]), np.array([1.0]))
  zero = (np.array([10]), np.array([0.0]))
  groups = plot.metric_groups({"loss": one, "bad_shards": zero, "skipped_samples": one,
                               "teacher_gap": one, "uptime": one})
  assert groups == {plot.LOSS: ["loss"], plot.SKIPPED: ["skipped_samples"],
                    plot.OTHER: ["teacher_gap"]}


def test_mfu_is_a_second_scale_of_images_per_second(workdir):
  scalars = plot.read_scalars(workdir)
  assert plot._mfu_per_image_rate(scalars) == pytest.approx(0.002, rel=1e-5)
  steps, mfu = scalars["mfu"]
  scalars["mfu"] = (steps, mfu * np.linspace(1, 2, len(steps)))  # not proportional: own axis
  assert plot._mfu_per_image_rate(scalars) is None


def test_chance_level(workdir):
  scalars = plot.read_scalars(workdir)
  assert plot.chance_level(scalars, "eval/zeroshot")[0] == pytest.approx(1 / 36)
  assert plot.chance_level(scalars, "eval/retrieval")[0] == pytest.approx(1 / 1000)
  assert plot.chance_level(scalars, "eval/knn")[0] == pytest.approx(1 / 36)
  assert plot.chance_level(scalars, "eval/linear_probe") is None  # num_classes not logged


def test_write_curves_png(workdir):
  path = plot.write_curves(workdir)
  assert path == os.path.join(workdir, "curves.png")
  with Image.open(path) as image:
    assert image.format == "PNG"
    width, height = image.size
    pixels = np.asarray(image.convert("RGB"))
  # 8 panels: 3 x 3 at ~1400 x 950.
  assert 1200 <= width <= 1600 and 700 <= height <= 1100, image.size
  assert pixels.std() > 20
  colours = {tuple(c) for c in pixels.reshape(-1, 3)[::7]}
  assert len(colours) > 50
  # The tab10 blue, orange and red of the first curves.
  for rgb in [(31, 119, 180), (255, 127, 14), (214, 39, 40)]:
    assert (np.abs(pixels.astype(int) - rgb).sum(-1) < 30).sum() > 100, rgb
  assert not os.path.exists(os.path.join(workdir, ".curves.png.partial"))


def test_cli(workdir, tmp_path):
  out = str(tmp_path / "run.png")
  result = subprocess.run([sys.executable, "-m", "maskclip_jax.cli.plot", "--workdir", workdir,
                           "--out", out], capture_output=True, text=True, cwd=REPO, timeout=120,
                          check=False)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == out
  with Image.open(out) as image:
    assert image.size[0] > 1000


def test_cli_help_and_missing_workdir(tmp_path):
  result = subprocess.run([sys.executable, "-m", "maskclip_jax.cli.plot", "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
  assert result.returncode == 0 and "maskclip-plot --workdir" in result.stdout
  missing = str(tmp_path / "no_such_run")
  result = subprocess.run([sys.executable, "-m", "maskclip_jax.cli.plot", "--workdir", missing],
                          capture_output=True, text=True, cwd=REPO, timeout=60, check=False)
  assert result.returncode == 2
  assert missing in result.stderr and "maskclip-train" in result.stderr


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist.*maskclip-train"):
    plot.write_curves(str(tmp_path / "no_such_run"))
  with pytest.raises(FileNotFoundError, match=f"No TensorBoard event files .* in "
                     f"{re.escape(str(tmp_path))}.*maskclip-train"):
    plot.write_curves(str(tmp_path))
  writer = metric_writers.create_default_writer(str(tmp_path))
  writer.write_hparams({"batch_size": 64})
  writer.close()
  with pytest.raises(ValueError, match="no scalars yet"):
    plot.write_curves(str(tmp_path))


def test_reading_and_drawing_never_import_tensorflow(workdir, tmp_path):
  code = ("import sys; from maskclip_jax import plot; "
          f"plot.write_curves({workdir!r}, {str(tmp_path / 'c.png')!r}); "
          "assert 'tensorflow' not in sys.modules and 'jax' not in sys.modules, 'imported'")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
