"""Fast defaults for runs on a CPU host, applied by the CLIs before jax is imported.

jemalloc without decay: XLA's CPU step allocates one large temporary buffer per step (6.3 GB at
ViT-S/16 batch 32); glibc's malloc returns it to the OS and page-faults it back every step,
which costs seconds. jemalloc that never decays keeps it mapped (~20% faster; torch gains
alike). It must be preloaded, so the process re-executes itself once with LD_PRELOAD.

Not set: XLA's oneDNN dot fusion (--xla_cpu_use_onednn=true
--xla_cpu_experimental_onednn_fusion_type=dot), 7% faster on a CLIP step, aborts jaxlib 0.10.2
with "partition compile failed" on the batched products of MaskCLIP's branches and of the
attention layout the towers use; `xla_accepts` is how a later default would check a flag.
Nothing changes on hosts with an accelerator, under a user's own LD_PRELOAD, or with
MASKCLIP_CPU_DEFAULTS=0. This module imports no jax.
"""
import glob
import json
import os
import subprocess
import sys
from importlib import metadata
from typing import Optional

OPT_OUT = "MASKCLIP_CPU_DEFAULTS"
JEMALLOC_GLOBS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so*", "/usr/lib/aarch64-linux-gnu/"
                  "libjemalloc.so*", "/usr/lib64/libjemalloc.so*", "/usr/lib/libjemalloc.so*",
                  "/usr/local/lib/libjemalloc.so*")
# Keep freed pages mapped: the step's temp buffer is reused every step.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
# XLA CPU flags set by default (none today: see the module docstring).
XLA_CPU_FLAGS = ()
# Accelerator device nodes: NVIDIA GPUs, TPU v4+ (accel), TPU v5+ (vfio).
ACCELERATOR_GLOBS = ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*", "/dev/vfio/[0-9]*")


def cpu_only_host(environ=os.environ) -> bool:
  platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms.split(",")[0] == "cpu"
  return not any(glob.glob(pattern) for pattern in ACCELERATOR_GLOBS)


def find_jemalloc() -> Optional[str]:
  for pattern in JEMALLOC_GLOBS:
    found = sorted(glob.glob(pattern))
    if found:
      return found[0]
  return None


def _flags_cache_path() -> str:
  try:
    version = metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    version = "unknown"
  cache = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
  return os.path.join(cache, "maskclip_jax", f"xla_cpu_flags_jaxlib_{version}.json")


def xla_accepts(flags) -> bool:
  """Whether this jaxlib knows `flags`: XLA aborts the process on an unknown flag, so a child
  process tries them once per jaxlib version (the answer is cached)."""
  path = _flags_cache_path()
  try:
    with open(path) as f:
      cached = json.load(f)
    if cached.get("flags") == list(flags):
      return bool(cached["ok"])
  except (OSError, ValueError, KeyError):
    pass
  env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
  try:
    ok = subprocess.run([sys.executable, "-c", "import jax.numpy as n; n.ones(2).sum()"],
                        env=env, capture_output=True, timeout=120).returncode == 0
  except (OSError, subprocess.SubprocessError):
    return False
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump({"flags": list(flags), "ok": ok}, f)
  except OSError:
    pass
  return ok


def apply(argv=None) -> None:
  """Sets the CPU defaults for this process; may re-execute it under jemalloc (same argv).

  Call first thing in a CLI, before jax (or torch) is imported.
  """
  environ = os.environ
  if environ.get(OPT_OUT, "1") == "0" or not cpu_only_host(environ):
    return
  user_flags = environ.get("XLA_FLAGS", "")
  missing = [flag for flag in XLA_CPU_FLAGS if flag.split("=")[0] not in user_flags]
  if missing and xla_accepts(missing):
    environ["XLA_FLAGS"] = " ".join([user_flags, *missing]).strip()
  if "LD_PRELOAD" in environ or environ.get("_MASKCLIP_REEXEC"):
    return  # the user chose an allocator, or this is the re-executed process
  jemalloc = find_jemalloc()
  if jemalloc is None:
    return  # README: `apt-get install libjemalloc2` for the faster allocator
  environ.update(LD_PRELOAD=jemalloc, _MASKCLIP_REEXEC="1")
  environ.setdefault("MALLOC_CONF", JEMALLOC_CONF)
  argv = list(argv if argv is not None else sys.orig_argv)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable] + argv[1:])
