"""`folder:PATH`: ImageNet-style class subfolders read as labelled eval data."""
import functools
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import input_config
from maskclip_jax.data import fake_data
from maskclip_jax.data import pipeline
from maskclip_jax.data import source_spec
from maskclip_jax.data import sources
from maskclip_jax.data.sources import image_folder

CLASSES = ["n01_tench", "n02_goldfish", "n03_great_white_shark"]
FORMATS = {".png": "png", ".jpg": "jpeg", ".JPEG": "jpeg", ".webp": "webp"}


def write_tree(root, per_class=(4, 5, 2)):
  """Class folders of solid images whose colour encodes the example id -> {id: label}.

  Also a corrupt image, a nested subfolder, a non-image file and a hidden folder.
  """
  labels, i = {}, 0
  for label, (name, count) in enumerate(zip(CLASSES, per_class)):
    for n in range(count):
      ext = list(FORMATS)[i % len(FORMATS)]
      sub = os.path.join(root, name, "nested") if n == 0 else os.path.join(root, name)
      os.makedirs(sub, exist_ok=True)
      with open(os.path.join(sub, f"img{i:03d}{ext}"), "wb") as f:
        f.write(fake_data.solid_image(i, fmt=FORMATS[ext]))
      labels[i] = label
      i += 1
  with open(os.path.join(root, CLASSES[1], "broken.jpg"), "wb") as f:
    f.write(fake_data.solid_image(99)[:50])  # cut JPEG: skipped and counted
  with open(os.path.join(root, CLASSES[0], "notes.txt"), "w") as f:
    f.write("not an image, not an example")
  with open(os.path.join(root, "README.txt"), "w") as f:
    f.write("files beside the class folders are not classes")
  os.makedirs(os.path.join(root, ".ipynb_checkpoints"))
  return labels


# Keys set for other sources do not apply to folders.
make_config = functools.partial(input_config, caption_key="none")


def test_class_names_are_the_sorted_folder_names(tmp_path):
  write_tree(str(tmp_path))
  assert image_folder.folder_class_names(str(tmp_path)) == CLASSES


def test_eval_yields_every_example_once_with_its_label(tmp_path):
  expected = write_tree(str(tmp_path))
  it = pipeline.make_eval_iterator(make_config(), data=f"folder:{tmp_path}",
                                   global_batch_size=4, process_index=0, process_count=1)
  batches = list(it)
  assert set(batches[0]) == {"image", "mask", "label"}
  assert it.num_examples == len(expected) + 1  # the corrupt file is listed, then skipped
  assert it.skipped_count == 1
  mask = np.concatenate([b["mask"] for b in batches])
  ids = fake_data.image_ids(np.concatenate([b["image"] for b in batches])[mask])
  labels = np.concatenate([b["label"] for b in batches])[mask]
  assert sorted(ids) == sorted(expected)
  assert [expected[i] for i in ids] == labels.tolist()
  # Eval order is fixed: by class, then by path.
  assert labels.tolist() == sorted(labels.tolist())


def test_processes_share_the_images_without_overlap(tmp_path):
  expected = write_tree(str(tmp_path))
  seen = []
  for index in range(2):
    it = pipeline.make_eval_iterator(make_config(), data=f"folder:{tmp_path}",
                                     global_batch_size=4, process_index=index, process_count=2)
    for batch in it:
      seen.extend(fake_data.image_ids(batch["image"][batch["mask"]]))
  assert sorted(seen) == sorted(expected)


def test_training_reads_a_new_permutation_every_epoch(tmp_path):
  write_tree(str(tmp_path))
  spec = source_spec.parse(f"folder:{tmp_path}", default_split="train")
  source = sources.make_source(spec, make_config(), training=True, seed=3, process_index=0,
                               process_count=1)
  iterator = iter(source.dataset.repeat())
  epochs = [[next(iterator)["path"].numpy() for _ in range(source.num_examples)]
            for _ in range(3)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(epochs[2])
  assert len(set(epochs[0])) == source.num_examples
  assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
  # A saved position holds the permutation's place, and continues it exactly.
  iterator = iter(source.dataset.repeat())
  for _ in range(source.num_examples + 3):
    next(iterator)
  checkpoint = tf.train.Checkpoint(iterator=iterator)
  prefix = checkpoint.write(str(tmp_path / "ckpt" / "position"))
  rest = [next(iterator)["path"].numpy() for _ in range(source.num_examples)]
  restored = iter(source.dataset.repeat())
  tf.train.Checkpoint(iterator=restored).read(prefix).assert_consumed()
  assert [next(restored)["path"].numpy() for _ in range(source.num_examples)] == rest


def test_missing_or_empty_folders_name_the_path(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match=f"folder '{missing}' does not exist"):
    pipeline.make_eval_iterator(make_config(), data=f"folder:{missing}", global_batch_size=4,
                                process_index=0, process_count=1)
  flat = tmp_path / "flat"
  flat.mkdir()
  (flat / "a.jpg").write_bytes(fake_data.solid_image(0))
  with pytest.raises(ValueError, match=f"'{flat}' holds no class subfolders"):
    image_folder.folder_class_names(str(flat))
  with pytest.raises(ValueError, match="holds no class subfolders"):
    pipeline.make_eval_iterator(make_config(), data=f"folder:{flat}", global_batch_size=4,
                                process_index=0, process_count=1)
  (flat / "cls").mkdir()
  with pytest.raises(FileNotFoundError, match=f"class folders of '{flat}' hold no images"):
    pipeline.make_eval_iterator(make_config(), data=f"folder:{flat}", global_batch_size=4,
                                process_index=0, process_count=1)
  with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
    image_folder.folder_class_names(str(flat / "a.jpg"))
  with pytest.raises(ValueError, match="names no path; write it as folder:PATH"):
    source_spec.parse("folder:", default_split="test")
