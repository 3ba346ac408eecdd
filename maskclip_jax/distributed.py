"""Multi-process start-up: `jax.distributed.initialize` only where several processes run.

cli/train.py calls `initialize` before anything touches the devices. Several processes are found
  1. from flags: --num_processes with --coordinator_address and --process_id (or the variables
     JAX_NUM_PROCESSES, JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID), as launch/local.sh starts them;
  2. under SLURM: an `srun` step of more than one task; jax takes the coordinator (the step's
     first node, unless JAX_COORDINATOR_ADDRESS is set) and the task's GPU (SLURM_LOCALID);
  3. on a Cloud TPU pod slice (several TPU VM workers), by jax's own TPU detection.
Anything else is one process, which never touches `jax.distributed`.

Then `check_same_config` has every process compare its config with the others': processes
started with different flags fail at once, naming the fields, instead of running a
collective with mismatched shapes (which hangs, or fails far from the cause).

`PreemptionHandler` turns SIGTERM/SIGINT into a save at a step all processes agree on.
"""
import dataclasses
import json
import os
import signal
from typing import Mapping, Optional

from absl import logging
import jax
import numpy as np

_SLURM_STEP = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class Cluster:
  """How this process finds the others: the arguments of jax.distributed.initialize."""
  found_by: str  # 'flags' | 'slurm' | 'tpu'
  num_processes: int
  initialize_args: dict


def detect(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
           process_id: Optional[int] = None,
           environ: Optional[Mapping[str, str]] = None) -> Optional[Cluster]:
  """The cluster this process belongs to, or None when it runs alone."""
  environ = os.environ if environ is None else environ
  coordinator_address = coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(environ["JAX_NUM_PROCESSES"])
  if process_id is None and environ.get("JAX_PROCESS_ID"):
    process_id = int(environ["JAX_PROCESS_ID"])

  if num_processes is not None:
    if num_processes < 1:
      raise ValueError(f"--num_processes={num_processes} must be >= 1.")
    if num_processes == 1:
      return None
    if coordinator_address is None or process_id is None:
      raise ValueError(f"--num_processes={num_processes} needs --coordinator_address=HOST:PORT "
                       "(process 0's) and --process_id=0..N-1 as well.")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} is not in [0, {num_processes}).")
    return Cluster("flags", num_processes, dict(coordinator_address=coordinator_address,
                                                 num_processes=num_processes,
                                                 process_id=process_id))
  if process_id is not None:
    raise ValueError(f"--process_id={process_id} needs --num_processes (and "
                     "--coordinator_address) as well.")

  # An srun step sets these; a batch script itself (one process) does not set the step's.
  if all(name in environ for name in _SLURM_STEP):
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or 1)
    if tasks > 1:
      return Cluster("slurm", tasks, dict(coordinator_address=coordinator_address,
                                          num_processes=tasks,
                                          process_id=int(environ["SLURM_PROCID"]),
                                          cluster_detection_method="slurm"))
  workers = _tpu_worker_count()
  if workers > 1:
    return Cluster("tpu", workers, dict(coordinator_address=coordinator_address))
  return None


def _tpu_worker_count() -> int:
  """The processes of this Cloud TPU slice (or slices), by jax's own detection; 0 off TPU.

  jax exposes its cluster detection only inside jax.distributed.initialize, which a
  single-host TPU VM must not call, so its detectors are asked directly (guarded: private).
  """
  try:
    from jax._src.clusters import cloud_tpu_cluster  # pylint: disable=g-import-not-at-top
  except ImportError:
    return 0
  for env in (cloud_tpu_cluster.GkeTpuCluster, cloud_tpu_cluster.GceTpuCluster):
    try:
      if env.is_env_present():
        return env.get_process_count()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("Could not tell whether this TPU VM is one of several (%s); running as "
                      "one process. Pass --num_processes etc. to say.", e)
      return 0
  return 0


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
  """Starts jax.distributed where several processes run; returns whether it did."""
  cluster = detect(coordinator_address, num_processes, process_id)
  if cluster is None:
    return False
  # Gives the CPU backend cross-process collectives (tests, launch/local.sh); GPU and TPU
  # backends have their own (NCCL, ICI/DCN) and are unaffected.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**cluster.initialize_args)
  logging.info("Process %d of %d (found by %s); %d local of %d devices.", jax.process_index(),
               jax.process_count(), cluster.found_by, jax.local_device_count(),
               jax.device_count())
  return True


def check_same_config(config) -> None:
  """Raises ValueError on every process unless all processes hold the same config."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  text = np.frombuffer(config.to_json_best_effort(sort_keys=True).encode(), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.int32(text.size))).reshape(-1)
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:text.size] = text
  texts = np.asarray(multihost_utils.process_allgather(padded))
  configs = [json.loads(bytes(row[:n]).decode()) for row, n in zip(texts, lengths)]
  problems = []
  for index, other in enumerate(configs[1:], start=1):
    problems += [f"{field}: process 0 has {a!r}, process {index} has {b!r}"
                 for field, (a, b) in _differences(configs[0], other).items()]
  if problems:
    shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
    raise ValueError(
        f"The {len(configs)} processes were started with different configs (seen by process "
        f"{jax.process_index()}):\n  " + "\n  ".join(shown) + "\nStart every process with the "
        "same config file and --config flags.")


def _differences(a, b, prefix="") -> dict:
  """{'field.path': (a's value, b's value)} where two JSON trees differ."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = {}
    for key in sorted(set(a) | set(b)):
      out.update(_differences(a.get(key), b.get(key), f"{prefix}{key}."))
    return out
  return {} if a == b else {prefix.rstrip("."): (a, b)}


class PreemptionHandler:
  """SIGTERM/SIGINT: finish the current step, save, exit 0. A second signal exits at once.

  Several processes must stop at the same step, though a signal may reach only one of them
  (a TPU maintenance event, a scheduler): there SIGTERM is left to jax's preemption service
  (started by jax.distributed.initialize), which agrees on the step to stop at, and SIGINT is
  passed on to it as a SIGTERM. `stop_requested(step)` is asked once a step.
  """

  def __init__(self):
    self.requested: Optional[int] = None
    self._previous = {}
    self._multiprocess = jax.process_count() > 1
    self._forwarded = False  # SIGINT passed on to the preemption service (several processes)

  def __enter__(self):
    for sig in (signal.SIGINT,) if self._multiprocess else (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def interrupts_evaluation(self) -> bool:
    """Asked between evaluation batches: a signal stops a running evaluation (which is redone
    on resume) so that the save is not lost to a scheduler's grace period. One process only:
    with several, the signal reaches some of them and they must stop at the same step, which
    only the per-step preemption sync point agrees on."""
    return not self._multiprocess and self.requested is not None

  def stop_requested(self, step: int) -> bool:
    if self._multiprocess and self.requested is None:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      if multihost_utils.reached_preemption_sync_point(step):
        self.requested = signal.SIGTERM
    return self.requested is not None

  def _handle(self, signum, frame):
    del frame
    if self._multiprocess and not self._forwarded:
      self._forwarded = True
      os.kill(os.getpid(), signal.SIGTERM)
      return
    if self.requested is not None or self._forwarded:
      logging.warning("Second signal %d: exiting now without saving.", signum)
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.requested = signum
    logging.warning("Signal %d: saving a checkpoint after this step, then exiting.", signum)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
