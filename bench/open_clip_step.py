"""open_clip's own CLIP train step, timed as its training script runs it: the baseline for ours.

  python bench/open_clip_step.py --size ViT-B/16 --batch 256 --steps 10 --warmup 3 \
      --modes eager compile [--device cuda|cpu] [--precision amp_bf16|fp32] [--json]
  python bench/open_clip_step.py --model_config '{"embed_dim": 32, ...}' --batch 4 --steps 2

The step is open_clip_train's (main.py / train.py): random init, AMP bf16 autocast (the default on
cuda; plain fp32 is the default on CPU, where bf16 is slower than f32), AdamW(lr 5e-4,
betas (0.9, 0.98), eps 1e-8, weight decay 0.2 except on gains, biases and logit_scale; fused on
cuda), ClipLoss, `zero_grad(set_to_none=True); backward(); step()`, then the logit_scale clamp.
TF32 matmuls and cudnn.benchmark are on for cuda as in open_clip's training. `compile` wraps the
model in torch.compile, as open_clip's `--torchcompile` does (the optimizer step stays eager).

Sizes are ours ('ViT-S/16', 'ViT-B/16', 'ViT-L/14' -> open_clip's 'ViT-S-16', ...; any other
open_clip model name is taken as is). 'ViT-Ti/16' is not in open_clip: it is built from the same
config as maskclip_jax.models.sizes.NAMED_SIZES (open_clip's head_width 64 gives its 3 heads).

Output: one JSON line per mode on stdout (a failing mode gives a line with `error` and the other
modes still run; the exit status is 1 if any failed). Without --json a readable summary of each
mode also goes to stderr. `peak_gb` is torch.cuda.max_memory_allocated on cuda; on CPU it is the
growth of the process's peak RSS (getrusage) over the mode, `peak_kind` says which: RSS peaks
cannot be reset, so for a second mode in one process it only counts growth past the first's peak.

bench/train_step.py calls `run_open_clip`, which runs this file in a subprocess: torch must not
share a process with tensorflow/jax (importing tensorflow before torch segfaults), and the child
inherits the environment, so LD_PRELOAD/MALLOC_CONF apply to both frameworks alike. This module
therefore imports only the standard library at module level; torch and open_clip are imported
inside the functions that run in the child.
"""
import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import time

# Ours -> open_clip's built-in config names (checked against open_clip 3.3's list_models()).
OPEN_CLIP_NAMES = {"ViT-S/16": "ViT-S-16", "ViT-B/16": "ViT-B-16", "ViT-L/14": "ViT-L-14"}

# Not in open_clip: the same towers as our ViT-Ti/16 (maskclip_jax/models/sizes.py). Written out
# rather than imported so that this file needs no maskclip_jax (nor jax) in the torch process.
# head_width 64 is open_clip's default, spelled out: 192 / 64 = our 3 heads.
CUSTOM_CONFIGS = {
    "ViT-Ti/16": dict(
        embed_dim=256,
        quick_gelu=False,
        vision_cfg=dict(image_size=224, patch_size=16, width=192, layers=12, head_width=64),
        text_cfg=dict(context_length=77, vocab_size=49408, width=256, heads=4, layers=12)),
}

MODES = ("eager", "compile")
PRECISIONS = ("amp_bf16", "fp32")
# CLIP's BPE start/end-of-text ids; the text tower pools at the EOT. maskclip_jax/models/
# vocabulary.py's SOT_ID / EOT_ID, written out as CUSTOM_CONFIGS is (no maskclip_jax here).
SOT, EOT = 49406, 49407

_SCRIPT = os.path.abspath(__file__)


# ----------------------------------------------------------------------------------------------
# Parent side: stdlib only.


def run_open_clip(size, batch, steps, warmup, modes=("eager",), device=None, precision=None,
                  model_config=None, timeout=900.0):
  """Runs this script in a subprocess and returns one result dict per mode, never raising.

  A mode whose line is missing (the child crashed, timed out, or printed nothing for it) gets a
  dict with `error` holding the reason and the tail of the child's stderr; on a timeout the modes
  that had finished keep their results.
  """
  modes = list(modes)
  cmd = [sys.executable, _SCRIPT, "--size", str(size), "--batch", str(batch), "--steps",
         str(steps), "--warmup", str(warmup), "--modes", *modes, "--json"]
  if device:
    cmd += ["--device", device]
  if precision:
    cmd += ["--precision", precision]
  if model_config is not None:
    cmd += ["--model_config", json.dumps(model_config)]
  failure = None
  # Its own session, so that a timeout kills torch.compile's worker processes too: they would
  # otherwise hold the pipes open and communicate() would wait on them.
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
  try:
    try:
      out, err = proc.communicate(timeout=timeout)
      if proc.returncode < 0:
        failure = f"open_clip_step.py killed by signal {-proc.returncode}"
      elif proc.returncode:
        failure = f"open_clip_step.py exited with status {proc.returncode}"
    except subprocess.TimeoutExpired:
      _kill_group(proc)
      out, err = proc.communicate()
      failure = f"open_clip_step.py timed out after {timeout:g} s"
  except BaseException:  # KeyboardInterrupt included: leave no child holding the accelerator.
    _kill_group(proc)
    proc.wait()
    raise
  results = {}
  for line in out.splitlines():
    line = line.strip()
    if not line.startswith("{"):
      continue
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and "name" in record:
      results[record["name"]] = record
  tail = err[-3000:].strip()
  records = []
  for mode in modes:
    name = f"open_clip-{mode}"
    if name in results:
      records.append(results[name])
    else:
      reason = failure or "open_clip_step.py printed no result for this mode"
      records.append(dict(name=name, size=str(size), batch=batch, device=device,
                          precision=precision,
                          error=f"{reason}; stderr tail:\n{tail}" if tail else reason))
  return records


def _kill_group(proc):
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


# ----------------------------------------------------------------------------------------------
# Child side: torch and open_clip, imported in main().


def resolve_model(size, model_config):
  """(open_clip built-in name, None) or (None, config dict); a ValueError names an unknown size."""
  import open_clip  # pylint: disable=import-outside-toplevel
  if model_config is not None:
    return None, model_config
  if size in CUSTOM_CONFIGS:
    return None, CUSTOM_CONFIGS[size]
  name = OPEN_CLIP_NAMES.get(size, size)
  if name in open_clip.list_models():
    return name, None
  raise ValueError(f"unknown size {size!r}: use one of "
                   f"{sorted(set(OPEN_CLIP_NAMES) | set(CUSTOM_CONFIGS))}, an open_clip model "
                   f"name (open_clip.list_models()), or --model_config")


def build_model(size, model_config, device):
  import open_clip  # pylint: disable=import-outside-toplevel
  name, cfg = resolve_model(size, model_config)
  # output_dict as the training script asks for it: ClipLoss takes the dict's entries.
  if name is not None:
    model = open_clip.create_model(name, pretrained=None, device=device, output_dict=True)
  else:
    model = open_clip.CLIP(**cfg, output_dict=True).to(device)
  return model.train()


def make_optimizer(model, device):
  """open_clip_train/main.py's AdamW: no weight decay on gains, biases and logit_scale."""
  import torch  # pylint: disable=import-outside-toplevel
  exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
  named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
  groups = [dict(params=[p for n, p in named if exclude(n, p)], weight_decay=0.0),
            dict(params=[p for n, p in named if not exclude(n, p)], weight_decay=0.2)]
  # fused: the fastest CUDA AdamW (the GPU reference figures used it); unavailable on CPU here.
  return torch.optim.AdamW(groups, lr=5e-4, betas=(0.9, 0.98), eps=1e-8,
                           fused=device == "cuda")


def make_batch(model, batch, device, generator):
  """Random images, and token ids shaped like a caption batch: SOT, 8-30 word ids, EOT, zeros.

  Real captions matter for the text tower: it pools at the argmax id (the EOT), and uniform
  random ids would put that anywhere in the 77 positions.
  """
  import torch  # pylint: disable=import-outside-toplevel
  res = model.visual.image_size
  res = res[0] if isinstance(res, (tuple, list)) else res
  context = model.context_length
  images = torch.randn(batch, 3, res, res, generator=generator)
  text = torch.zeros(batch, context, dtype=torch.long)
  longest = max(1, min(30, context - 2))
  lengths = torch.randint(min(8, longest), longest + 1, (batch,), generator=generator)
  for i, n in enumerate(lengths.tolist()):
    text[i, 0] = SOT
    text[i, 1:n + 1] = torch.randint(1, SOT, (n,), generator=generator)
    text[i, n + 1] = EOT
  return images.to(device), text.to(device)


def time_mode(mode, size, batch, steps, warmup, device, precision, model_config):
  """One mode's result dict: median step time over `steps` timed steps after `warmup`."""
  import contextlib  # pylint: disable=import-outside-toplevel
  import math  # pylint: disable=import-outside-toplevel
  import resource  # pylint: disable=import-outside-toplevel

  import open_clip  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  cuda = device == "cuda"
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
  torch.manual_seed(0)  # The same initial weights and data in every mode.
  model = build_model(size, model_config, device)
  opt = make_optimizer(model, device)
  loss_fn = open_clip.ClipLoss()
  step_model = torch.compile(model) if mode == "compile" else model
  images, text = make_batch(model, batch, device, torch.Generator().manual_seed(0))

  def autocast():
    if precision == "amp_bf16":
      return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()

  def step():
    opt.zero_grad(set_to_none=True)
    with autocast():
      loss = loss_fn(**step_model(images, text))
    loss.backward()
    opt.step()
    with torch.no_grad():  # open_clip's clamp to ln(100), after every step.
      model.logit_scale.clamp_(0, math.log(100))
    return loss

  try:
    sync()
    start = time.perf_counter()
    for _ in range(warmup):  # compilation (and cudnn.benchmark's search) happen here
      step()
    sync()
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
      sync()
      start = time.perf_counter()
      loss = step()
      sync()
      times.append(time.perf_counter() - start)
    loss = float(loss.detach())
    if cuda:
      peak_gb, peak_kind = torch.cuda.max_memory_allocated() / 1e9, "cuda_max_memory_allocated"
    else:
      rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
      peak_gb, peak_kind = (rss_after - rss_before) * 1024 / 1e9, "cpu_maxrss_growth"
  finally:
    # Free this mode's model, optimizer state, activations and compiled graphs before the next.
    del model, opt, step_model, images, text
    if mode == "compile":
      torch.compiler.reset()
    gc.collect()
    if cuda:
      torch.cuda.empty_cache()
  s_per_step = statistics.median(times)
  return dict(s_per_step=s_per_step, img_s=batch / s_per_step, peak_gb=peak_gb,
              peak_kind=peak_kind, loss=loss, compile_s=warmup_s, step_times=times)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--size", default="ViT-B/16",
                      help="ours (ViT-Ti/16, ViT-S/16, ViT-B/16, ViT-L/14) or an open_clip name; "
                           "only a label when --model_config is given")
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--steps", type=int, default=10, help="timed steps; their median is reported")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile_s)")
  parser.add_argument("--modes", nargs="+", choices=MODES, default=["eager"])
  parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                      help="default: cuda if available")
  parser.add_argument("--precision", choices=PRECISIONS, default=None,
                      help="default: amp_bf16 on cuda, fp32 on cpu")
  parser.add_argument("--model_config", default=None,
                      help="open_clip.CLIP(**config) as JSON, or a JSON file's path")
  parser.add_argument("--json", action="store_true",
                      help="JSON lines only (no readable summary on stderr)")
  args = parser.parse_args(argv)
  if args.steps < 1 or args.warmup < 0 or args.batch < 1:
    parser.error("need --steps >= 1, --warmup >= 0, --batch >= 1")
  model_config = None
  if args.model_config is not None:
    text = args.model_config
    if os.path.isfile(text):
      with open(text, encoding="utf-8") as f:
        text = f.read()
    model_config = json.loads(text)

  import open_clip  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
  precision = args.precision or ("amp_bf16" if device == "cuda" else "fp32")
  if device == "cuda":  # open_clip_train/main.py sets these whenever cuda is available.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = False
  common = dict(size=args.size, batch=args.batch, steps=args.steps, warmup=args.warmup,
                device=device, precision=precision, torch=torch.__version__,
                open_clip=open_clip.__version__, torch_threads=torch.get_num_threads())
  failed = False
  for mode in args.modes:
    record = dict(name=f"open_clip-{mode}", **common)
    try:
      record["device_name"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
      record.update(time_mode(mode, args.size, args.batch, args.steps, args.warmup, device,
                              precision, model_config))
    except Exception as e:  # pylint: disable=broad-except  # report it; the next mode still runs
      failed = True
      record["error"] = f"{type(e).__name__}: {e}"
    # Out here, not in the handler: the exception's traceback holds the failed mode's frames
    # (and their tensors, after an out-of-memory) until the handler ends.
    gc.collect()
    if device == "cuda":
      torch.cuda.empty_cache()
    print(json.dumps(record), flush=True)
    if not args.json:
      print(summary(record), file=sys.stderr, flush=True)
  return 1 if failed else 0


def summary(r):
  head = f"{r['name']} {r['size']} batch {r['batch']} {r['device']} {r['precision']}"
  if "error" in r:
    return f"{head}: ERROR {r['error']}"
  peak = "" if r["peak_gb"] is None else f", peak {r['peak_gb']:.2f} GB ({r['peak_kind']})"
  return (f"{head}: {r['s_per_step']:.4f} s/step, {r['img_s']:.1f} img/s{peak}, "
          f"loss {r['loss']:.4f}, warm-up {r['compile_s']:.1f} s")


if __name__ == "__main__":
  sys.exit(main())
