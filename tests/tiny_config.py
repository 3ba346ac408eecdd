"""The tests' tiny MaskCLIP, importable without side effects, and as a config file.

conftest.py fixes the number of fake CPU devices when it is imported, so processes that set
their own (launch/local.sh) cannot import it; they read this file instead:
    maskclip-train --config tests/tiny_config.py --workdir W
trains the same model on the synthetic data at 32 px.
"""
from maskclip_jax.config_defaults import base_config
from maskclip_jax.evaluation import eval_config


def make_tiny_config(**maskclip_overrides):
  """A MaskCLIP small enough to train in seconds: 32 px, patch 8 (16 patches), width 32."""
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


def get_config(arg=None):
  """make_tiny_config() on a small synthetic set, logging and saving every step."""
  del arg
  config = make_tiny_config()
  config.total_steps = 5
  config.optim.warmup_steps = 0
  config.input.train_data = "synthetic"
  config.input.eval_data = "synthetic"
  config.input.image_size = 32
  config.input.context_length = 16
  config.input.shuffle_buffer = 64
  config.input.synthetic_train_size = 256
  config.input.synthetic_test_size = 64
  config.checkpoint.every_steps = 1
  config.checkpoint.keep = None
  config.log_every_steps = 1
  # Zero-shot at the end: 64 test images in global batches of 24 (12 per process with 2), so
  # the last batch is partly padding.
  config.evals.zeroshot = eval_config("zeroshot", data="synthetic:test", batch_size=24)
  return config
