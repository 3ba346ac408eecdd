"""Verified checkpoints: a damaged checkpoint is named with its reason and the trainer resumes
from the newest good one; --config.resume_step picks the step.

Three trainings in all (module fixtures): a run saving every step to 4; a clean resume from
step 1 (resume_step=1) in a copy; and a resume in a copy whose steps 4, 3 and 2 are damaged
three different ways (flipped bytes in a data file, a deleted data file, garbage in
state/_METADATA), which must fall back through all three to step 1.
"""
# pylint: disable=redefined-outer-name  (pytest fixtures as arguments)
import glob
import json
import logging
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from conftest import assert_bit_identical, tiny_train_config
from maskclip_jax import checkpoint, checkpoint_checksums, train

STEPS = 4


def config(tfds_dir, **overrides):
  return tiny_train_config(tfds_dir, total_steps=STEPS, log_every_steps=STEPS,
                           evals=ml_collections.ConfigDict(),  # not what is tested here
                           **{"checkpoint.every_steps": 1, "checkpoint.keep": None}, **overrides)


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """jax's persistent compilation cache, for this module only: the trainings here compile the
  same step, and the second and third then load it (~45 s less on a 2-core CPU)."""
  try:
    from jax._src import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  except ImportError:
    yield
    return
  before = (jax.config.jax_compilation_cache_dir,
            jax.config.jax_persistent_cache_min_compile_time_secs)
  cc.reset_cache()
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  try:
    yield
  finally:
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    cc.reset_cache()


def state_files(workdir, step):
  return [p for p in glob.glob(os.path.join(checkpoint.checkpoint_dir(workdir), str(step),
                                            "state", "**"), recursive=True) if os.path.isfile(p)]


def largest_data_file(workdir, step):
  return max((p for p in state_files(workdir, step) if f"{os.sep}d{os.sep}" in p),
             key=os.path.getsize)


def flip_bytes(path, count=4096):
  offset = int(os.path.getsize(path) * 0.7)
  with open(path, "r+b") as f:
    f.seek(offset)
    data = f.read(count)
    f.seek(offset)
    f.write(bytes(b ^ 0xFF for b in data))


def garbage_over(path, count=4096):
  with open(path, "r+b") as f:  # same size: the metadata read fails, not a size check
    f.write(np.random.default_rng(0).integers(0, 256, count, np.uint8).tobytes())


def params_at(workdir, step):
  state, restored = checkpoint.load_state_numpy(workdir, step)
  assert restored == step
  return state["params"]


@pytest.fixture(scope="module")
def trained(tfds_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("verify") / "trained")
  train.train_and_evaluate(config(tfds_dir), workdir)
  assert checkpoint.make_manager(workdir, read_only=True).all_steps() == [1, 2, 3, 4]
  return workdir


def copy_of(trained, name):
  target = os.path.join(os.path.dirname(trained), name)
  shutil.copytree(trained, target)
  return target


class LogRecorder(logging.Handler):
  def __init__(self):
    super().__init__(logging.INFO)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())

  @property
  def text(self):
    return "\n".join(self.lines)


def train_logged(cfg, workdir):
  """train_and_evaluate, returning its log (absl's records reach the 'absl' logger)."""
  recorder = LogRecorder()
  logger = logging.getLogger("absl")
  old_level = logger.level
  logger.addHandler(recorder)
  logger.setLevel(logging.INFO)
  try:
    train.train_and_evaluate(cfg, workdir)
  finally:
    logger.removeHandler(recorder)
    logger.setLevel(old_level)
  return recorder.text


@pytest.fixture(scope="module")
def clean(trained, tfds_dir):
  """A copy resumed from step 1 with resume_step: the reference for the damaged run."""
  workdir = copy_of(trained, "clean")
  log = train_logged(config(tfds_dir, resume_step=1), workdir)
  return workdir, log


@pytest.fixture(scope="module")
def damaged(trained, tfds_dir):
  """A copy with steps 4, 3, 2 damaged, resumed (latest good: step 1)."""
  workdir = copy_of(trained, "damaged")
  flipped = largest_data_file(workdir, 4)
  flip_bytes(flipped)
  deleted = largest_data_file(workdir, 3)
  os.remove(deleted)
  metadata = os.path.join(checkpoint.checkpoint_dir(workdir), "2", "state", "_METADATA")
  garbage_over(metadata)
  damage = dict(flipped=os.path.relpath(flipped, os.path.join(checkpoint.checkpoint_dir(
      workdir), "4")), deleted=os.path.relpath(deleted, os.path.join(
          checkpoint.checkpoint_dir(workdir), "3")))
  log = train_logged(config(tfds_dir), workdir)
  return workdir, log, damage


def warning_for(log, step):
  lines = [line for line in log.splitlines()
           if line.startswith(f"The checkpoint at step {step} (") and "fails verification" in line]
  assert lines, f"no warning names step {step}:\n{log[-3000:]}"
  return lines[0]


def test_flipped_bytes_are_named_and_the_run_resumes_from_the_last_good_step(damaged, clean):
  workdir, log, _ = damaged
  line = warning_for(log, 4)
  # Flipped bytes in a zstd stream decode to other values (a checksum mismatch, often
  # non-finite too) or fail to decode (unreadable data, which tensorstore names).
  assert (("checksum mismatch" in line and "array " in line)
          or "unreadable array data" in line), line
  assert "Resumed from step 1 " in log
  assert "Resumed from step 4" not in log
  # The continuing run trained steps 2..4 again from step 1: as a clean run from step 1 does.
  assert_bit_identical(params_at(workdir, STEPS), params_at(clean[0], STEPS))


def test_a_deleted_data_file_is_named(damaged):
  _, log, damage = damaged
  line = warning_for(log, 3)
  assert f"missing file {damage['deleted']}" in line, line


def test_garbage_metadata_is_named(damaged):
  _, log, _ = damaged
  line = warning_for(log, 2)
  assert "unreadable metadata" in line and "state/_METADATA is no valid JSON" in line, line


def test_bad_checkpoints_are_kept_aside_with_their_reason(damaged):
  workdir, _, damage = damaged
  aside = os.path.join(workdir, checkpoint.SET_ASIDE_DIR)
  assert sorted(os.listdir(aside)) == ["2", "3", "4"]
  reason = open(os.path.join(aside, "4", checkpoint.REASON_FILE)).read()
  assert reason.startswith("step 4: ")  # the reason logged for step 4
  assert reason.strip()[len("step 4: "):] in damaged[1]
  assert os.path.exists(os.path.join(aside, "4", damage["flipped"]))  # kept, not deleted
  # The run saved steps 2..4 anew, and they verify.
  assert checkpoint.make_manager(workdir, read_only=True).all_steps() == [1, 2, 3, 4]
  assert checkpoint.load_state_numpy(workdir)[1] == STEPS


def test_none_passing_fails_naming_each_step(damaged, tmp_path):
  workdir = str(tmp_path / "all_bad")
  shutil.copytree(os.path.join(damaged[0], checkpoint.SET_ASIDE_DIR),
                  checkpoint.checkpoint_dir(workdir))
  with pytest.raises(checkpoint.CheckpointError) as error:
    checkpoint.load_state_numpy(workdir)
  message = str(error.value)
  assert "No checkpoint" in message and "passes verification" in message
  for step, what in [(4, "array"), (3, "missing file"), (2, "unreadable metadata")]:
    assert f"step {step} (" in message and what in message, message


def test_resume_step_picks_the_step(clean, trained):
  workdir, log = clean
  assert "Resumed from step 1 " in log
  # The steps after it were set aside (kept), and saved again by the continuing run.
  aside = os.path.join(workdir, checkpoint.SET_ASIDE_DIR)
  assert sorted(os.listdir(aside)) == ["2", "3", "4"]
  assert "newer than --config.resume_step=1" in open(
      os.path.join(aside, "4", checkpoint.REASON_FILE)).read()
  # Deterministic training: the same step 4 as the uninterrupted run.
  assert_bit_identical(params_at(workdir, STEPS), params_at(trained, STEPS))


def test_a_missing_resume_step_names_the_steps_there(trained, tfds_dir, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(trained, workdir)
  with pytest.raises(checkpoint.CheckpointError, match=r"No checkpoint at step 7 .*steps there: "
                                                       r"\[1, 2, 3, 4\]"):
    train.train_and_evaluate(config(tfds_dir, resume_step=7), workdir)


def test_a_damaged_resume_step_fails_naming_why_and_the_steps(trained, tfds_dir, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(trained, workdir)
  flip_bytes(largest_data_file(workdir, 2))
  with pytest.raises(checkpoint.CheckpointError,
                     match=r"(?s)step 2 fails verification.*array.*"
                           r"Steps in .*: \[1, 2, 3, 4\]"):
    train.train_and_evaluate(config(tfds_dir, resume_step=2), workdir)
  assert checkpoint.make_manager(workdir, read_only=True).all_steps() == [1, 2, 3, 4]


def test_checkpoints_without_checksums_still_load(trained, tmp_path, caplog):
  workdir = str(tmp_path / "old")
  shutil.copytree(trained, workdir)
  for step in (3, 4):  # as saved before checksums
    shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(workdir), str(step),
                               checkpoint.CHECKSUMS_ITEM))
  with caplog.at_level(logging.INFO):
    state, step = checkpoint.load_state_numpy(workdir)
  assert step == 4
  assert "The checkpoint at step 4" in caplog.text and "has no checksums" in caplog.text
  assert_bit_identical(state["params"], params_at(trained, 4))


def test_non_finite_values_fail_with_or_without_checksums(tmp_path, caplog):
  workdir = str(tmp_path)
  good = dict(step=np.int32(1), params=dict(w=np.ones((4, 3), np.float32)))
  bad = dict(step=np.int32(2), params=dict(w=np.ones((4, 3), np.float32)))
  bad["params"]["w"][1, 2] = np.nan
  cfg = tiny_train_config(str(tmp_path / "unused"))
  checkpoint.save_state(workdir, 1, good, cfg)
  checkpoint.save_state(workdir, 2, bad, cfg)
  for strip in (False, True):
    if strip:
      for step in (1, 2):
        shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(workdir), str(step),
                                   checkpoint.CHECKSUMS_ITEM))
    caplog.clear()
    with caplog.at_level(logging.INFO):
      state, step = checkpoint.load_state_numpy(workdir)
    assert step == 1 and state["params"]["w"].sum() == 12
    assert "array params/w: 1 non-finite values of 12" in caplog.text
    assert ("has no checksums" in caplog.text) == strip


def test_a_checksum_mismatch_is_named_with_the_array(tmp_path, caplog):
  workdir = str(tmp_path)
  cfg = tiny_train_config(str(tmp_path / "unused"))
  for step in (1, 2):
    checkpoint.save_state(workdir, step, dict(step=np.int32(step), params=dict(
        w=np.full((4, 3), step, np.float32), b=np.zeros((3,), np.float32))), cfg)
  path = os.path.join(checkpoint.checkpoint_dir(workdir), "2", checkpoint.CHECKSUMS_ITEM,
                      checkpoint.CHECKSUMS_FILE)
  with open(path) as f:
    record = json.load(f)
  saved = record["arrays"]["params/w"]["checksum"]
  record["arrays"]["params/w"]["checksum"] = "0123456789abcdef"  # as if the data had changed
  with open(path, "w") as f:
    json.dump(record, f)
  with caplog.at_level(logging.WARNING):
    state, step = checkpoint.load_state_numpy(workdir)
  assert step == 1 and state["params"]["w"][0, 0] == 1
  assert ("array params/w: checksum mismatch (saved 0123456789abcdef, read "
          f"{saved})") in caplog.text
  assert "params/b" not in caplog.text


def test_fingerprints_do_not_depend_on_the_sharding():
  from jax.sharding import NamedSharding, PartitionSpec as P
  rng = np.random.default_rng(0)
  tree = dict(a=rng.standard_normal((16, 8)).astype(np.float32), b=np.arange(8, dtype=np.int32),
              c=np.float32(2.0))
  mesh = jax.make_mesh((4, 2), ("x", "y"))
  sharded = dict(a=jax.device_put(tree["a"], NamedSharding(mesh, P("x", "y"))),
                 b=jax.device_put(tree["b"], NamedSharding(mesh, P("x"))), c=tree["c"])
  assert checkpoint_checksums.fingerprints(tree) == checkpoint_checksums.fingerprints(sharded)
  changed = dict(tree, a=tree["a"].copy())
  changed["a"][3, 5] = np.inf
  prints = checkpoint_checksums.fingerprints(changed)
  assert prints["a"][0] != checkpoint_checksums.fingerprints(tree)["a"][0] and prints["a"][1] == 1
