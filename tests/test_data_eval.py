"""Eval mode: no shuffle, every example exactly once, the last batch padded and masked."""
import numpy as np
import pytest

from conftest import input_config
from maskclip_jax.config_checks import check_input
from maskclip_jax.data import fake_data
from maskclip_jax import normalization
from maskclip_jax.data import pipeline

NUM = 23  # not divisible by the batch of 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  directory = tmp_path_factory.mktemp("eval")
  fake_data.write_wds(str(directory), [fake_data.sample(i) for i in range(NUM)], per_shard=6)
  return f"wds:{directory}/*.tar"


def test_every_example_exactly_once_with_a_masked_last_batch(data):
  it = pipeline.make_eval_iterator(input_config(), data=data, global_batch_size=8,
                                   process_index=0, process_count=1)
  batches = list(it)
  assert len(batches) == 3
  assert [int(b["mask"].sum()) for b in batches] == [8, 8, 7]
  for batch in batches:
    assert set(batch) == {"image", "text", "mask"}
    assert batch["mask"].dtype == np.bool_ and batch["mask"].shape == (8,)
    assert batch["image"].shape == (8, 32, 32, 3) and batch["text"].shape == (8, 77)
  last = batches[-1]
  assert not last["image"][~last["mask"]].any() and not last["text"][~last["mask"]].any()
  ids = [i for b in batches for i in fake_data.image_ids(b["image"][b["mask"]])]
  text_ids = [i for b in batches for i in fake_data.text_ids(b["text"][b["mask"]], NUM)]
  assert ids == text_ids
  assert sorted(ids) == list(range(NUM))
  # No shuffling: a second pass gives the same batches in the same order.
  it.reset()
  again = list(it)
  for a, b in zip(batches, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_padding_to_a_fixed_number_of_batches(data):
  it = pipeline.make_eval_iterator(input_config(), data=data, global_batch_size=8,
                                   process_index=0, process_count=1, num_batches=5)
  batches = list(it)
  assert len(batches) == 5 and [int(b["mask"].sum()) for b in batches] == [8, 8, 7, 0, 0]
  too_few = pipeline.make_eval_iterator(input_config(), data=data, global_batch_size=8,
                                        process_index=0, process_count=1, num_batches=2)
  with pytest.raises(RuntimeError, match="more than num_batches=2"):
    list(too_few)
  forever = pipeline.make_eval_iterator(input_config(), data=data, global_batch_size=8,
                                        process_index=0, process_count=1, pad_forever=True)
  masks = [int(next(forever)["mask"].sum()) for _ in range(6)]
  assert masks == [8, 8, 7, 0, 0, 0]


def test_eval_images_are_resized_and_centre_cropped(tmp_path):
  # A 40x80 image: left quarter red, middle half green, right quarter blue. Resizing the
  # shorter side to 32 gives 32x64; the centre crop keeps only the green half.
  pixels = np.zeros((40, 80, 3), np.uint8)
  pixels[:, :20] = (255, 0, 0)
  pixels[:, 20:60] = (0, 255, 0)
  pixels[:, 60:] = (0, 0, 255)
  sample = fake_data.Sample(key="wide", image=fake_data.encode_image(pixels, "png"),
                            caption="wide", image_ext="png")
  fake_data.write_tar(str(tmp_path / "wide.tar"), [sample])
  batch = next(pipeline.make_eval_iterator(input_config(), data=f"wds:{tmp_path}/wide.tar",
                                           global_batch_size=2, process_index=0,
                                           process_count=1))
  image = batch["image"][0] * np.array(normalization.CLIP_STD) + np.array(normalization.CLIP_MEAN)
  np.testing.assert_allclose(image[:, 2:-2], np.broadcast_to([0, 1, 0], (32, 28, 3)), atol=1e-3)
  assert batch["mask"].tolist() == [True, False]


def test_uint8_images_normalised_later_equal_host_normalised_ones(data):
  """image_dtype='uint8' hands over pixels; normalization.normalize (numpy or jax) matches."""
  import jax.numpy as jnp
  floats = next(pipeline.make_eval_iterator(input_config(), data=data, global_batch_size=8,
                                            process_index=0, process_count=1))
  config = input_config()
  config.image_dtype = "uint8"
  pixels = next(pipeline.make_eval_iterator(config, data=data, global_batch_size=8,
                                            process_index=0, process_count=1))
  assert pixels["image"].dtype == np.uint8
  np.testing.assert_array_equal(pixels["text"], floats["text"])
  # Rounding to whole pixel values is the only difference: half a level.
  half_level = 0.5 / 255 / min(normalization.CLIP_STD)
  np.testing.assert_allclose(normalization.normalize(pixels["image"]), floats["image"],
                             atol=half_level + 1e-6)
  np.testing.assert_allclose(np.asarray(normalization.normalize(jnp.asarray(pixels["image"]))),
                             normalization.normalize(pixels["image"]), rtol=1e-6)
  config.image_dtype = "bfloat16"
  with pytest.raises(ValueError, match="image_dtype='bfloat16'"):
    check_input(config)
