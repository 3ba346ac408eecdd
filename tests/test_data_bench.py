"""bench/input_pipeline.py runs end to end (tiny sizes; the real figure is run by hand)."""
import os

from conftest import load_module


def test_bench_runs_and_reports_a_rate(tmp_path, capsys):
  bench = load_module("bench/input_pipeline.py", "input_pipeline_bench")
  per_core = bench.main(["--num_shards=2", "--per_shard=12", "--source_size=64",
                         "--image_size=48", "--batch_size=8", "--seconds=1",
                         "--warmup_batches=1", "--shuffle_buffer=8",
                         f"--workdir={tmp_path}"])
  assert per_core > 0
  assert "images/s/core" in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path)) == ["00000.tar", "00001.tar"]
