"""The CPU defaults the CLIs apply before jax starts: jemalloc, by re-executing."""
import json
import os
import subprocess
import sys

import pytest

from maskclip_jax import cpu_defaults

# Applies the defaults, then (in the re-executed process too) prints what it runs under.
PROGRAM = ("from maskclip_jax import cpu_defaults; cpu_defaults.apply(); import json, os; "
           "print(json.dumps({k: os.environ.get(k) for k in "
           "('LD_PRELOAD', 'MALLOC_CONF', 'XLA_FLAGS')}))")


def _run(tmp_path, **env):
  environ = {k: v for k, v in os.environ.items()
             if k not in ("LD_PRELOAD", "MALLOC_CONF", "XLA_FLAGS", "JAX_PLATFORMS",
                          "_MASKCLIP_REEXEC", cpu_defaults.OPT_OUT)}
  environ.update(XDG_CACHE_HOME=str(tmp_path), **env)
  out = subprocess.run([sys.executable, "-c", PROGRAM], env=environ, capture_output=True,
                       text=True, timeout=300, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def test_a_cpu_host_gets_jemalloc(tmp_path):
  seen = _run(tmp_path, JAX_PLATFORMS="cpu")
  if cpu_defaults.find_jemalloc() is None:
    pytest.skip("libjemalloc2 is not installed here")
  assert seen["LD_PRELOAD"] == cpu_defaults.find_jemalloc()
  assert seen["MALLOC_CONF"] == cpu_defaults.JEMALLOC_CONF


def test_user_settings_are_kept_and_the_opt_out_works(tmp_path):
  seen = _run(tmp_path, JAX_PLATFORMS="cpu", LD_PRELOAD="", MALLOC_CONF="narenas:1",
              XLA_FLAGS="--xla_force_host_platform_device_count=2")
  assert seen["LD_PRELOAD"] == "" and seen["MALLOC_CONF"] == "narenas:1"
  assert seen["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
  assert _run(tmp_path, JAX_PLATFORMS="cpu", MASKCLIP_CPU_DEFAULTS="0") == dict(
      LD_PRELOAD=None, MALLOC_CONF=None, XLA_FLAGS=None)
  assert _run(tmp_path, JAX_PLATFORMS="cuda") == dict(   # an accelerator host: untouched
      LD_PRELOAD=None, MALLOC_CONF=None, XLA_FLAGS=None)


def test_flags_this_jaxlib_does_not_know_are_not_set(tmp_path, monkeypatch):
  # XLA aborts a process on an unknown flag; the probe runs in a child and is cached.
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert not cpu_defaults.xla_accepts(("--xla_no_such_flag_for_maskclip=1",))
  known = ("--xla_cpu_enable_fast_math=false",)
  assert cpu_defaults.xla_accepts(known)
  cached = json.loads(open(cpu_defaults._flags_cache_path()).read())  # pylint: disable=protected-access
  assert cached == {"flags": list(known), "ok": True}
