"""Image-text retrieval: image->text and text->image Recall@K, several captions per image.

Image->text: an image is a hit at K when any of its captions is among the K texts nearest to
it. Text->image: a caption is a hit at K when its image is among the K images nearest to it.
Nearest is by cosine similarity; a tie counts against the query (only strictly better
candidates push the true one down).
"""
import csv
import json
import os

import ml_collections
import numpy as np
import tensorflow as tf

from maskclip_jax.data import preprocess, source_spec
from maskclip_jax.data import tokenizer as tokenizer_lib
from maskclip_jax.data.sources import tfds_source
from maskclip_jax.evaluation.context import EvalContext
from maskclip_jax.ranking import l2_normalize

_CHUNK = 1024  # queries scored at once: bounds the similarity block's memory


def recall_at_k(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                text_image: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
  """{'i2t_r1', ..., 't2i_r1', ...} in [0, 1]; `text_image[j]` is caption j's image index."""
  images = l2_normalize(image_embeddings).astype(np.float32)
  texts = l2_normalize(text_embeddings).astype(np.float32)
  text_image = np.asarray(text_image)
  n_images, n_texts = len(images), len(texts)
  if len(text_image) != n_texts or text_image.min() < 0 or text_image.max() >= n_images:
    raise ValueError("text_image must give each caption's image index in [0, num_images).")

  i2t_rank = np.empty(n_images, np.int64)
  own = np.zeros((n_images, n_texts), bool)
  own[text_image, np.arange(n_texts)] = True
  for start in range(0, n_images, _CHUNK):
    sims = images[start:start + _CHUNK] @ texts.T
    best_own = np.where(own[start:start + _CHUNK], sims, -np.inf).max(axis=1)
    i2t_rank[start:start + _CHUNK] = (sims > best_own[:, None]).sum(axis=1)

  t2i_rank = np.empty(n_texts, np.int64)
  for start in range(0, n_texts, _CHUNK):
    sims = texts[start:start + _CHUNK] @ images.T
    true = sims[np.arange(len(sims)), text_image[start:start + _CHUNK]]
    t2i_rank[start:start + _CHUNK] = (sims > true[:, None]).sum(axis=1)

  metrics = {}
  for k in ks:
    metrics[f"i2t_r{k}"] = float(np.mean(i2t_rank < k))
    metrics[f"t2i_r{k}"] = float(np.mean(t2i_rank < k))
  metrics["mean_recall"] = float(np.mean(list(metrics.values())))
  return metrics


# ------------------------------------------------------------------ manifests
def _captions(value, where: str) -> list[str]:
  captions = [value] if isinstance(value, str) else value
  if not isinstance(captions, list) or not captions or not all(
      isinstance(c, str) and c.strip() for c in captions):
    raise ValueError(f"{where}: captions must be a non-empty string or list of strings, got "
                     f"{value!r}.")
  return captions


def read_json_manifest(path: str, split: str = "test") -> list[tuple[str, list[str]]]:
  """[(image path, captions)] from LAVIS's list format or Karpathy's dataset_*.json."""
  with open(path) as f:
    content = json.load(f)
  entries = []
  if isinstance(content, dict) and "images" in content:  # Karpathy
    for item in content["images"]:
      if item.get("split", split) != split:
        continue
      image = os.path.join(item.get("filepath", ""), item["filename"])
      entries.append((image, _captions([s["raw"] for s in item["sentences"]], path)))
  elif isinstance(content, list):
    for i, item in enumerate(content):
      if not isinstance(item, dict) or "image" not in item or "caption" not in item:
        raise ValueError(f"{path}: entry {i} is not {{'image': path, 'caption': [...]}}.")
      entries.append((item["image"], _captions(item["caption"], f"{path} entry {i}")))
  else:
    raise ValueError(f"{path}: expected a list of {{'image', 'caption'}} entries or Karpathy's "
                     "{'images': [...]} format.")
  if not entries:
    raise ValueError(f"{path}: no entries (split {split!r}).")
  return entries


def read_csv_manifest(path: str, image_key: str, caption_key: str,
                      separator: str) -> list[tuple[str, list[str]]]:
  """[(image path, captions)] from a CSV with one caption per row; rows of an image grouped."""
  grouped: dict[str, list[str]] = {}
  with open(path, newline="") as f:
    reader = csv.DictReader(f, delimiter=separator)
    for key in (image_key, caption_key):
      if key not in (reader.fieldnames or []):
        raise ValueError(f"{path}: no column {key!r}; columns: {reader.fieldnames}. Set the "
                         "evaluator's image_key / caption_key.")
    for row in reader:
      grouped.setdefault(row[image_key], []).append(row[caption_key])
  return [(image, _captions(caps, path)) for image, caps in grouped.items()]


# ------------------------------------------------------------------ images
def _padded_batches(dataset: tf.data.Dataset, local_batch_size: int, image_size: int):
  """Full local batches with `mask`, then padding batches forever (see features.py)."""
  for batch in dataset.batch(local_batch_size).prefetch(2).as_numpy_iterator():
    real = len(batch["index"])
    pad = local_batch_size - real
    yield {"image": np.pad(batch["image"], [(0, pad), (0, 0), (0, 0), (0, 0)]),
           "index": np.pad(batch["index"].astype(np.int32), [(0, pad)]),
           "mask": np.arange(local_batch_size) < real}
  while True:
    yield {"image": np.zeros((local_batch_size, image_size, image_size, 3), np.float32),
           "index": np.zeros(local_batch_size, np.int32),
           "mask": np.zeros(local_batch_size, bool)}


def _decode(image_bytes, size, method, max_pixels=0):
  # A retrieval image is matched to its captions by index, so one over the pixel limit cannot
  # be skipped: it fails the evaluation (never decoded), naming the limit.
  return preprocess.normalize(preprocess.decode_resize_center_crop(
      image_bytes, size, method=method, max_pixels=max_pixels))


def load_retrieval_data(entry: ml_collections.ConfigDict, input_config, *,
                        local_batch_size: int, process_index: int, process_count: int):
  """(captions per image in image order, this process's padded image batches with 'index').

  `entry` is the retrieval evaluator's config entry; `input_config` is `config.input`.
  """
  size, method = input_config.image_size, input_config.resize_method
  max_pixels = input_config.get("max_image_pixels", 0)
  kind, _, rest = entry.data.partition(":")
  if kind in ("json", "csv"):
    if kind == "json":
      manifest = read_json_manifest(rest, entry.split)
    else:
      manifest = read_csv_manifest(rest, entry.image_key or "filepath",
                                   entry.caption_key or "title", input_config.csv_separator)
    root = entry.image_root or os.path.dirname(os.path.abspath(rest))
    paths = [p if os.path.isabs(p) else os.path.join(root, p) for p, _ in manifest]
    missing = [p for p in paths if not tf.io.gfile.exists(p)]
    if missing:
      raise FileNotFoundError(f"Retrieval data {entry.data!r}: {len(missing)} image(s) missing, "
                              f"e.g. {missing[:3]}; set the evaluator's image_root.")
    dataset = tf.data.Dataset.from_tensor_slices(
        {"index": np.arange(len(paths)), "path": paths})
    dataset = dataset.shard(process_count, process_index).map(
        lambda x: {"index": x["index"], "image": _decode(tf.io.read_file(x["path"]), size,
                                                          method, max_pixels)},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    captions = [caps for _, caps in manifest]
  elif kind in ("tfds", "synthetic"):
    spec = source_spec.parse(entry.data, default_split="test", field="evals.data")
    # For synthetic data, the set that input.synthetic_kind names (both store 'caption').
    image_key = "image" if kind == "synthetic" else (entry.image_key or "image")
    caption_key = "caption" if kind == "synthetic" else (entry.caption_key or "captions/text")
    captions, images = tfds_source.captions_and_encoded_images(
        spec, input_config, image_key=image_key, caption_key=caption_key)
    captions = [_captions(caps, entry.data) for caps in captions]
    dataset = images.enumerate().shard(process_count, process_index).map(
        lambda i, image: {"index": i, "image": _decode(image, size, method, max_pixels)},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    raise ValueError(f"Retrieval data {entry.data!r}: use json:PATH, csv:PATH, tfds:NAME[:SPLIT] "
                     "or synthetic[:SPLIT].")
  return captions, _padded_batches(dataset, local_batch_size, size)


def evaluate(context: EvalContext, entry: ml_collections.ConfigDict) -> dict[str, float]:
  """Image->text and text->image Recall@K on `entry.data` (config type 'retrieval')."""
  import jax  # pylint: disable=g-import-not-at-top
  captions, batches = load_retrieval_data(
      entry, context.input_config, local_batch_size=entry.batch_size // jax.process_count(),
      process_index=jax.process_index(), process_count=jax.process_count())
  features = context.encoders.image_features(batches, image_tower_name=entry.image_tower,
                                             keep=("index",))
  order = np.argsort(features["index"])
  if not np.array_equal(features["index"][order], np.arange(len(captions))):
    raise RuntimeError("Retrieval: the gathered images are not each image exactly once.")
  image_embeddings = features["embedding"][order]
  texts = [c for caps in captions for c in caps]
  text_image = np.repeat(np.arange(len(captions)), [len(c) for c in captions])
  tokens = tokenizer_lib.tokenize(texts, context.context_length)
  text_embeddings = context.encoders.text_embeddings(tokens, entry.batch_size)
  metrics = recall_at_k(image_embeddings, text_embeddings, text_image, tuple(entry.recall_at))
  metrics.update(num_images=float(len(captions)), num_captions=float(len(texts)))
  return metrics
