"""Test-session set-up shared by every test module.

Two process-wide facts must be fixed before any test imports jax or tensorflow:
- torch must be imported before tensorflow (the other order segfaults), so it is imported here
  first when installed;
- the number of fake CPU devices is fixed when jax starts, so every test sees 8 and builds
  smaller meshes from a subset when it needs 1 device.
"""
import os
import sys

try:  # Optional: only the `torch` extra has it.
  import torch  # noqa: F401  pylint: disable=unused-import
except ImportError:
  pass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import chex  # noqa: E402

chex.set_n_cpu_devices(8)

# `configs/` lives beside the package, not inside it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
