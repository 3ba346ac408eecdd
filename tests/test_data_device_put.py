"""Host-local batches become global jax.Arrays sharded over ('data', 'fsdp')."""
import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from maskclip_jax.data import device_put


def mesh():
  return Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))


def test_batch_is_sharded_over_the_batch_axis():
  sharding = NamedSharding(mesh(), P(("data", "fsdp")))
  local = {"image": np.random.rand(16, 8, 8, 3).astype(np.float32),
           "text": np.arange(16 * 77, dtype=np.int32).reshape(16, 77),
           "mask": np.ones(16, bool)}
  batch = device_put.make_global_batch(local, sharding)
  for name, array in batch.items():
    assert array.shape == local[name].shape and array.dtype == local[name].dtype
    assert array.sharding == sharding
    assert len(array.addressable_shards) == 8
    assert array.addressable_shards[0].data.shape[0] == 2
    np.testing.assert_array_equal(np.asarray(array), local[name])


def test_data_only_sharding_replicates_over_the_other_axis():
  batch = device_put.make_global_batch({"x": np.arange(8.0)}, NamedSharding(mesh(), P("data")))
  assert batch["x"].addressable_shards[0].data.shape == (2,)


def test_indivisible_batch_names_the_fix():
  with pytest.raises(ValueError, match="'text'.*divisible by 8"):
    device_put.make_global_batch({"text": np.zeros((6, 77), np.int32)},
                                 NamedSharding(mesh(), P(("data", "fsdp"))))
