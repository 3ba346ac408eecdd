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


def make_tiny_config(**maskclip_overrides):
  """A MaskCLIP small enough to train in seconds: 32 px, patch 8 (16 patches), width 32."""
  from maskclip_jax.config_defaults import base_config  # after the device count is set
  config = base_config()
  config.batch_size = 8
  config.total_steps = 100
  config.model.size = None
  config.model.embed_dim = 32
  config.model.vision.update(image_size=32, patch_size=8, width=32, layers=2, heads=2)
  config.model.text.update(context_length=16, vocab_size=49408, width=32, layers=2, heads=2)
  config.model.text_decoder.layers = 1
  config.maskclip.num_codewords = 64
  config.maskclip.update(maskclip_overrides)
  config.optim.lr = 1e-3
  return config


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
