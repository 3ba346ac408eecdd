"""Train-step throughput: MaskCLIP vs the CLIP baseline, same size, batch and process.

  python bench/train_step.py --size ViT-S/16 --batch 32 --steps 5

Prints img/s for each, their ratio (the paper's peer measured MaskCLIP at 1.56x CLIP's step
time), XLA's FLOP count per step and the achieved FLOP/s. CLIP here is the same step with
w_dist = w_mlm = 0, so the masked branches and decoders are not built.
For steadier CPU numbers run under jemalloc
(LD_PRELOAD=libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1).
"""
import argparse
import statistics
import time

import jax
import numpy as np

from maskclip_jax import sharding, train_step as train_step_lib
from maskclip_jax.config_defaults import base_config
from maskclip_jax.models.maskclip import build_model
from maskclip_jax.optimizer import make_optimizer


def make_batch(config, rng):
  size = build_model(config).vision.image_size
  images = rng.normal(size=(config.batch_size, size, size, 3)).astype(np.float32)
  text = np.zeros((config.batch_size, 77), np.int32)
  for i in range(config.batch_size):
    n = rng.integers(8, 30)
    text[i, 0], text[i, 1:n + 1], text[i, n + 1] = 49406, rng.integers(1, 49406, n), 49407
  return dict(image=images, text=text)


def time_steps(config, batch, warmup, steps):
  """Returns (median seconds per step, FLOPs per step from XLA's cost analysis)."""
  model = build_model(config)
  tx = make_optimizer(config)
  mesh = sharding.make_mesh(config.mesh)
  state, shardings = sharding.create_sharded_state(
      lambda: train_step_lib.init_train_state(model, config, tx, jax.random.PRNGKey(0)), mesh)
  step = sharding.compile_train_step(train_step_lib.make_train_step(model, config, tx), mesh,
                                     shardings)
  batch = jax.device_put(batch, sharding.batch_sharding(mesh))
  compiled = step.lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return statistics.median(times), flops


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="ViT-S/16")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5, help="timed steps (median is reported)")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--dtype", default="float32")
  args = parser.parse_args()

  results = {}
  batch = None
  for name, weight in (("CLIP", 0.0), ("MaskCLIP", 0.05)):
    config = base_config()
    config.model.size = args.size
    config.model.dtype = args.dtype
    config.batch_size = args.batch
    config.maskclip.w_dist = config.maskclip.w_mlm = weight
    if batch is None:
      batch = make_batch(config, np.random.default_rng(0))
    seconds, flops = time_steps(config, batch, args.warmup, args.steps)
    results[name] = seconds
    print(f"{name:9s} {args.size} batch {args.batch}: {seconds:.3f} s/step  "
          f"{args.batch / seconds:.2f} img/s  {flops / 1e9:.1f} GFLOP/step  "
          f"{flops / seconds / 1e9:.1f} GFLOP/s  ({jax.device_count()} x "
          f"{jax.devices()[0].device_kind})", flush=True)
  print(f"MaskCLIP/CLIP step time ratio: {results['MaskCLIP'] / results['CLIP']:.2f}  "
        f"(img/s ratio {results['CLIP'] / results['MaskCLIP']:.2f})")


if __name__ == "__main__":
  main()
