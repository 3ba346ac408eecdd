"""Test-session set-up, and the fixtures and helpers that several test modules share.

Two process-wide facts must be fixed before any test imports jax or tensorflow:
- torch must be imported before tensorflow (the other order segfaults), so it is imported here
  first when installed;
- the number of fake CPU devices is fixed when jax starts, so every test sees 8 and builds
  smaller meshes from a subset when it needs 1 device.
"""
import importlib.util
import os
import subprocess
import sys
import threading
import time

try:  # Optional: only the `torch` extra has them. torchvision too segfaults after tensorflow.
  import torch  # noqa: F401  pylint: disable=unused-import
  import torchvision  # noqa: F401  pylint: disable=unused-import
except ImportError:
  pass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import chex  # noqa: E402

chex.set_n_cpu_devices(8)

# The repository root. `configs/` lives there, beside the package, not inside it.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import pytest  # noqa: E402

# After the device count is set. tests/ is on sys.path (pytest puts conftest's folder there).
from tiny_config import make_tiny_config  # noqa: E402,F401


@pytest.fixture
def tiny_config():
  return make_tiny_config


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """One TFDS directory for the session: each synthetic set is built there once, by the first
  test (or subprocess) that reads it, and the tests after it read that build."""
  return str(tmp_path_factory.mktemp("tfds"))


def tiny_train_config(tfds_dir, **overrides):  # pylint: disable=redefined-outer-name
  """The trainer's local-run config on the synthetic set in `tfds_dir`: 12 steps, asynchronous
  checkpoints every 6, logs every 3; then `overrides` ("section.field": value); locked."""
  from maskclip_jax.config_defaults import base_config, shrink_for_local_run
  config = shrink_for_local_run(base_config())
  config.input.tfds_data_dir = tfds_dir
  config.total_steps = 12
  config.checkpoint.every_steps = 6
  config.checkpoint.async_save = True
  config.log_every_steps = 3
  for key, value in overrides.items():
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
  config.lock()
  return config


def input_config(**fields):
  """The input pipeline's defaults at 32 px, then `fields` (shuffle_buffer, cycle_length, ...)."""
  from maskclip_jax.data import config as config_lib
  config = config_lib.input_config_defaults()
  config.image_size = 32
  config.update(fields)
  return config


def read_state(workdir, step=None):
  """The train state checkpointed in `workdir` at `step` (default: the latest), in numpy."""
  from maskclip_jax import checkpoint
  state, _ = checkpoint.load_state_numpy(workdir, step)
  return state


def assert_bit_identical(a, b):
  """Two pytrees hold the same values bit for bit; a difference names the leaf's path."""
  import jax
  import numpy as np
  jax.tree_util.tree_map_with_path(
      lambda path, x, y: np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path)),
      a, b)


def fresh_train_state(config, seed=0):
  """(model, fresh train state) for `config`. Jitted: eager init dispatches op by op and takes
  several times longer."""
  import jax
  from maskclip_jax import train_step
  from maskclip_jax.models.maskclip import build_model
  from maskclip_jax.optimizer import make_optimizer
  model = build_model(config.model, config.maskclip)
  state = jax.jit(lambda rng: train_step.init_train_state(model, config, make_optimizer(config),
                                                          rng))(jax.random.PRNGKey(seed))
  return model, state


def randomised(tree, seed, scale=0.05):
  """Every leaf moved off its init value (zero biases, unit scales) by `scale` times Gaussian
  noise, as float32 numpy arrays, so that swapped or misplaced parameters show."""
  import jax
  import numpy as np
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [
      np.asarray(leaf, np.float32) + scale * rng.standard_normal(np.shape(leaf)).astype(np.float32)
      for leaf in leaves])


def random_batch(seed, batch_size=8, image_size=32, context_length=16, caption_length=8):
  """Random images and CLIP-shaped captions: SOT, distinct word ids, EOT, zero padding."""
  import numpy as np
  from maskclip_jax.models.vocabulary import EOT_ID, SOT_ID
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch_size, image_size, image_size, 3)).astype(np.float32)
  text = np.zeros((batch_size, context_length), np.int32)
  for i in range(batch_size):
    n = rng.integers(3, caption_length + 1)
    text[i, 0] = SOT_ID
    text[i, 1:n + 1] = rng.integers(1, SOT_ID, size=n)
    text[i, n + 1] = EOT_ID
  return dict(image=images, text=text)


# ---------------------------------------------------------------- scripts and subprocesses
def load_module(path, name):
  """The Python file at `path` (from the repository root: bench/ and configs/ are scripts, not
  packages) loaded as a module named `name`."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class Run:
  """`maskclip-train` in a subprocess (by default the paper config's runlocal variant), its
  output collected as it comes."""

  def __init__(self, workdir, tfds_dir, *flags,  # pylint: disable=redefined-outer-name
               config="configs/maskclip_vit_b16_yfcc15m.py:runlocal"):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)
    command = [sys.executable, "-m", "maskclip_jax.cli.train", f"--config={REPO}/{config}",
               f"--workdir={workdir}", f"--config.input.tfds_data_dir={tfds_dir}", *flags]
    self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
    self.lines = []
    self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout),
                                    daemon=True)
    self._reader.start()

  @property
  def output(self):
    return "".join(self.lines)


def finished(run, timeout=600):
  """Waits for a Run to end: (its exit code, its whole output)."""
  run.process.wait(timeout=timeout)
  run._reader.join(timeout=30)  # pylint: disable=protected-access
  return run.process.returncode, run.output


def wait_for(predicate, timeout, run):
  """Polls `predicate` until it holds (True), or `timeout` seconds pass or the Run ends (False)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if run.process.poll() is not None:
      return False
    time.sleep(0.01)
  return False
