"""Processes read disjoint shares that together cover every example once per epoch."""
import functools
import hashlib

import numpy as np
import pytest

from conftest import input_config
from maskclip_jax.data import fake_data
from maskclip_jax.data import file_patterns
from maskclip_jax.data import pipeline

make_config = functools.partial(input_config, shuffle_buffer=20, cycle_length=2)


def first_epoch_ids(data, *, process_index, process_count, local_examples, local_batch):
  """Ids of the first epoch of one process's training stream (batches fill it exactly)."""
  assert local_examples % local_batch == 0
  it = pipeline.make_train_iterator(make_config(), data=data,
                                    global_batch_size=local_batch * process_count, seed=11,
                                    process_index=process_index, process_count=process_count)
  ids = []
  for _ in range(local_examples // local_batch):
    batch = next(it)
    image_ids = fake_data.image_ids(batch["image"])
    np.testing.assert_array_equal(image_ids, fake_data.text_ids(batch["text"], 64))
    ids.extend(image_ids)
  return ids


@pytest.mark.parametrize("num_shards, per_shard", [(6, 9), (1, 54)])
def test_two_processes_are_disjoint_and_cover_all_once(tmp_path, num_shards, per_shard):
  """6 shards: 3 whole shards each; 1 shard: every other example each."""
  samples = [fake_data.sample(i) for i in range(num_shards * per_shard)]
  fake_data.write_wds(str(tmp_path), samples, per_shard=per_shard)
  data = f"wds:{tmp_path}/*.tar"
  shares = [first_epoch_ids(data, process_index=p, process_count=2, local_examples=27,
                            local_batch=9) for p in (0, 1)]
  for share in shares:
    assert len(share) == len(set(share)) == 27  # each example once in the epoch
  assert not set(shares[0]) & set(shares[1])
  assert sorted(shares[0] + shares[1]) == list(range(54))


def test_uneven_eval_shares_cover_all_once_and_stay_in_step(tmp_path):
  """5 shards over 3 processes (2, 2, 1 shards): padding keeps every process at one step count."""
  fake_data.write_tfrecords(str(tmp_path), list(range(25)), per_shard=5)
  data = f"tfrecord:{tmp_path}/*.tfrecord"
  shares = []
  for p in range(3):
    it = pipeline.make_eval_iterator(make_config(), data=data, global_batch_size=12,
                                     process_index=p, process_count=3, num_batches=3)
    batches = list(it)
    assert len(batches) == 3
    shares.append([i for b in batches for i in fake_data.text_ids(b["text"][b["mask"]], 25)])
  assert [len(s) for s in shares] == [10, 10, 5]
  assert sorted(sum(shares, [])) == list(range(25))


def test_tfds_even_splits_are_disjoint_and_cover_all(tmp_path):
  config = make_config(tfds_data_dir=str(tmp_path), synthetic_train_size=10,
                       synthetic_test_size=23)

  def row_hashes(process_index, process_count):
    it = pipeline.make_eval_iterator(config, data="synthetic:test", global_batch_size=4,
                                     process_index=process_index, process_count=process_count)
    hashes = []
    for batch in it:
      for image, text in zip(batch["image"][batch["mask"]], batch["text"][batch["mask"]]):
        hashes.append(hashlib.sha1(image.tobytes() + text.tobytes()).hexdigest())
    return hashes, it.num_examples

  everything, total = row_hashes(0, 1)
  assert total == 23 and len(set(everything)) == 23
  first, n0 = row_hashes(0, 2)
  second, n1 = row_hashes(1, 2)
  assert (n0, n1) == (len(first), len(second))
  assert abs(len(first) - len(second)) <= 1
  assert not set(first) & set(second)
  assert sorted(first + second) == sorted(everything)


def test_files_for_process_round_robin():
  files = [f"f{i}" for i in range(7)]
  shares = [file_patterns.files_for_process(files, p, 3) for p in range(3)]
  assert [s for s, by_example in shares] == [["f0", "f3", "f6"], ["f1", "f4"], ["f2", "f5"]]
  assert not any(by_example for _, by_example in shares)
  assert file_patterns.files_for_process(files[:2], 1, 3) == (files[:2], True)
