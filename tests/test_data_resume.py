"""Save the position after 5 batches, restore into a fresh pipeline: batches 6-10 are identical."""
import functools
import os

import numpy as np
import pytest

from conftest import input_config
from maskclip_jax.data import fake_data
from maskclip_jax.data import pipeline

make_config = functools.partial(input_config, shuffle_buffer=10, cycle_length=2)


def check_resume(config, data, tmp_path, *, batch_size=4, seed=5):
  def fresh():
    return pipeline.make_train_iterator(config, data=data, global_batch_size=batch_size,
                                        seed=seed, process_index=0, process_count=1)

  uninterrupted = fresh()
  reference = [next(uninterrupted) for _ in range(10)]

  first = fresh()
  for k in range(5):
    batch = next(first)
    for key in batch:  # The same seed gives the same stream.
      np.testing.assert_array_equal(batch[key], reference[k][key])
  first.save(str(tmp_path / "position"))
  skipped_at_save = first.skipped_count
  next(first)  # Moving on after saving must not change what was saved.
  del first

  resumed = fresh()
  resumed.restore(str(tmp_path / "position"))
  assert resumed.batches_yielded == 5
  assert resumed.skipped_count == skipped_at_save
  for k in range(5, 10):
    batch = next(resumed)
    assert batch.keys() == reference[k].keys()
    for key in batch:
      np.testing.assert_array_equal(batch[key], reference[k][key], err_msg=f"batch {k + 1}")
  assert resumed.skipped_count == uninterrupted.skipped_count

  # And the stream was not trivially constant.
  assert not np.array_equal(reference[5]["image"], reference[6]["image"])
  return reference


def test_webdataset_resume_is_bit_exact_across_epochs_and_bad_samples(tmp_path):
  samples = [fake_data.sample(i) for i in range(22)]
  samples[3].image = b"broken"
  samples[17].caption = None
  fake_data.write_wds(str(tmp_path / "shards"), samples, per_shard=6)
  # 20 good samples, 5 batches an epoch: batches 6-10 are the second epoch, reshuffled.
  reference = check_resume(make_config(), f"wds:{tmp_path}/shards/*.tar", tmp_path)
  epoch1 = [i for b in reference[:5] for i in fake_data.image_ids(b["image"])]
  epoch2 = [i for b in reference[5:] for i in fake_data.image_ids(b["image"])]
  assert sorted(epoch1) == sorted(epoch2) and epoch1 != epoch2


def test_synthetic_tfds_resume_is_bit_exact(tmp_path):
  config = make_config(tfds_data_dir=str(tmp_path / "tfds"), synthetic_train_size=24,
                       synthetic_test_size=4)
  check_resume(config, "synthetic", tmp_path, batch_size=8)


def test_tfrecord_and_csv_resume_is_bit_exact(tmp_path):
  fake_data.write_tfrecords(str(tmp_path / "records"), list(range(15)), per_shard=4)
  check_resume(make_config(), f"tfrecord:{tmp_path}/records/*.tfrecord", tmp_path / "a")
  csv_path = fake_data.write_csv(str(tmp_path / "csv"), list(range(9)))
  check_resume(make_config(), f"csv:{csv_path}", tmp_path / "b")


def test_processes_save_side_by_side(tmp_path):
  fake_data.write_wds(str(tmp_path), [fake_data.sample(i) for i in range(16)], per_shard=4)
  data = f"wds:{tmp_path}/*.tar"
  iterators = [pipeline.make_train_iterator(make_config(), data=data, global_batch_size=4,
                                            seed=0, process_index=p, process_count=2)
               for p in (0, 1)]
  for it in iterators:
    next(it)
    it.save(str(tmp_path / "ckpt"))
  names = sorted(os.listdir(tmp_path / "ckpt"))
  assert "input-00000-of-00002.json" in names and "input-00001-of-00002.json" in names
  expected = [next(it) for it in iterators]
  for p in (0, 1):
    fresh = pipeline.make_train_iterator(make_config(), data=data, global_batch_size=4, seed=0,
                                         process_index=p, process_count=2)
    fresh.restore(str(tmp_path / "ckpt"))
    np.testing.assert_array_equal(next(fresh)["image"], expected[p]["image"])


def test_restore_refuses_a_different_pipeline(tmp_path):
  fake_data.write_wds(str(tmp_path), [fake_data.sample(i) for i in range(8)], per_shard=8)
  data = f"wds:{tmp_path}/00000.tar"
  it = pipeline.make_train_iterator(make_config(), data=data, global_batch_size=4, seed=0,
                                    process_index=0, process_count=1)
  next(it)
  it.save(str(tmp_path / "ckpt"))
  other = pipeline.make_train_iterator(make_config(), data=data, global_batch_size=4, seed=1,
                                       process_index=0, process_count=1)
  with pytest.raises(ValueError, match="seed: saved 0, now 1"):
    other.restore(str(tmp_path / "ckpt"))
  two = pipeline.make_train_iterator(make_config(), data=data, global_batch_size=4, seed=0,
                                     process_index=0, process_count=2)
  with pytest.raises(FileNotFoundError, match="process 0 of 2"):
    two.restore(str(tmp_path / "ckpt"))
