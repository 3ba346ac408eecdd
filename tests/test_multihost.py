"""Several processes on this machine (launch/local.sh: fake CPU devices, gloo) against one.

"The same data" in 1 and 2 processes: these runs set input.every_process_reads_all, so every
process reads the whole training stream as one process would and its devices take their own
rows of each global batch (data/device_put.py). The global batches, and the masks drawn per row
of the global batch, are then the same for any process count. (By default each process reads
only its share of the data, so the global batches change with the process count.)

1 process x 4 devices and 2 processes x 2 devices reduce gradients over the same 4 devices in
different orders (in-process vs gloo), so they agree to rounding, not bit for bit. AdamW divides
by sqrt(v) + eps; where a true gradient is zero (the attention key bias) or ~1e-9, the usual
eps=1e-8 turns that rounding into +-lr steps. These runs use eps=1e-5, which keeps it at its
own size, so every parameter can be compared within 1e-5.

`run_local` (a LocalLauncher) is the harness: the trainer under launch/local.sh with config
overrides, returning the workdir; the synthetic data set is shared by every run of the module
and a compilation cache by all runs of the test session, so a program compiles once.
"""
import glob
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import tiny_config
from conftest import REPO, assert_bit_identical, input_config, read_state
from maskclip_jax import checkpoint, distributed, restore, sharding
from maskclip_jax import train_step as train_step_lib
from maskclip_jax.models.maskclip import build_model
from maskclip_jax.optimizer import make_optimizer
from maskclip_jax.pytree_paths import path_name

TESTS = os.path.join(REPO, "tests")
LAUNCH = os.path.join(REPO, "launch")
# What every run here shares (see the module doc for eps and the data mode).
COMMON = {"input.every_process_reads_all": True, "optim.eps": 1e-5}


def config_flags(overrides: dict) -> list:
  """--config.FIELD=VALUE flags; strings as they are, everything else as a Python literal."""
  return [f"--config.{key}={value if isinstance(value, str) else repr(value)}"
          for key, value in overrides.items()]


def subprocess_env(cache_dir: str) -> dict:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [TESTS, REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  # XLA's cheapest CPU code generation compiles the step in about half the time; every run of
  # a comparison uses it. The cache lets later runs of the same program skip compiling.
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
  env.update(JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


class LocalLauncher:
  """maskclip-train with tests/tiny_config.py under launch/local.sh, COMMON and `overrides`.

  `launcher(num_processes, workdir, overrides)` runs it to the end and returns the workdir;
  `launcher.start(...)` returns the running local.sh (a Popen; output on its stdout).
  """

  def __init__(self, shared: str):
    self.tfds_dir = os.path.join(shared, "tfds")
    self.cache_dir = os.path.join(shared, "jax_cache")

  def start(self, num_processes, workdir, overrides=None, *, devices_per_process=2,
            module=None) -> subprocess.Popen:
    overrides = dict(COMMON, **{"input.tfds_data_dir": self.tfds_dir}, **(overrides or {}))
    env = subprocess_env(self.cache_dir)
    env.update(DEVICES_PER_PROCESS=str(devices_per_process), PYTHON=sys.executable)
    if module:
      env["MODULE"] = module
    command = [os.path.join(LAUNCH, "local.sh"), str(num_processes), "--",
               f"--config={TESTS}/tiny_config.py", f"--workdir={workdir}",
               *config_flags(overrides)]
    # A session of its own, so that `stop` can reach every process it started.
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)

  @staticmethod
  def stop(run: subprocess.Popen) -> None:
    """Ends a run that is still going: SIGTERM (they save and exit), then SIGKILL to all."""
    if run.poll() is None:
      run.terminate()
      try:
        run.wait(timeout=60)
      except subprocess.TimeoutExpired:
        pass
    try:
      os.killpg(run.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    run.communicate()

  def __call__(self, num_processes, workdir, overrides=None, *, devices_per_process=2,
               module=None, timeout=600) -> str:
    run = self.start(num_processes, workdir, overrides, devices_per_process=devices_per_process,
                     module=module)
    try:
      output = run.communicate(timeout=timeout)[0]
    finally:
      self.stop(run)
    assert run.returncode == 0, output[-5000:]
    return str(workdir)


@pytest.fixture(scope="module")
def run_local(tmp_path_factory) -> LocalLauncher:
  launcher = LocalLauncher(str(tmp_path_factory.mktemp("multihost")))
  if os.environ.get("PYTEST_XDIST_WORKER"):  # one compilation cache for all workers
    launcher.cache_dir = str(tmp_path_factory.getbasetemp().parent / "multihost_jax_cache")
  # Built once here rather than by every process of the first run.
  from maskclip_jax.data import captioned_shapes  # pylint: disable=g-import-not-at-top
  config = tiny_config.get_config()
  captioned_shapes.prepared_builder(image_size=config.input.image_size,
                                    num_train=config.input.synthetic_train_size,
                                    num_test=config.input.synthetic_test_size,
                                    data_dir=launcher.tfds_dir)
  return launcher


def step_losses(workdir) -> dict:
  """{step: loss} from the TensorBoard events process 0 wrote."""
  losses = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    accumulator = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
    accumulator.Reload()
    if "loss" in accumulator.Tags()["tensors"]:
      for event in accumulator.Tensors("loss"):
        losses[event.step] = float(tf.make_ndarray(event.tensor_proto))
  return losses


def keep_checkpoints_up_to(source, destination, step):
  shutil.copytree(source, destination)
  for path in glob.glob(os.path.join(destination, "checkpoints", "*")):
    name = os.path.basename(path)
    if name.isdigit() and int(name) > step:
      shutil.rmtree(path)
  for path in glob.glob(os.path.join(destination, "events.out.tfevents.*")):
    os.remove(path)


def test_two_processes_train_like_one_and_resume_on_another_mesh(run_local, tmp_path):
  # The single-process reference goes through a main that fails if jax.distributed is touched.
  one = run_local(1, tmp_path / "one", devices_per_process=4, module="main_without_distributed")
  two = run_local(2, tmp_path / "two")
  for workdir, processes in ((one, 1), (two, 2)):
    with open(os.path.join(workdir, "run_info.json")) as f:
      info = json.load(f)
    assert (info["processes"], info["devices"], info["mesh"]) == (processes, 4,
                                                                  {"data": 4, "fsdp": 1})
  # Only process 0 writes logs.
  assert len(glob.glob(os.path.join(two, "events.out.tfevents.*"))) == 1

  # 1. The same losses at every step and the same final state.
  losses_one, losses_two = step_losses(one), step_losses(two)
  assert sorted(losses_one) == sorted(losses_two) == [1, 2, 3, 4, 5]
  for step in losses_one:
    np.testing.assert_allclose(losses_two[step], losses_one[step], rtol=0, atol=1e-5,
                               err_msg=f"loss at step {step}")
  final_one, final_two = read_state(one, 5), read_state(two, 5)
  jax.tree_util.tree_map_with_path(
      lambda path, a, b: np.testing.assert_allclose(b, a, rtol=0, atol=1e-5,
                                                    err_msg=jax.tree_util.keystr(path)),
      final_one, final_two)
  assert not np.allclose(final_two["params"]["visual"]["proj"],
                         read_state(two, 1)["params"]["visual"]["proj"], atol=1e-4)

  # 3. Zero-shot evaluation at the end: the same metrics from 2 processes (each reading half
  # the test images, the last global batch padded) as from 1.
  zeroshot = [json.load(open(os.path.join(w, "evals", "zeroshot_step5.json")))["metrics"]
              for w in (one, two)]
  assert zeroshot[0] == zeroshot[1] and zeroshot[0]["num_examples"] == 64, zeroshot

  # 2. The 2-process checkpoint of step 3, resumed in one process on the writer's mesh shape
  # and on another, (data 2, fsdp 2): bit for bit the same steps 4 and 5. Bit-identity needs
  # the same float operations: with replicated parameters (the default rules) both meshes
  # reduce the gradients over the same 4 devices in the same order. fsdp-sharded parameters
  # are reduced in another order (a reduce-scatter), which changes last bits; that layout is
  # checked below where it can be exact, at the restore.
  resumed = {}
  for name, mesh in (("data_only", (("data", -1),)), ("data_fsdp", (("data", 2), ("fsdp", 2)))):
    workdir = tmp_path / name
    keep_checkpoints_up_to(two, workdir, 3)
    run_local(1, workdir, {"mesh": mesh}, devices_per_process=4)
    with open(workdir / "run_info.json") as f:
      info = json.load(f)
    assert info["processes"] == 1 and info["mesh"] == dict(sharding.mesh_shape(mesh, 4))
    resumed[name] = (read_state(workdir, 5), step_losses(workdir))
  (state_a, losses_a), (state_b, losses_b) = resumed.values()
  assert_bit_identical(state_a, state_b)
  # ... and the data went on where the 2-process run left it (other batches would give
  # other losses): the resumed steps are those of the uninterrupted run.
  assert sorted(losses_a) == sorted(losses_b) == [4, 5]
  for step in (4, 5):
    assert losses_a[step] == losses_b[step]
    np.testing.assert_allclose(losses_a[step], losses_two[step], rtol=0, atol=1e-5)

  # Resharding on restore: the same checkpoint into fsdp-sharded parameters on 8 devices.
  config = tiny_config.get_config()
  config.optim.eps = 1e-5
  model, tx = build_model(config.model, config.maskclip), make_optimizer(config)
  abstract = jax.eval_shape(lambda: train_step_lib.init_train_state(
      model, config, tx, jax.random.PRNGKey(0)))
  mesh = sharding.make_mesh((("data", -1), ("fsdp", 2)))
  shardings = sharding.tree_shardings(abstract, mesh, sharding.FSDP_RULES)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, shardings)
  manager = checkpoint.make_manager(two, read_only=True)
  restored = checkpoint.restore(manager, 3, abstract)
  manager.close()
  kernel = restored["params"]["visual"]["transformer"]["resblocks_0"]["mlp"]["c_fc"]["kernel"]
  assert "fsdp" in tuple(kernel.sharding.spec)
  saved = {path_name(path): value
           for path, value in jax.tree_util.tree_leaves_with_path(read_state(two, 3))}
  leaves = {path_name(path): value
            for path, value in jax.tree_util.tree_leaves_with_path(restored)}
  assert sorted(leaves) == sorted(saved)
  for name, value in leaves.items():
    np.testing.assert_array_equal(np.asarray(value), saved[name], err_msg=name)


def test_a_signal_to_one_process_stops_all_after_the_same_step(run_local, tmp_path):
  """SIGTERM (a preemption notice) reaching only process 1: both processes save the same step
  and exit 0. The config is that of the 2-process run above, whose compiled steps it reuses
  when that ran first."""
  workdir = tmp_path / "preempted"
  run = run_local.start(2, workdir)
  lines = []
  reader = threading.Thread(target=lambda: lines.extend(run.stdout), daemon=True)
  reader.start()
  try:
    deadline = time.time() + 400
    while not any(re.search(r"\bstep +1/\d+ ", line) for line in lines):  # the step-1 line
      assert run.poll() is None and time.time() < deadline, "".join(lines)[-5000:]
      time.sleep(0.05)
    os.kill(child_with_argument(run.pid, "--process_id=1"), signal.SIGTERM)
    assert run.wait(timeout=300) == 0, "".join(lines)[-5000:]
  finally:
    run_local.stop(run)
  reader.join(timeout=30)
  output = "".join(lines)
  stops = [int(step) for step in re.findall(r"Saved step (\d+) \(signal 15\); exiting", output)]
  assert len(stops) == 2 and stops[0] == stops[1] < 5, output[-5000:]
  assert checkpoint.latest_step(str(workdir)) == stops[0]


def child_with_argument(parent: int, argument: str) -> int:
  """The pid of `parent`'s child process whose command line has `argument` (Linux)."""
  for stat_path in glob.glob("/proc/[0-9]*/stat"):
    try:
      with open(stat_path) as f:
        parent_of = int(f.read().rsplit(")", 1)[1].split()[1])
      if parent_of != parent:
        continue
      with open(stat_path[:-len("stat")] + "cmdline") as f:
        if argument in f.read().split("\0"):
          return int(stat_path.split("/")[2])
    except (OSError, ValueError, IndexError):
      continue
  raise LookupError(f"No child of {parent} has {argument!r}.")


# ---------------------------------------------------------------- start-up and config agreement
def test_detect_finds_several_processes_only_where_they_are():
  assert distributed.detect(environ={}) is None
  assert distributed.detect(num_processes=1, environ={}) is None
  cluster = distributed.detect("10.0.0.1:1234", 4, 2, environ={})
  assert (cluster.found_by, cluster.num_processes) == ("flags", 4)
  assert cluster.initialize_args == dict(coordinator_address="10.0.0.1:1234", num_processes=4,
                                         process_id=2)
  from_env = distributed.detect(environ={"JAX_COORDINATOR_ADDRESS": "h:1",
                                         "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
  assert from_env.initialize_args["process_id"] == 1
  with pytest.raises(ValueError, match="needs --coordinator_address"):
    distributed.detect(num_processes=2, environ={})
  with pytest.raises(ValueError, match=r"--process_id=2 is not in \[0, 2\)"):
    distributed.detect("h:1", 2, 2, environ={})
  step = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_PROCID": "3",
          "SLURM_LOCALID": "1", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "16"}
  slurm = distributed.detect(environ=step)
  assert (slurm.found_by, slurm.num_processes, slurm.initialize_args["process_id"]) == (
      "slurm", 16, 3)
  # One task, or a batch script outside srun (no step): one process.
  assert distributed.detect(environ=dict(step, SLURM_STEP_NUM_TASKS="1")) is None
  no_step = {k: v for k, v in step.items() if not k.startswith("SLURM_STEP")}
  assert distributed.detect(environ=no_step) is None


def test_single_process_never_touches_jax_distributed(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("jax.distributed.initialize was called")
  monkeypatch.setattr(jax.distributed, "initialize", refuse)
  for name in list(os.environ):
    if name.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")):
      monkeypatch.delenv(name)
  assert not distributed.initialize()
  assert not distributed.initialize(num_processes=1)
  distributed.check_same_config(tiny_config.get_config())  # one process: nothing to compare


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_processes_with_different_configs_fail_naming_the_field(tmp_path):
  """Process 1 has another batch size: both stop before training, saying so."""
  address = f"127.0.0.1:{free_port()}"
  env = subprocess_env(str(tmp_path / "jax_cache"))
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  processes = []
  for index, batch_size in enumerate((8, 16)):
    command = [sys.executable, "-m", "maskclip_jax.cli.train", f"--config={TESTS}/tiny_config.py",
               f"--workdir={tmp_path / 'w'}", f"--config.batch_size={batch_size}",
               f"--coordinator_address={address}", "--num_processes=2",
               f"--process_id={index}"]
    processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=240)[0])
  finally:
    for process in processes:
      if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait()
  for process, output in zip(processes, outputs):
    assert process.returncode != 0, output[-3000:]
    assert "started with different configs" in output, output[-3000:]
    assert "batch_size: process 0 has 8, process 1 has 16" in output, output[-3000:]
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


# ---------------------------------------------------------------- the input position on resume
def test_another_process_count_restarts_the_data_stream_seeded_by_step(tmp_path, caplog):
  from maskclip_jax.data import fake_data, pipeline  # pylint: disable=g-import-not-at-top
  fake_data.write_wds(str(tmp_path / "data"), [fake_data.sample(i) for i in range(32)],
                      per_shard=8)
  config = input_config(shuffle_buffer=8, cycle_length=2, train_data=f"wds:{tmp_path}/data/*.tar")

  def make(process_index, process_count):
    return lambda seed: pipeline.make_train_iterator(
        config, global_batch_size=8, seed=seed, process_index=process_index,
        process_count=process_count)

  saved = str(tmp_path / "position")
  for p in (0, 1):  # a 2-process run's positions after 3 steps
    iterator = make(p, 2)(0)
    for _ in range(3):
      next(iterator)
    iterator.save(saved)
  # The same process count continues exactly.
  same = make(1, 2)(0)
  resumed, exact = restore.input_for_resume(saved, 3, same, make(1, 2), seed=0)
  assert exact and resumed is same
  # One process: no saved position is its share; the stream restarts with seed + step.
  alone = make(0, 1)(0)
  with caplog.at_level(logging.WARNING):
    resumed, exact = restore.input_for_resume(saved, 3, alone, make(0, 1), seed=0)
  assert "stream over 2 process(es)" in caplog.text
  assert "restarts with seed 3 (config.seed + step)" in caplog.text
  assert not exact and resumed.description["seed"] == 3
  assert resumed.process_count == 1
  fresh = make(0, 1)(3)
  np.testing.assert_array_equal(next(resumed)["text"], next(fresh)["text"])
  # Its positions, saved later, are resumed with that seed, not config.seed's stream.
  later = str(tmp_path / "later")
  resumed.save(later)
  again, exact = restore.input_for_resume(later, 10, make(0, 1)(0), make(0, 1), seed=0)
  assert exact and again.description["seed"] == 3


def test_processes_started_together_can_all_prepare_the_synthetic_data(tmp_path):
  """Each builds it in a directory of its own; the later ones find the first one's in place."""
  code = ("import sys; from maskclip_jax.data import captioned_shapes; "
          "b = captioned_shapes.prepared_builder(image_size=16, num_train=64, num_test=16, "
          "data_dir=sys.argv[1]); print('examples', b.info.splits['train'].num_examples)")
  processes = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
  for process in processes:
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0 and "examples 64" in output, output[-3000:]


def test_launch_scripts_parse():
  scripts = sorted(glob.glob(os.path.join(LAUNCH, "*")))
  assert {os.path.basename(s) for s in scripts} >= {"local.sh", "tpu_pod.sh", "slurm_gpu.sbatch"}
  for script in scripts:
    result = subprocess.run(["bash", "-n", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{script}: {result.stderr}"
