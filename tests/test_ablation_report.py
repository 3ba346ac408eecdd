"""bench/ablation.py's report: the mean +- std table, the Welch t against CLIP, the plots."""
import math
import os
import types

import numpy as np
import pytest

from conftest import load_module


@pytest.fixture(scope="module")
def ablation():
  return load_module("bench/ablation.py", "ablation")


def curves(top1, pointing, wall):
  return {"steps": [150, 300], "zeroshot_top1": [top1 / 2, top1],
          "pointing_game": [pointing / 2, pointing], "wall_clock_s": [wall / 2, wall],
          "step_time_s": [0.5, 0.5]}


def test_table_welch_t_and_plots(ablation, tmp_path):
  runs = {"clip": {"0": curves(0.10, 0.2, 100), "1": curves(0.12, 0.2, 110),
                   "2": curves(0.14, 0.2, 120)},
          "maskclip": {"0": curves(0.20, 0.3, 200), "1": curves(0.22, 0.3, 210),
                       "2": curves(0.24, 0.3, 220)}}
  table = ablation.aggregate(runs)
  mean, std, n = table["maskclip"]["zeroshot_top1"]
  assert (mean, n) == (pytest.approx(0.22), 3)
  assert std == pytest.approx(np.std([0.20, 0.22, 0.24], ddof=1))
  args = types.SimpleNamespace(steps=300, batch_note="64", seeds=[0, 1, 2], config="c.py",
                               data_variant="scenes")
  text = ablation.markdown(table, {"zeroshot_top1": 1 / 36}, args)
  assert "| maskclip | 0.220 +- 0.020 |" in text
  assert "| *chance* | 0.028 |" in text
  # +0.100 over a standard error of sqrt(2 * 0.02^2 / 3).
  t = 0.1 / math.sqrt(2 * 0.02 ** 2 / 3)
  assert f"+0.100 ({t:+.1f})" in text
  written = ablation.plot(runs, str(tmp_path))
  names = sorted(os.path.basename(p) for p in written)
  assert names == ["pointing_game.png", "zeroshot_top1.png"]
  assert all(os.path.getsize(p) > 5000 for p in written)
