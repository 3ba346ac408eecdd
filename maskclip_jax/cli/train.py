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

The console shows a line per log interval, a line per evaluation and a summary at the end
(console.py); --verbose shows absl's prefixed log lines, every scalar and the config too.
`--help` lists the flags that matter; `--helpfull` lists every one (absl's and the libraries').
"""
import contextlib
import os
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from maskclip_jax import console, cpu_defaults  # noqa: E402

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
_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Log as absl does (time, thread, file:line before each line), with every "
    "scalar on its own line, the config, and the libraries' INFO lines. Without it: a line per "
    "log interval and per evaluation, and a summary at the end.")


def short_help() -> str:
  """`--help`: the flags that matter, with examples (absl's own --help lists none of them
  under a console script, and --helpfull lists hundreds)."""
  def entry(name, shown=None):
    text = textwrap.fill(flags.FLAGS[name].help, 96, initial_indent=" " * 6,
                         subsequent_indent=" " * 6)
    return f"  {shown or '--' + name}\n{text}"
  return "\n".join([
      "maskclip-train: train MaskCLIP (or CLIP) from a config file.",
      "",
      "  maskclip-train --config configs/tiny_synthetic.py --workdir /tmp/tiny",
      "  maskclip-train --config configs/tiny_synthetic.py:runlocal --workdir /tmp/smoke \\",
      "      --config.total_steps=4 --config.log_every_steps=1",
      "",
      "A workdir with checkpoints is resumed from its latest one.",
      "",
      "Flags:",
      entry("config", "--config FILE[:VARIANTS]"),
      "  --config.FIELD=VALUE",
      "      Overrides one field of the config, e.g. --config.total_steps=1000 "
      "--config.optim.lr=5e-4;",
      "      a field the config does not have is an error.",
      entry("workdir", "--workdir DIR"),
      entry("verbose"),
      entry("break_lock"),
      "",
      "Several processes (TPU pod workers, SLURM tasks, launch/local.sh) run the same "
      "command; they",
      "find each other on TPU pods and under srun, else from $JAX_COORDINATOR_ADDRESS, "
      "$JAX_NUM_PROCESSES",
      "and $JAX_PROCESS_ID or these flags:",
      "  --coordinator_address HOST:PORT (of process 0)  --num_processes N  --process_id I",
      "",
      "--helpfull lists every flag, absl's and the libraries' too.",
  ])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  console.setup_logging(verbose=_VERBOSE.value)
  # Before anything touches the devices: they are only known once the processes have met.
  from maskclip_jax import distributed, workdir_lock  # pylint: disable=g-import-not-at-top
  multiprocess = distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                                        _PROCESS_ID.value)
  lead = True
  if multiprocess:
    import jax  # pylint: disable=g-import-not-at-top
    lead = jax.process_index() == 0
    if not lead:  # process 0 speaks for all; the others only warn
      console.only_warnings()
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
  # Without --verbose the native (C++) INFO lines that tensorflow prints as it loads are dropped.
  with console.native_logs_filtered(enabled=not _VERBOSE.value):
    if _CONFIG.value.init_from.startswith("openclip:"):
      # Reading a .bin/.pt state dict needs torch, and torch must be imported before tensorflow
      # (the other order segfaults).
      import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    # Imported here so that `--help` and flag errors come before jax/tf start up. tensorflow is
    # kept away from the accelerators: tf.data runs on the host CPU only.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")
    from maskclip_jax import train  # pylint: disable=g-import-not-at-top
  console.library_progress_bars()
  if _VERBOSE.value:  # otherwise it is in WORKDIR/config.json only
    logging.info("Config:\n%s", _CONFIG.value)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


_HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")


def run():
  """Console-script entry point."""
  if any(arg in _HELP_ARGS for arg in sys.argv[1:]):  # before anything slow starts
    print(short_help())
    sys.exit(0)
  # Before jax starts (flag parsing loads the config, which imports it): on a CPU host,
  # jemalloc and oneDNN dots; this may re-execute the process once (cpu_defaults).
  cpu_defaults.apply()
  app.run(main)


if __name__ == "__main__":
  run()
