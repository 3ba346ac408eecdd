"""The tests' tiny MaskCLIP (config_defaults.tiny_model, as `:runlocal` trains it), importable
without side effects, and as a config file.

conftest.py fixes the number of fake CPU devices when it is imported, so processes that set
their own (launch/local.sh) cannot import it; they read this file instead:
    maskclip-train --config tests/tiny_config.py --workdir W
trains the same model on the synthetic data at 32 px.
"""
from maskclip_jax.config_defaults import base_config, shrink_for_local_run, tiny_model
from maskclip_jax.evaluation import eval_config


def make_tiny_config(**maskclip_overrides):
  """config_defaults.tiny_model with 16-token captions, batch 8, 100 steps at lr 1e-3."""
  config = tiny_model(base_config())
  config.input.context_length = 16
  config.batch_size = 8
  config.total_steps = 100
  config.maskclip.update(maskclip_overrides)
  config.optim.lr = 1e-3
  return config


def get_config(arg=None):
  """`:runlocal` of make_tiny_config() for 5 steps, keeping every checkpoint."""
  del arg
  config = shrink_for_local_run(make_tiny_config())
  config.total_steps = 5
  config.checkpoint.keep = None
  # Zero-shot at the end: 64 test images in global batches of 24 (12 per process with 2), so
  # the last batch is partly padding.
  config.evals.zeroshot = eval_config("zeroshot", data="synthetic:test", batch_size=24)
  return config
