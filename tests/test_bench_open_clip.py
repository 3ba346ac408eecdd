"""bench/open_clip_step.py: open_clip's train step as the baseline of bench/train_step.py.

Eager mode only: torch.compile on this CPU spends over a minute compiling even the tiny model.
"""
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO, load_module

SCRIPT = os.path.join(REPO, "bench", "open_clip_step.py")

# Small enough that the child's time is mostly importing torch and open_clip (~5 s).
TINY = dict(embed_dim=32,
            vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=2))


@pytest.fixture(scope="module")
def bench():
  return load_module(SCRIPT, "open_clip_step")


def test_module_imports_no_framework():
  # bench/train_step.py imports it beside jax and tensorflow: torch there would risk the
  # tensorflow-before-torch segfault, and the GPU machine has no tensorflow at all.
  code = (f"import sys; sys.path.insert(0, {os.path.dirname(SCRIPT)!r}); import open_clip_step; "
          "print(sorted(m for m in ('torch', 'open_clip', 'jax', 'tensorflow', 'maskclip_jax') "
          "if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_tiny_eager_step_is_timed(bench):
  (result,) = bench.run_open_clip("tiny", batch=4, steps=2, warmup=1, modes=["eager"],
                                  device="cpu", model_config=TINY, timeout=180)
  assert "error" not in result, result.get("error")
  assert (result["name"], result["batch"], result["device"], result["precision"]) == (
      "open_clip-eager", 4, "cpu", "fp32")
  assert result["device_name"] == "cpu" and result["peak_kind"] == "cpu_maxrss_growth"
  for key in ("s_per_step", "img_s", "compile_s"):
    assert math.isfinite(result[key]) and result[key] > 0, key
  assert result["img_s"] == pytest.approx(4 / result["s_per_step"])
  assert len(result["step_times"]) == 2
  assert math.isfinite(result["loss"]) and result["loss"] > 0  # InfoNCE of random pairs


def test_unknown_size_is_an_error_entry_per_mode(bench):
  results = bench.run_open_clip("ViT-X/99", batch=4, steps=1, warmup=0,
                                modes=["eager", "compile"], device="cpu", timeout=180)
  assert [r["name"] for r in results] == ["open_clip-eager", "open_clip-compile"]
  for r in results:
    assert "ViT-X/99" in r["error"] and "s_per_step" not in r


def test_timeout_is_an_error_entry_not_an_exception(bench):
  (result,) = bench.run_open_clip("tiny", batch=4, steps=1, warmup=0, modes=["eager"],
                                  device="cpu", model_config=TINY, timeout=0.5)
  assert "timed out" in result["error"] and result["name"] == "open_clip-eager"


def test_sizes_are_ours(bench):
  """Each size name builds open_clip's twin of our model of that name."""
  open_clip = pytest.importorskip("open_clip")
  from maskclip_jax.models.sizes import NAMED_SIZES  # pylint: disable=import-outside-toplevel

  def ours(size):
    s = NAMED_SIZES[size]
    v, t = s["vision"], s["text"]
    return (s["embed_dim"], v["image_size"], v["patch_size"], v["width"], v["layers"],
            v["heads"], t["context_length"], t["vocab_size"], t["width"], t["layers"], t["heads"])

  def theirs(cfg):
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    return (cfg["embed_dim"], v["image_size"], v["patch_size"], v["width"], v["layers"],
            v["width"] // v.get("head_width", 64), t["context_length"], t["vocab_size"],
            t["width"], t["layers"], t["heads"])

  assert set(bench.OPEN_CLIP_NAMES) | set(bench.CUSTOM_CONFIGS) == set(NAMED_SIZES)
  for size, name in bench.OPEN_CLIP_NAMES.items():
    assert theirs(open_clip.get_model_config(name)) == ours(size), size
  for size, cfg in bench.CUSTOM_CONFIGS.items():
    assert theirs(cfg) == ours(size), size
