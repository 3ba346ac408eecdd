"""Train-step speed and memory: our variants against our CLIP and against open_clip's own step.

  # this CPU (f32): CLIP, MaskCLIP and the efficient variant, and open_clip's step
  python bench/train_step.py --size ViT-S/16 --batch 32 --steps 3 --warmup 1 --open_clip
  # a GPU (bf16 matrix products, AMP bf16 for open_clip): the README's table, one command
  python bench/train_step.py --size ViT-B/16 --batch 256 --variants clip maskclip \
      --open_clip --open_clip_modes eager compile --json steps.jsonl

Every variant runs in its own child process, so that its peak device memory is its own and a
variant that fails (a kernel that rejects a shape, an out-of-memory) costs only its own line.
For each it prints img/s, the step time against CLIP's, the analytic FLOPs of the step
(maskclip_jax/flops.py: the count the trainer's logged `mfu` uses) and XLA's count beside it
(complete on CPU; on GPU the matrix products are library calls XLA does not count), analytic
TFLOP/s and MFU, XLA's temporary buffer per step, and the device's peak memory (GPU/TPU).
`--open_clip` runs open_clip's step (bench/open_clip_step.py: AMP bf16 + fused AdamW on GPU,
f32 on CPU; eager and/or torch.compile) on the same device and prints our CLIP's ratio to it.
`--max_batch` finds the largest batch each variant fits.

On a CPU host the script runs under jemalloc (no decay) and XLA's oneDNN dots, as the
trainer does (maskclip_jax/cpu_defaults.py), and open_clip's child inherits the allocator:
both frameworks are measured alike. MASKCLIP_CPU_DEFAULTS=0 turns that off.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from maskclip_jax import cpu_defaults  # noqa: E402  (stdlib only: before jax starts)

if __name__ == "__main__":
  cpu_defaults.apply()
# The open_clip child shares the GPU: jax must not take 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from open_clip_step import run_open_clip  # noqa: E402  (bench/, stdlib only)

VARIANTS = ("clip", "pixel", "feature_online", "ema", "maskclip", "efficient")
GIB = 2 ** 30


# ------------------------------------------------------------------------- one variant (child)

def make_batch(config, rng):
  """Random uint8 (or normalised f32) images and CLIP-shaped captions: SOT, words, EOT, 0s."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from maskclip_jax.models.sizes import resolve_specs  # pylint: disable=g-import-not-at-top
  from maskclip_jax.models.vocabulary import EOT_ID, SOT_ID  # pylint: disable=g-import-not-at-top
  _, vision, text_spec, _, _ = resolve_specs(config.model)
  size, length = vision.image_size, text_spec.context_length
  images = rng.integers(0, 256, (config.batch_size, size, size, 3), dtype=np.uint8)
  if config.input.image_dtype == "float32":  # what the host pipeline hands over
    images = ((images - 127.5) / 64).astype(np.float32)
  text = np.zeros((config.batch_size, length), np.int32)
  for i in range(config.batch_size):
    n = rng.integers(8, min(30, length - 2))
    text[i, 0], text[i, 1:n + 1], text[i, n + 1] = SOT_ID, rng.integers(1, SOT_ID, n), EOT_ID
  return dict(image=images, text=text)


def bench_config(args, variant, batch_size):
  from maskclip_jax.config_defaults import apply_variants, base_config  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  config = apply_variants(base_config(), [variant])
  config.model.size = args.size
  config.model.dtype = (("float32" if jax.default_backend() == "cpu" else "bfloat16")
                        if args.dtype == "auto" else args.dtype)
  config.model.attention = args.attention
  config.model.remat = args.remat
  config.model.scan_layers = args.scan_layers
  config.input.image_dtype = args.image_dtype
  config.batch_size = batch_size
  if args.layers:  # a shallower model of the same widths (smoke tests)
    for tower in (config.model.vision, config.model.text):
      tower.layers = args.layers
  return config


def compile_step(config):
  """(compiled step, state, device batch, model) for `config` on every local device."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from maskclip_jax import sharding, train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  from maskclip_jax.models.maskclip import build_model  # pylint: disable=g-import-not-at-top
  from maskclip_jax.optimizer import make_optimizer  # pylint: disable=g-import-not-at-top
  model = build_model(config.model, config.maskclip)
  tx = make_optimizer(config)
  mesh = sharding.make_mesh(config.mesh)
  state, shardings = sharding.create_sharded_state(
      lambda: train_step_lib.init_train_state(model, config, tx, jax.random.PRNGKey(0)), mesh)
  step = sharding.compile_train_step(train_step_lib.make_train_step(model, config, tx), mesh,
                                     shardings)
  batch = jax.device_put(make_batch(config, np.random.default_rng(0)),
                         sharding.batch_sharding(mesh))
  return step.lower(state, batch).compile(), state, batch, model


def memory_bytes(compiled):
  """XLA's buffers of one step: (temporaries, arguments + outputs not aliased)."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return float("nan"), float("nan")
  temp = analysis.temp_size_in_bytes
  io = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes)
  return temp, io


def measure(args, variant):
  """Times one variant; returns its result record."""
  import jax  # pylint: disable=g-import-not-at-top
  from maskclip_jax import flops as flops_lib  # pylint: disable=g-import-not-at-top
  config = bench_config(args, variant, args.batch)
  start = time.perf_counter()
  compiled, state, batch, model = compile_step(config)
  compile_s = time.perf_counter() - start
  analytic = flops_lib.train_step_flops(model, config, config.batch_size)
  num_devices = jax.device_count()
  xla = flops_lib.xla_flops(compiled) * num_devices  # cost_analysis is per device
  temp, io = memory_bytes(compiled)
  times = []
  for i in range(args.warmup + args.steps):
    begin = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    if i >= args.warmup:
      times.append(time.perf_counter() - begin)
  seconds = statistics.median(times)
  stats = jax.devices()[0].memory_stats() or {}
  peak = flops_lib.peak_flops_per_device(config)
  device = jax.devices()[0]
  return dict(
      name=f"ours-{variant}", variant=variant, size=args.size, batch=config.batch_size,
      dtype=config.model.dtype, attention=config.model.attention, remat=config.model.remat,
      scan_layers=config.model.scan_layers,
      device=device.platform, device_kind=device.device_kind, num_devices=num_devices,
      s_per_step=seconds, img_s=config.batch_size / seconds, compile_s=compile_s,
      analytic_gflop=analytic.total / 1e9, xla_gflop=xla / 1e9,
      analytic_tflops=analytic.total / seconds / 1e12,
      mfu=flops_lib.mfu(analytic.total, seconds, num_devices, peak) if peak else None,
      peak_flops_per_device=peak, flops_breakdown={k: v / 1e9 for k, v in
                                                   analytic.breakdown().items()},
      temp_gb=temp / 1e9, io_gb=io / 1e9,
      peak_gb=stats["peak_bytes_in_use"] / 1e9 if "peak_bytes_in_use" in stats else None,
      loss=float(metrics["loss"]), jax=jax.__version__)


def fits(args, variant, batch_size) -> bool:
  """Whether a step of `batch_size` runs: on accelerators by running it (out-of-memory is an
  error there); on CPU, where running out of memory kills the process instead, by XLA's
  buffer sizes against the memory this host has free."""
  import jax  # pylint: disable=g-import-not-at-top
  config = bench_config(args, variant, batch_size)
  try:
    compiled, state, batch, _ = compile_step(config)
    if jax.default_backend() == "cpu":
      temp, io = memory_bytes(compiled)
      available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
      return temp + io < 0.9 * available
    jax.block_until_ready(compiled(state, batch))
    return True
  except Exception as e:  # pylint: disable=broad-except
    text = str(e)
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
      return False
    raise


def max_batch(args, variant) -> int:
  """Doubles from --batch while it fits, then bisects to a multiple of --max_batch_step."""
  import jax  # pylint: disable=g-import-not-at-top
  unit = max(args.max_batch_step, jax.device_count())
  good, bad = 0, None
  size = max(unit, args.batch // unit * unit)
  while bad is None and size <= args.max_batch_limit:
    if fits(args, variant, size):
      good, size = size, size * 2
    else:
      bad = size
  if bad is None:
    return good
  while bad - good > unit:
    middle = (good + bad) // 2 // unit * unit
    if middle in (good, bad):
      break
    good, bad = (middle, bad) if fits(args, variant, middle) else (good, middle)
  return good


def child(args):
  try:
    record = measure(args, args.child)
    if args.max_batch:
      record["max_batch"] = max_batch(args, args.child)
  except Exception as e:  # pylint: disable=broad-except
    record = dict(name=f"ours-{args.child}", variant=args.child, size=args.size,
                  error=f"{type(e).__name__}: {str(e)[:600]}")
  print("RESULT " + json.dumps(record), flush=True)


# ------------------------------------------------------------------------------- parent

def run_child(args, variant):
  cmd = [sys.executable, os.path.abspath(__file__), "--child", variant]
  for name in ("size", "batch", "steps", "warmup", "dtype", "attention", "remat",
               "image_dtype", "max_batch_step", "max_batch_limit", "layers"):
    cmd += [f"--{name}", str(getattr(args, name))]
  if args.max_batch:
    cmd.append("--max_batch")
  if args.scan_layers:
    cmd.append("--scan_layers")
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if lines:
      return json.loads(lines[-1][len("RESULT "):])
    error = f"exit {proc.returncode}: {proc.stderr[-600:]}"
  except subprocess.TimeoutExpired:
    error = f"timed out after {args.timeout} s"
  return dict(name=f"ours-{variant}", variant=variant, size=args.size, error=error)


def format_ours(record, clip_seconds):
  if "error" in record:
    return f"{record['name']:22s} FAILED: {record['error']}"
  mfu = f"{record['mfu']:.1%}" if record.get("mfu") is not None else "n/a"
  peak = f"{record['peak_gb']:.1f} GB" if record.get("peak_gb") is not None else "n/a"
  ratio = f"x{record['s_per_step'] / clip_seconds:.2f}" if clip_seconds else "-"
  text = (f"{record['name']:22s} {record['s_per_step']:.4f} s/step {record['img_s']:8.1f} img/s"
          f"  {ratio} CLIP's time  {record['analytic_gflop']:.1f} GFLOP/step (XLA "
          f"{record['xla_gflop']:.1f})  {record['analytic_tflops']:.3g} TFLOP/s  MFU {mfu}  "
          f"temp {record['temp_gb']:.2f} GB  peak {peak}")
  if "max_batch" in record:
    text += f"  max batch {record['max_batch']}"
  return text


def format_open_clip(record):
  if "error" in record:
    return f"{record.get('name', 'open_clip'):22s} FAILED: {record['error'][:600]}"
  peak = f"{record['peak_gb']:.1f} GB" if record.get("peak_gb") is not None else "n/a"
  return (f"{record['name']:22s} {record['s_per_step']:.4f} s/step {record['img_s']:8.1f} img/s"
          f"  ({record.get('precision')}, torch {record.get('torch')})  peak {peak}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n", 2)[2])
  parser.add_argument("--size", default="ViT-S/16")
  parser.add_argument("--batch", type=int, default=32, help="global batch")
  parser.add_argument("--layers", type=int, default=0,
                      help="override both towers' depth (0: the size's own; for smoke tests)")
  parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--variants", nargs="+", default=["clip", "maskclip", "efficient"],
                      choices=VARIANTS)
  parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                      help="matrix products' dtype; auto: float32 on CPU, bfloat16 elsewhere")
  parser.add_argument("--attention", default="auto",
                      choices=("auto", "einsum", "dot_product_attention", "cudnn"))
  parser.add_argument("--remat", default="none", choices=("none", "full", "dots"))
  parser.add_argument("--scan_layers", action="store_true",
                      help="scan the blocks (remat saves memory only in a scanned stack)")
  parser.add_argument("--image_dtype", default="uint8", choices=("uint8", "float32"),
                      help="what the host hands the step (uint8 is normalised on the device)")
  parser.add_argument("--open_clip", action="store_true",
                      help="also time open_clip's step on this device and print the ratio")
  parser.add_argument("--open_clip_modes", nargs="+", default=["eager"],
                      choices=("eager", "compile"))
  parser.add_argument("--max_batch", action="store_true",
                      help="also find the largest batch each variant fits (slow: compiles)")
  parser.add_argument("--max_batch_step", type=int, default=8)
  parser.add_argument("--max_batch_limit", type=int, default=8192)
  parser.add_argument("--json", default=None, help="write every result as a JSON line here")
  parser.add_argument("--timeout", type=float, default=1800, help="seconds per variant")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return child(args)

  records = []
  variants = ["clip"] + [v for v in args.variants if v != "clip"]  # the baseline first
  clip_seconds = None
  for variant in variants:
    record = run_child(args, variant)
    records.append(record)
    if variant == "clip" and "error" not in record:
      clip_seconds = record["s_per_step"]
    print(format_ours(record, clip_seconds), flush=True)
  if args.open_clip:
    for record in run_open_clip(args.size, args.batch, args.steps, args.warmup,
                                modes=args.open_clip_modes, timeout=args.timeout):
      records.append(record)
      print(format_open_clip(record), flush=True)
      if clip_seconds and "error" not in record:
        ratio = record["s_per_step"] / clip_seconds
        records.append(dict(name=f"ratio-clip-vs-{record['name']}", ratio=ratio))
        print(f"{'':22s} our CLIP step: x{ratio:.2f} {record['name']}'s img/s", flush=True)
  if args.json:
    with open(args.json, "a") as f:
      for record in records:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
  main()
