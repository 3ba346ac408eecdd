"""Small caption data sets on disk, in every format the pipeline reads, for tests and benchmarks.

Example `i` has a solid colour that encodes `i` (`colour_of`, recoverable after JPEG and any crop
with `id_of_colour`) and the caption `caption_of(i)`, so a test can check that each image arrives
with its own caption.
"""
import dataclasses
import functools
import io
import os
import tarfile

import numpy as np
from PIL import Image

from maskclip_jax import normalization

_STEP = 16  # colour levels 8, 24, ..., 248: JPEG's error on flat colour stays far below 8


def colour_of(i: int) -> tuple[int, int, int]:
  if not 0 <= i < 16**3:
    raise ValueError(f"Example id {i} is outside [0, 4096), the ids colours can encode.")
  return (8 + _STEP * (i % 16), 8 + _STEP * (i // 16 % 16), 8 + _STEP * (i // 256))


def id_of_colour(rgb) -> int:
  r, g, b = (int(np.clip(round((c - 8) / _STEP), 0, 15)) for c in rgb)
  return r + 16 * g + 256 * b


def caption_of(i: int) -> str:
  return f"a photo of example number {i}"


def encode_image(pixels: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
  out = io.BytesIO()
  kwargs = {"quality": quality} if fmt == "jpeg" else {}
  Image.fromarray(pixels).save(out, format=fmt, **kwargs)
  return out.getvalue()


def solid_image(i: int, height: int = 40, width: int = 48, fmt: str = "jpeg") -> bytes:
  pixels = np.empty((height, width, 3), np.uint8)
  pixels[...] = colour_of(i)
  return encode_image(pixels, fmt)


def textured_image(rng: np.random.Generator, size: int, quality: int = 90) -> bytes:
  """A photo-like JPEG (smooth colour fields plus grain), sized like web images for benchmarks."""
  coarse = rng.uniform(0, 255, (size // 32 + 1, size // 32 + 1, 3)).astype(np.uint8)
  smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32)
  grain = rng.normal(0, 12, (size, size, 3))
  return encode_image(np.clip(smooth + grain, 0, 255).astype(np.uint8), "jpeg", quality)


@dataclasses.dataclass
class Sample:
  """One webdataset sample: members are written in this order; None leaves a member out."""
  key: str
  image: bytes | None
  caption: str | None
  image_ext: str = "jpg"
  json: str | None = None


def sample(i: int, fmt: str = "jpeg", **kwargs) -> Sample:
  ext = {"jpeg": "jpg", "png": "png", "webp": "webp"}[fmt]
  return Sample(key=f"{i:06d}", image=solid_image(i, fmt=fmt, **kwargs), caption=caption_of(i),
                image_ext=ext, json=f'{{"id": {i}}}')


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  info.mtime = 0
  tar.addfile(info, io.BytesIO(data))


def write_tar(path: str, samples: list[Sample], fmt=tarfile.PAX_FORMAT) -> None:
  with tarfile.open(path, "w", format=fmt) as tar:
    for s in samples:
      if s.image is not None:
        _add_member(tar, f"{s.key}.{s.image_ext}", s.image)
      if s.caption is not None:
        _add_member(tar, f"{s.key}.txt", s.caption.encode("utf-8"))
      if s.json is not None:
        _add_member(tar, f"{s.key}.json", s.json.encode("utf-8"))


def write_wds(directory: str, samples: list[Sample], per_shard: int) -> list[str]:
  """Shards `{directory}/{00000..}.tar` of `per_shard` samples each -> their paths."""
  os.makedirs(directory, exist_ok=True)
  paths = []
  for shard, start in enumerate(range(0, len(samples), per_shard)):
    paths.append(os.path.join(directory, f"{shard:05d}.tar"))
    write_tar(paths[-1], samples[start:start + per_shard])
  return paths


def write_tfrecords(directory: str, ids: list[int], per_shard: int, *, image_key: str = "jpg",
                    caption_key: str = "txt") -> list[str]:
  """img2dataset-style TFRecord shards (key, image under `image_key`, caption under `txt`)."""
  import tensorflow as tf  # Only this writer needs it.

  def feature(value: bytes):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

  os.makedirs(directory, exist_ok=True)
  paths = []
  for shard, start in enumerate(range(0, len(ids), per_shard)):
    paths.append(os.path.join(directory, f"{shard:05d}.tfrecord"))
    with tf.io.TFRecordWriter(paths[-1]) as writer:
      for i in ids[start:start + per_shard]:
        example = tf.train.Example(features=tf.train.Features(feature={
            "key": feature(f"{i:06d}".encode()),
            image_key: feature(solid_image(i)),
            caption_key: feature(caption_of(i).encode()),
        }))
        writer.write(example.SerializeToString())
  return paths


def write_csv(directory: str, ids: list[int], *, separator: str = "\t",
              image_column: str = "filepath", caption_column: str = "title",
              absolute_paths: bool = False) -> str:
  """open_clip's CSV: a header, then one line an image (PNG files beside it) -> the CSV path."""
  image_dir = os.path.join(directory, "images")
  os.makedirs(image_dir, exist_ok=True)
  lines = [separator.join(["id", image_column, caption_column])]
  for i in ids:
    name = f"{i:06d}.png"
    with open(os.path.join(image_dir, name), "wb") as f:
      f.write(solid_image(i, fmt="png"))
    path = os.path.join(image_dir, name) if absolute_paths else f"images/{name}"
    lines.append(separator.join([str(i), path, caption_of(i)]))
  csv_path = os.path.join(directory, "data.csv")
  with open(csv_path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return csv_path


def image_ids(images: np.ndarray) -> np.ndarray:
  """Example ids from a batch of normalised solid-colour images (B, H, W, 3)."""
  pixels = (images * np.asarray(normalization.CLIP_STD) +
            np.asarray(normalization.CLIP_MEAN)) * 255
  return np.array([id_of_colour(p.reshape(-1, 3).mean(0)) for p in pixels])


@functools.lru_cache(maxsize=4)
def _ids_by_tokens(num_ids: int) -> dict:
  from maskclip_jax.data import tokenizer

  tokens = tokenizer.tokenize([caption_of(i) for i in range(num_ids)])
  return {tuple(row): i for i, row in enumerate(tokens)}


def text_ids(texts: np.ndarray, num_ids: int) -> np.ndarray:
  """Example ids from a batch of token ids of `caption_of` captions (-1: no such caption)."""
  lookup = _ids_by_tokens(num_ids)
  return np.array([lookup.get(tuple(row), -1) for row in texts])
