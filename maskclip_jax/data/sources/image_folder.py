"""`folder:PATH`: ImageNet-style class subfolders, PATH/<class>/**/<image>, for classification.

The label of an image is the index of its class folder among the sorted folder names, as in
torchvision's `ImageFolder` (folders whose names start with '.' are not classes: a stray
`.ipynb_checkpoints` would otherwise shift every label). Images are the files with one of
`IMAGE_EXTENSIONS` (any case) anywhere below a class folder; other files are not examples.
There are no captions. An image that cannot be read or decoded is skipped and counted like
any other bad example; a class folder without images is still a class.

The image, caption and label keys of `config.input` do not apply: the same input section
serves other sources (the train data, or an evaluator's defaults), so they are ignored here.
"""
import os

import numpy as np
import tensorflow as tf

from maskclip_jax.data.sources import Source

# What `tf.io.decode_image` reads.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
# Absolute URLs of other filesystems (gs://...) are listed through tf.io.gfile.
_URL = "://"


def _check_folder(path: str, data: str) -> None:
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"Data {data!r}: the folder {path!r} does not exist; write "
                            "folder:PATH with PATH/<class name>/<image files>.")
  if not tf.io.gfile.isdir(path):
    raise NotADirectoryError(f"Data {data!r}: {path!r} is a file, not a folder; write "
                             "folder:PATH with PATH/<class name>/<image files>.")


def folder_class_names(path: str, *, data: str | None = None) -> list[str]:
  """The class names of a `folder:PATH` data set: its subfolders' names, sorted, as written.

  Label i of the data set is class `folder_class_names(PATH)[i]`. `data` is the data string
  to quote in errors (default `folder:PATH`).
  """
  data = data or f"folder:{path}"
  _check_folder(path, data)
  names = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(path)
                 if not name.startswith(".") and tf.io.gfile.isdir(os.path.join(path, name)))
  if not names:
    raise ValueError(f"Data {data!r}: the folder {path!r} holds no class subfolders; a "
                     "folder: data set is PATH/<class name>/<image files>, as ImageNet's.")
  return names


def _walk(path: str):
  # os.walk for local folders: ImageNet's 1.28M files list in seconds, where tf.io.gfile
  # makes one stat call per file.
  if _URL in path:
    return tf.io.gfile.walk(path)
  return os.walk(path, followlinks=True)


def list_images(path: str, *, data: str | None = None) -> tuple[list[str], list[int]]:
  """(image paths, labels) of every image under PATH's class folders, in a fixed order.

  Sorted by class, then by path within the class.
  """
  data = data or f"folder:{path}"
  files, labels = [], []
  for label, name in enumerate(folder_class_names(path, data=data)):
    found = []
    for directory, subdirectories, names in _walk(os.path.join(path, name)):
      subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
      found.extend(os.path.join(directory, n) for n in names
                   if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
    files.extend(sorted(found))
    labels.extend([label] * len(found))
  if not files:
    raise FileNotFoundError(f"Data {data!r}: the class folders of {path!r} hold no images "
                            f"(files ending in {', '.join(IMAGE_EXTENSIONS)}).")
  return files, labels


def _epoch_permutation(size: int, seed: int) -> tf.data.Dataset:
  """The indices 0..size-1 in a new random order at every pass over the dataset.

  The buffer shuffles indices, not paths: the buffer is part of every saved pipeline position,
  and int64 indices cost 8 bytes an image there (10 MB for ImageNet's 1.28M) where the paths
  would cost ~100. (A stateless permutation seeded per pass by `Dataset.random(...,
  rerandomize_each_iteration=True)` would save only an index, but its restored iterators drew
  other seeds for later passes in 1-5% of restores here: not an exact resume.)
  """
  return tf.data.Dataset.range(size).shuffle(size, seed=seed, reshuffle_each_iteration=True)


def make(spec, input_config, *, training, seed, process_index, process_count) -> Source:
  del input_config  # See the module doc: the key fields belong to other sources.
  files, labels = list_images(spec.location, data=spec.text)
  # (In eval a process without images just gives padding rows.)
  if training and len(files) < process_count:
    raise ValueError(f"Data {spec.text!r} holds {len(files)} images, fewer than the "
                     f"{process_count} processes: some would train on nothing. Use more images "
                     "or fewer processes.")
  # Round robin: every process holds a share of every class, and shares differ by at most one.
  files = np.asarray(files[process_index::process_count], dtype=str)
  labels = np.asarray(labels[process_index::process_count], dtype=np.int64)
  examples = {"path": tf.constant(files), "label": tf.constant(labels)}
  if training:
    dataset = _epoch_permutation(len(files), seed).map(
        tf.autograph.experimental.do_not_convert(
            lambda i: tf.nest.map_structure(lambda x: tf.gather(x, i), examples)))
  else:
    dataset = tf.data.Dataset.from_tensor_slices(examples)

  def parse(example):
    # A file gone since listing raises here, which skips and counts the example.
    image = tf.io.read_file(example["path"])
    return {"image": image, "caption": tf.constant(""), "label": example["label"],
            "ok": tf.strings.length(image) > 0}

  return Source(dataset=dataset, parse=parse, has_captions=False, has_labels=True,
                num_examples=len(files))
