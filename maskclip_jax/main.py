"""maskclip-train: train MaskCLIP (or CLIP) from a config file.

  maskclip-train --config configs/tiny_synthetic.py --workdir /tmp/tiny
  maskclip-train --config configs/maskclip_vit_b16_yfcc15m.py:runlocal --workdir /tmp/smoke \
      --config.total_steps=4
A workdir with checkpoints is resumed from its latest one. One run at a time holds a workdir
(WORKDIR/LOCK, workdir_lock.py): a second one stops at start naming the first; --break_lock
removes a lock left by a run that is gone.

Several processes (TPU pod workers, SLURM tasks, launch/local.sh) run the same command; they
find each other by themselves on TPU pods and under srun, or from --num_processes,
--coordinator_address and --process_id (see distributed.py and launch/).
"""
import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from maskclip_jax import cpu_defaults  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file, optionally with a variant: configs/x.py[:arg].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and the config go.")
flags.mark_flags_as_required(["config", "workdir"])
_BREAK_LOCK = flags.DEFINE_bool(
    "break_lock", False, "Remove WORKDIR/LOCK, whoever holds it, before starting: for a lock "
    "left by a run that is gone (it crashed on another host, or was killed with SIGKILL). "
    "Only when no trainer runs on the workdir. A lock of a dead process on this host is taken "
    "over without it.")
# Per process, so not in the config (which every process must share).
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, for a multi-process run started by "
    "hand (default: $JAX_COORDINATOR_ADDRESS, or found on TPU pods and under SLURM).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "How many processes run together (default: $JAX_NUM_PROCESSES, or "
    "found on TPU pods and under SLURM; else 1).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index, 0..num_processes-1 (default: $JAX_PROCESS_ID).")


class _QuietLibraries:
  """Drops INFO lines from orbax (dozens per checkpoint); its warnings still show."""

  def filter(self, record):
    return record.levelno >= 30 or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # Before anything touches the devices: they are only known once the processes have met.
  from maskclip_jax import distributed, workdir_lock  # pylint: disable=g-import-not-at-top
  multiprocess = distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                                        _PROCESS_ID.value)
  lead = True
  if multiprocess:
    import jax  # pylint: disable=g-import-not-at-top
    lead = jax.process_index() == 0
    if not lead:  # process 0 speaks for all; the others only warn
      logging.set_verbosity(logging.WARNING)
  # One run a workdir. Process 0 holds the lock for the job (the others cannot know their index
  # before jax.distributed has started); when it is held elsewhere process 0 exits here, and
  # the other processes fail at their first collective. Only a single process releases it from
  # its own SIGTERM handler: with several, jax's preemption service owns SIGTERM.
  lock = (workdir_lock.WorkdirLock(_WORKDIR.value, break_lock=_BREAK_LOCK.value,
                                   release_on_sigterm=not multiprocess)
          if lead else contextlib.nullcontext())
  try:
    with lock:  # released on return, on an exception, and on a SIGTERM (see workdir_lock.py)
      _train()
  except workdir_lock.WorkdirLockedError as e:  # only taking the lock raises it
    sys.exit(f"maskclip-train: {e}")


def _train():
  if _CONFIG.value.init_from.startswith("openclip:"):
    # Reading a .bin/.pt state dict needs torch, and torch must be imported before tensorflow
    # (the other order segfaults).
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  # Imported here so that `--help` and flag errors come before jax/tf start up. tensorflow is
  # kept away from the accelerators: tf.data runs on the host CPU only.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  from maskclip_jax import train  # pylint: disable=g-import-not-at-top
  logging.info("Config:\n%s", _CONFIG.value)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
  """Console-script entry point."""
  # Before jax starts (flag parsing loads the config, which imports it): on a CPU host,
  # jemalloc and oneDNN dots; this may re-execute the process once (cpu_defaults).
  cpu_defaults.apply()
  app.run(main)


if __name__ == "__main__":
  run()
