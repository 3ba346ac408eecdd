"""Train-step throughput of ablation variants against the CLIP baseline, same size, batch, process.

  python bench/train_step.py --size ViT-S/16 --batch 32 --steps 5 [--variants clip maskclip ...]

Variants are the config variants of config_defaults.ABLATION_VARIANTS (default: clip, maskclip,
efficient). Prints img/s for each, its step time against CLIP's (the paper's peer measured
MaskCLIP at 1.56x CLIP's step time), XLA's FLOP count per step and the achieved FLOP/s. CLIP is
the same step with w_dist = w_mlm = 0, so the masked branches and decoders are not built;
`efficient` runs the online image tower once, on the 25% visible patches.
For steadier CPU numbers run under jemalloc
(LD_PRELOAD=libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1).
"""
import argparse
import gc
import statistics
import time

import jax
import numpy as np

from maskclip_jax import sharding, train_step as train_step_lib
from maskclip_jax.config_defaults import ABLATION_VARIANTS, apply_variants, base_config
from maskclip_jax.models.maskclip import build_model
from maskclip_jax.optimizer import make_optimizer


def make_batch(config, rng):
  size = build_model(config).vision.image_size
  images = rng.integers(0, 256, (config.batch_size, size, size, 3), dtype=np.uint8)
  if config.input.image_dtype == "float32":  # what the host pipeline hands over
    images = ((images - 127.5) / 64).astype(np.float32)
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
  parser.add_argument("--image_dtype", default="uint8", choices=("uint8", "float32"),
                      help="what the host hands the step (uint8 is normalised on the device)")
  parser.add_argument("--variants", nargs="+", default=["clip", "maskclip", "efficient"],
                      choices=sorted(ABLATION_VARIANTS))
  args = parser.parse_args()

  variants = ["clip"] + [v for v in args.variants if v != "clip"]  # the baseline first
  results = {}
  for name in variants:
    config = apply_variants(base_config(), [name])
    config.model.size = args.size
    config.model.dtype = args.dtype
    config.input.image_dtype = args.image_dtype
    config.batch_size = args.batch
    batch = make_batch(config, np.random.default_rng(0))
    seconds, flops = time_steps(config, batch, args.warmup, args.steps)
    # Free this variant's state and executable before the next one compiles (at ViT-B/16 a
    # 24 GB host otherwise runs out of memory by the third variant).
    gc.collect()
    jax.clear_caches()
    results[name] = seconds
    print(f"{name:15s} {args.size} batch {args.batch}: {seconds:.3f} s/step  "
          f"{args.batch / seconds:.2f} img/s  x{seconds / results['clip']:.2f} CLIP's time  "
          f"{flops / 1e9:.1f} GFLOP/step  {flops / seconds / 1e9:.1f} GFLOP/s  "
          f"({jax.device_count()} x {jax.devices()[0].device_kind})", flush=True)


if __name__ == "__main__":
  main()
