"""bench/input_pipeline.py runs end to end (tiny sizes; the real figure is run by hand)."""
import importlib.util
import os

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                     "input_pipeline.py")


def test_bench_runs_and_reports_a_rate(tmp_path, capsys):
  spec = importlib.util.spec_from_file_location("input_pipeline_bench", BENCH)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  per_core = bench.main(["--num_shards=2", "--per_shard=12", "--source_size=64",
                         "--image_size=48", "--batch_size=8", "--seconds=1",
                         "--warmup_batches=1", "--shuffle_buffer=8",
                         f"--workdir={tmp_path}"])
  assert per_core > 0
  assert "images/s/core" in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path)) == ["00000.tar", "00001.tar"]
