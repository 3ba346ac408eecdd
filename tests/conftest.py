"""Test-session set-up shared by every test module.

Two process-wide facts must be fixed before any test imports jax or tensorflow:
- torch must be imported before tensorflow (the other order segfaults), so it is imported here
  first when installed;
- the number of fake CPU devices is fixed when jax starts, so every test sees 8 and builds
  smaller meshes from a subset when it needs 1 device.
"""
import os
import sys

try:  # Optional: only the `torch` extra has them. torchvision too segfaults after tensorflow.
  import torch  # noqa: F401  pylint: disable=unused-import
  import torchvision  # noqa: F401  pylint: disable=unused-import
except ImportError:
  pass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import chex  # noqa: E402

chex.set_n_cpu_devices(8)

# `configs/` lives beside the package, not inside it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402

# After the device count is set. tests/ is on sys.path (pytest puts conftest's folder there).
from tiny_config import make_tiny_config  # noqa: E402,F401


@pytest.fixture
def tiny_config():
  return make_tiny_config


def random_batch(seed, batch_size=8, image_size=32, context_length=16, caption_length=8):
  """Random images and CLIP-shaped captions: SOT, distinct word ids, EOT, zero padding."""
  import numpy as np
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch_size, image_size, image_size, 3)).astype(np.float32)
  text = np.zeros((batch_size, context_length), np.int32)
  for i in range(batch_size):
    n = rng.integers(3, caption_length + 1)
    text[i, 0] = 49406
    text[i, 1:n + 1] = rng.integers(1, 49406, size=n)
    text[i, n + 1] = 49407
  return dict(image=images, text=text)
