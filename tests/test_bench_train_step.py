"""bench/train_step.py end to end at a shallow size: every variant in its own child, the JSON
records the README's tables are built from, and the MFU the trainer logs."""
import json
import os
import subprocess
import sys

from conftest import REPO


def test_bench_prints_and_records_each_variant(tmp_path):
  out = tmp_path / "steps.jsonl"
  # One CPU device, as a user's run has (conftest's XLA_FLAGS ask for 8).
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(MASKCLIP_CPU_DEFAULTS="0")
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "bench", "train_step.py"), "--size", "ViT-Ti/16",
       "--layers", "1", "--batch", "4", "--steps", "1", "--warmup", "0", "--variants", "clip",
       "efficient", "--remat", "dots", "--scan_layers", "--json", str(out), "--timeout", "600"],
      capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-2000:]
  records = {r["name"]: r for r in map(json.loads, out.read_text().splitlines())}
  assert set(records) == {"ours-clip", "ours-efficient"}, records
  for name, record in records.items():
    assert "error" not in record, record
    assert record["s_per_step"] > 0 and record["img_s"] == 4 / record["s_per_step"]
    assert record["remat"] == "dots" and record["scan_layers"] and record["dtype"] == "float32"
    # The analytic count (the MFU numerator) is XLA's within the tolerance of the CPU cross-
    # check; remat's recomputation adds to XLA's count only.
    assert 0.9 < record["xla_gflop"] / record["analytic_gflop"] < 1.5, record
    assert record["mfu"] == (record["analytic_gflop"] * 1e9 / record["s_per_step"]
                             / record["peak_flops_per_device"])
    assert record["temp_gb"] > 0
    assert record["flops_breakdown"]["total"] == record["analytic_gflop"]
    assert name in proc.stdout
  assert records["ours-efficient"]["flops_breakdown"]["teacher"] > 0
  assert "x1.00 CLIP's time" in proc.stdout
