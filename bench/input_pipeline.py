"""Input pipeline throughput: decoded + augmented + tokenised training images per second per core.

Writes webdataset shards of photo-like 256x256 JPEGs with captions into a temporary folder, runs
the training pipeline (tar parsing, shuffle, RandomResizedCrop to 224, CLIP normalisation, CLIP
tokenizer, batching) and prints the steady-state rate. `--breakdown` also times the stages
alone, to show where the time goes.

  python bench/input_pipeline.py                  # 8 shards x 256 images, 20 s
  python bench/input_pipeline.py --seconds=5 --num_shards=2 --per_shard=64
"""
import argparse
import os
import random
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maskclip_jax.data import config as config_lib  # noqa: E402
from maskclip_jax.data import fake_data  # noqa: E402

_WORDS = ("a photo of the small large red blue green dog cat man woman street city beach "
          "mountain with on in at near two three old new wooden bright dark sunset kitchen "
          "table car bike tree house river people playing sitting standing holding").split()


def write_shards(directory: str, num_shards: int, per_shard: int, size: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  words = random.Random(seed)
  samples = []
  for i in range(num_shards * per_shard):
    caption = " ".join(words.choice(_WORDS) for _ in range(words.randint(5, 25)))
    samples.append(fake_data.Sample(key=f"{i:09d}", image=fake_data.textured_image(rng, size),
                                    caption=caption))
  return fake_data.write_wds(directory, samples, per_shard)


def cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def cpu_seconds() -> float:
  """CPU time of this process (all its threads) so far."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def time_batches(iterator, batch_size: int, seconds: float,
                 warmup: int) -> tuple[float, float]:
  """-> (images per wall-clock second, images per CPU-second of this process)."""
  for _ in range(warmup):
    next(iterator)
  start, start_cpu, images = time.perf_counter(), cpu_seconds(), 0
  while time.perf_counter() - start < seconds:
    next(iterator)
    images += batch_size
  return (images / (time.perf_counter() - start), images / (cpu_seconds() - start_cpu))


def breakdown(args, data: str, config) -> None:
  """Each stage alone, single-threaded where it is per example, to locate the cost."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from maskclip_jax.data import preprocess
  from maskclip_jax.data import source_spec
  from maskclip_jax.data import sources
  from maskclip_jax.data import tokenizer

  spec = source_spec.parse(data, default_split="train")
  source = sources.make_source(spec, config, training=True, seed=0, process_index=0,
                               process_count=1)
  examples = list(source.dataset.take(512).as_numpy_iterator())
  start = time.perf_counter()
  for _ in source.dataset.as_numpy_iterator():
    pass
  count = args.num_shards * args.per_shard
  print(f"  tar parsing:       {count / (time.perf_counter() - start):8.0f} samples/s")

  # As tensors: a tf.function would retrace for every distinct Python bytes value.
  images = [tf.constant(e["image"]) for e in examples]
  crop = tf.function(lambda b, s: preprocess.normalize(
      preprocess.decode_random_resized_crop(b, args.image_size, s)))
  crop(images[0], tf.constant([0, 0], tf.int64))
  start = time.perf_counter()
  for i, image in enumerate(images):
    crop(image, tf.constant([0, i], tf.int64))
  print(f"  decode+crop+resize: {len(images) / (time.perf_counter() - start):7.0f} images/s "
        "on one core")
  decode_only = tf.function(preprocess.decode)
  start = time.perf_counter()
  for image in images:
    decode_only(image)
  print(f"  full JPEG decode:  {len(images) / (time.perf_counter() - start):8.0f} images/s "
        "on one core")

  captions = [e["caption"] for e in examples]
  tok = tokenizer.get_tokenizer()
  tok(captions)  # warm the word cache like a running pipeline would
  start = time.perf_counter()
  for _ in range(5):
    tok(captions)
  print(f"  tokenizer:         {5 * len(captions) / (time.perf_counter() - start):8.0f} "
        "captions/s (Python, one core)")


def main(argv=None) -> float:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_shards", type=int, default=8)
  parser.add_argument("--per_shard", type=int, default=256)
  parser.add_argument("--source_size", type=int, default=256)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--seconds", type=float, default=20.0)
  parser.add_argument("--warmup_batches", type=int, default=5)
  parser.add_argument("--shuffle_buffer", type=int, default=1000)
  parser.add_argument("--resize_method", default="bicubic", help="config.input.resize_method")
  parser.add_argument("--image_dtype", default="float32", help="config.input.image_dtype")
  parser.add_argument("--workdir", default="", help="where to write shards (default: a temp dir)")
  parser.add_argument("--breakdown", action="store_true", help="also time each stage alone")
  args = parser.parse_args(argv)

  from maskclip_jax.data import pipeline  # tensorflow loads here, after the flags parse

  with tempfile.TemporaryDirectory() as tmp:
    directory = args.workdir or tmp
    start = time.perf_counter()
    write_shards(directory, args.num_shards, args.per_shard, args.source_size)
    print(f"Wrote {args.num_shards} shards x {args.per_shard} {args.source_size}px JPEGs in "
          f"{time.perf_counter() - start:.1f} s to {directory}")
    data = f"wds:{directory}/{{00000..{args.num_shards - 1:05d}}}.tar"
    config = config_lib.input_config_defaults()
    config.train_data = data
    config.image_size = args.image_size
    config.shuffle_buffer = args.shuffle_buffer
    config.resize_method = args.resize_method
    config.image_dtype = args.image_dtype
    iterator = pipeline.make_train_iterator(config, global_batch_size=args.batch_size, seed=0,
                                            process_index=0, process_count=1)
    rate, per_cpu_second = time_batches(iterator, args.batch_size, args.seconds,
                                        args.warmup_batches)
    n = cores()
    print(f"Training pipeline, {args.image_size}px from {args.source_size}px JPEG shards, "
          f"{args.resize_method}, {args.image_dtype}, batch {args.batch_size}: {rate:.0f} images/s on {n} cores = "
          f"{rate / n:.0f} images/s/core (wall clock); {per_cpu_second:.0f} images per "
          "CPU-second used (the per-core rate on a machine shared with other work)")
    if args.breakdown:
      breakdown(args, data, config)
  return rate / n


if __name__ == "__main__":
  main()
