"""The input pipeline: source -> shuffle -> decode + augment -> skip bad -> batch -> tokenize.

    it = make_train_iterator(config.input, global_batch_size=256, seed=0)
    batch = next(it)          # {'image': f32 (B, H, W, 3), 'text': i32 (B, 77)}, host-local
                              # (image: uint8 0..255 with input.image_dtype='uint8')
    it.skipped_count          # bad examples skipped so far (for the metrics)
    it.bad_shard_count        # bad shards (empty files, not tars) met so far
    it.save(dir); it.restore(dir)   # the exact position, so a resumed run sees the same batches

Batches are numpy arrays that view TF's buffers (no copy): read-only.

Design, and why:
- Every stage up to batching is TF ops, with stateless randomness keyed by the example's
  position in the stream, so `tf.train.Checkpoint(iterator=...)` saves the position exactly
  (shuffle buffer, read-ahead and all) and a restore continues bit for bit.
- The tokenizer is Python (ftfy has no TF equivalent; ids must equal open_clip's). It runs once
  per batch in a stateless `tf.numpy_function`: a pure function of the captions, so there is no
  state to lose, and the pipeline declares that (ExternalStatePolicy.IGNORE) so TF saves the rest.
- Bad examples (undecodable or empty image, an image whose header declares more than
  `input.max_image_pixels` pixels, which is never decoded, missing or empty caption, truncated
  tar member, a CSV line that does not parse, a missing file) raise inside one map, which
  `ignore_errors` drops. Each example carries its position, so the gap between two surviving
  positions is the number skipped; a scan hands that count to the next surviving example, and
  an end-of-epoch marker gives an epoch's trailing gap to its last example. Batches carry the
  sum, so the count is exact, travels with the data (and with a saved position), and costs no
  extra pass. A whole epoch with no usable example fails loudly instead of spinning forever.
- A bad shard (a wds: file that is empty or no tar) gives one marker row instead of samples,
  and a warning naming it. Marker rows are taken out before positions are given, leaving a
  running count on the rows after them; the difference between two survivors' counts travels
  like the skipped count (`bad_shard_count`).
- Shuffling happens within an epoch (files reshuffled per epoch, then a seeded buffer of encoded
  examples), so epoch k of a training stream is exactly the data once.
- Eval streams are read once, unshuffled, and padded to the full batch with `mask` = False.
"""
import atexit
import json
import os
import weakref

from absl import logging
import jax
import numpy as np
import tensorflow as tf

from maskclip_jax.data import config as config_lib
from maskclip_jax.data import preprocess
from maskclip_jax.data import source_spec
from maskclip_jax.data import sources
from maskclip_jax.data import tokenizer as tokenizer_lib

# 2: bad shards are counted (new stages and state: a position saved by 1 does not restore).
_STATE_VERSION = 2
# The functions given to tf.data here have no Python control flow over tensors, so AutoGraph's
# rewrite is skipped: it only costs time at every pipeline build.
_no_autograph = tf.autograph.experimental.do_not_convert
# Iterators still open, closed at exit (see `InputIterator.close`).
_OPEN_ITERATORS = weakref.WeakSet()


def _derived_seed(*values: int) -> int:
  """A non-negative int64 seed from a tuple of ints (seed, purpose, process index...)."""
  state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint32)
  return int((int(state[0]) << 31) ^ int(state[1]))


def _placeholder(spec: tf.TensorSpec) -> tf.Tensor:
  """A zero / empty-string tensor matching `spec` (unknown dimensions become 0)."""
  shape = [d if d is not None else 0 for d in spec.shape.as_list()]
  if spec.dtype == tf.string:
    return tf.fill(shape, "")
  return tf.zeros(shape, spec.dtype)


def _with_epoch_end(raw: tf.data.Dataset) -> tf.data.Dataset:
  """{'raw': example, 'end': False}... then one {'raw': placeholder, 'end': True}."""
  examples = raw.map(_no_autograph(lambda x: {"raw": x, "end": tf.constant(False)}))
  marker = tf.nest.map_structure(_placeholder, raw.element_spec)
  return examples.concatenate(
      tf.data.Dataset.from_tensors({"raw": marker, "end": tf.constant(True)}))


def _make_prepare(source: sources.Source, input_config, *, training: bool, augment_seed: int):
  """(position, {'raw', 'end'}) -> the example ready to batch; raises for a bad example."""
  size = input_config.image_size
  method = input_config.resize_method
  image_dtype = _IMAGE_DTYPES[input_config.image_dtype]
  finish = preprocess.normalize if image_dtype == tf.float32 else preprocess.to_uint8
  max_pixels = _max_image_pixels(input_config)

  def prepare(position, element):
    seed = tf.stack([tf.constant(augment_seed, tf.int64), position])
    crop_seed, caption_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))

    def real_example():
      parsed = source.parse(element["raw"])
      caption = parsed["caption"]
      if caption.shape.rank == 1:  # Several captions an image (TFDS): one at random in training.
        pick = (tf.random.stateless_uniform([], caption_seed, 0, tf.size(caption, tf.int32),
                                            dtype=tf.int32) if training else 0)
        caption = tf.gather(caption, pick)  # Raises when there is none: a bad example.
      usable = parsed["ok"]
      if source.has_captions:
        usable &= tf.strings.length(tf.strings.strip(caption)) > 0
      check = tf.debugging.Assert(usable, ["Bad example: empty image or caption"])
      with tf.control_dependencies([check]):
        # Every decoding op reads these bytes, so none runs before the check passes. An image
        # whose header declares more than max_pixels raises in preprocess, never decoded.
        image_bytes = tf.identity(parsed["image"])
      if training:
        image = preprocess.decode_random_resized_crop(
            image_bytes, size, crop_seed, scale=tuple(input_config.crop_scale),
            ratio=tuple(input_config.crop_ratio), method=method, max_pixels=max_pixels)
      else:
        image = preprocess.decode_resize_center_crop(image_bytes, size, method=method,
                                                     max_pixels=max_pixels)
      return finish(image), caption, parsed["label"]

    def epoch_end():
      return tf.zeros([size, size, 3], image_dtype), tf.constant(""), tf.constant(-1, tf.int64)

    image, caption, label = tf.cond(element["end"], epoch_end, real_example)
    image = tf.ensure_shape(image, [size, size, 3])
    shards = element["shards"] if "shards" in element else tf.constant(0, tf.int64)
    return {"image": image, "caption": caption, "label": label, "position": position,
            "end": element["end"], "skipped": tf.constant(0, tf.int64), "shards": shards,
            "bad_shards": tf.constant(0, tf.int64)}

  return _no_autograph(prepare)


def _max_image_pixels(input_config) -> int:
  """config_checks.check_input validated it (0: no limit)."""
  return input_config.get("max_image_pixels", config_lib.DEFAULT_MAX_IMAGE_PIXELS)


# input.image_dtype (config_checks.check_input validated it) -> what the host hands over.
_IMAGE_DTYPES = {name: tf.as_dtype(name) for name in config_lib.IMAGE_DTYPES}


def _drop_bad_shards(dataset: tf.data.Dataset, source: sources.Source) -> tf.data.Dataset:
  """Takes bad shards' marker rows out of a {'raw', 'end'} stream; every element left gets
  `shards`: the number of bad shards met in the stream so far.

  (Before positions are given: a bad shard takes no position and shifts no augmentation. The
  difference of `shards` between two surviving examples is the number of bad shards between
  them, the way the difference of their positions counts the examples skipped.)
  """
  if source.bad_shard is None:
    return dataset

  def count(total, element):
    is_bad = source.bad_shard(element["raw"]) & ~element["end"]
    total += tf.cast(is_bad, tf.int64)
    return total, dict(element, shards=total, is_bad_shard=is_bad)

  return (dataset.scan(tf.constant(0, tf.int64), _no_autograph(count))
          .filter(_no_autograph(lambda element: ~element["is_bad_shard"])))


def _count_skipped(dataset: tf.data.Dataset, *, training: bool, data: str) -> tf.data.Dataset:
  """Gives each surviving example the number of bad examples skipped just before it, and the
  number of bad shards met just before it (`bad_shards`, from the running count `shards`).

  A one-example delay line: the last survivor of an epoch is held until the epoch-end marker
  comes, and takes the epoch's trailing gaps. In eval mode an epoch with no survivor at all
  yields the marker itself (a padding row) to carry its counts; in training it is an error.
  """
  # tf.cond picks a structure without touching the image's pixels (this stage is sequential).
  select = lambda pred, a, b: tf.cond(pred, lambda: a, lambda: b)

  def step(state, example):
    held, has_held, last_position, last_shards = state
    gap = example["position"] - last_position - 1
    shards = example["shards"] - last_shards
    is_end = example["end"]
    checks = []
    if training:
      # The raw op: tf.debugging.Assert wraps it in a cond, a few microseconds more per
      # example in this sequential stage.
      checks.append(tf.raw_ops.Assert(condition=has_held | ~is_end, data=[
          f"No usable example in a whole epoch of {data!r}: all", gap, "were bad (undecodable "
          "images, images over input.max_image_pixels, empty or missing captions, or "
          "truncated files), and there were", shards, "bad shards (files that are empty or no "
          "tar, named in the warnings above). Check the data and --config.input.image_key / "
          "caption_key."]))
    with tf.control_dependencies(checks):
      out = select(has_held, held, example)
      out = dict(out, skipped=out["skipped"] + tf.where(is_end, gap, 0),
                 bad_shards=out["bad_shards"] + tf.where(is_end, shards, 0))
    emit = has_held | (is_end if not training else False)
    new_held = dict(example, skipped=gap, bad_shards=shards)
    return (new_held, ~is_end, example["position"], example["shards"]), {"emit": emit,
                                                                          "example": out}

  initial = (tf.nest.map_structure(_placeholder, dataset.element_spec), tf.constant(False),
             tf.constant(-1, tf.int64), tf.constant(0, tf.int64))
  return (dataset.scan(initial, _no_autograph(step))
          .filter(_no_autograph(lambda out: out["emit"]))
          .map(_no_autograph(lambda out: out["example"])))


def _tokenize_fn(context_length: int):

  def tokenize(captions: np.ndarray) -> np.ndarray:
    return tokenizer_lib.get_tokenizer(context_length)(captions.tolist(), context_length)

  return tokenize


def _tokenize(captions: tf.Tensor, batch_size: int, context_length: int) -> tf.Tensor:
  text = tf.numpy_function(_tokenize_fn(context_length), [captions], tf.int32, stateful=False)
  return tf.ensure_shape(text, [batch_size, context_length])


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  # Parallelism comes from mapping many examples at once; splitting each small per-example op
  # over the intra-op pool as well only adds contention.
  options.threading.max_intra_op_parallelism = 1
  # The only op with "external state" is the stateless tokenizer call (see the module doc).
  options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
  return options


def _parallel_calls(input_config) -> int:
  calls = input_config.num_parallel_calls
  return tf.data.AUTOTUNE if calls in (None, -1) else int(calls)


def build_train_dataset(source: sources.Source, input_config, *, local_batch_size: int,
                        shuffle_seed: int, augment_seed: int, data: str) -> tf.data.Dataset:
  """The endless training stream of this process: {'image', 'text', 'num_skipped'} batches."""
  raw = source.dataset
  if input_config.shuffle_buffer > 1:
    raw = raw.shuffle(input_config.shuffle_buffer, seed=shuffle_seed,
                      reshuffle_each_iteration=True)
  dataset = _drop_bad_shards(_with_epoch_end(raw).repeat(), source).enumerate()
  dataset = dataset.map(_make_prepare(source, input_config, training=True,
                                      augment_seed=augment_seed),
                        num_parallel_calls=_parallel_calls(input_config), deterministic=True)
  dataset = _count_skipped(dataset.ignore_errors(), training=True, data=data)
  dataset = dataset.batch(local_batch_size, drop_remainder=True)
  context_length = input_config.context_length

  def finalize(batch):
    return {"image": batch["image"],
            "text": _tokenize(batch["caption"], local_batch_size, context_length),
            "num_skipped": tf.reduce_sum(batch["skipped"]),
            "num_bad_shards": tf.reduce_sum(batch["bad_shards"])}

  dataset = dataset.map(_no_autograph(finalize)).prefetch(input_config.prefetch)
  return dataset.with_options(_options())


def build_eval_dataset(source: sources.Source, input_config, *, local_batch_size: int,
                       data: str) -> tf.data.Dataset:
  """One pass over this process's eval data, the last batch padded; `mask` marks real rows."""
  dataset = _drop_bad_shards(_with_epoch_end(source.dataset), source).enumerate()
  dataset = dataset.map(_make_prepare(source, input_config, training=False, augment_seed=0),
                        num_parallel_calls=_parallel_calls(input_config), deterministic=True)
  dataset = _count_skipped(dataset.ignore_errors(), training=False, data=data)
  dataset = dataset.batch(local_batch_size, drop_remainder=False)
  context_length = input_config.context_length

  def finalize(batch):
    real = tf.size(batch["end"])
    pad = local_batch_size - real

    def padded(x):
      x = tf.pad(x, [[0, pad]] + [[0, 0]] * (x.shape.rank - 1))
      return tf.ensure_shape(x, [local_batch_size] + x.shape.as_list()[1:])

    mask = padded(~batch["end"])
    out = {"image": padded(batch["image"]), "mask": mask,
           "num_skipped": tf.reduce_sum(batch["skipped"]),
           "num_bad_shards": tf.reduce_sum(batch["bad_shards"])}
    if source.has_captions:
      text = _tokenize(padded(batch["caption"]), local_batch_size, context_length)
      out["text"] = text * tf.cast(mask, tf.int32)[:, None]
    if source.has_labels:
      out["label"] = tf.cast(padded(batch["label"]), tf.int32)
    return out

  dataset = dataset.map(_no_autograph(finalize)).prefetch(input_config.prefetch)
  return dataset.with_options(_options())


class InputIterator:
  """Host-local numpy batches from a tf.data pipeline, with its position saved and restored.

  `skipped_count` is the number of bad examples skipped for the batches yielded so far, and
  `bad_shard_count` the number of bad shards (files that are empty or no tar) met, every
  epoch; the reader names each in a warning when it reads it, and this counts them in another.
  `save(directory)` / `restore(directory)` write and read this process's position (one file
  set per process, so all processes may share the directory, e.g. the checkpoint's).
  """

  def __init__(self, dataset: tf.data.Dataset, *, description: dict, process_index: int,
               process_count: int, num_examples: int | None = None,
               num_batches: int | None = None, pad_forever: bool = False):
    self._dataset = dataset
    self.description = description
    self.process_index = process_index
    self.process_count = process_count
    self.num_examples = num_examples  # This process's examples per epoch, where known.
    self._num_batches = num_batches
    self._pad_forever = pad_forever
    self._iterator = None
    self.reset()
    _OPEN_ITERATORS.add(self)

  def close(self) -> None:
    """Stops the pipeline's background threads now.

    Also done for every open iterator when the program exits: a tf.data thread that is inside
    the tokenizer (Python) when the interpreter shuts down waits for the GIL forever, and the
    process never exits. Closing while Python still runs lets that call finish first.
    """
    self._iterator = None
    self._checkpoint = None

  def reset(self):
    """Back to the start of the stream (for eval data read again at each evaluation)."""
    self.close()
    self._iterator = iter(self._dataset)
    self._batches_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    self._skipped_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator, batches=self._batches_var,
                                           skipped=self._skipped_var)
    self._batches = 0
    self._skipped = 0
    self._bad_shards = 0
    self._exhausted = False

  @property
  def skipped_count(self) -> int:
    return self._skipped

  @property
  def bad_shard_count(self) -> int:
    """Bad shards (empty, no tar, gone) met for the batches yielded so far, every epoch."""
    return self._bad_shards

  @property
  def batches_yielded(self) -> int:
    return self._batches

  @property
  def element_spec(self) -> dict:
    spec = dict(self._dataset.element_spec)
    spec.pop("num_skipped")
    spec.pop("num_bad_shards")
    return spec

  def __iter__(self):
    return self

  def _padding_batch(self) -> dict:
    return {name: np.zeros(spec.shape, spec.dtype.as_numpy_dtype)
            for name, spec in self.element_spec.items()}

  def _require_open(self) -> None:
    if self._iterator is None:
      raise RuntimeError("This input iterator was closed; call reset() to read it again.")

  def __next__(self) -> dict:
    self._require_open()
    if not self._exhausted:
      try:
        batch = next(self._iterator)
      except StopIteration:
        self._exhausted = True
    if self._exhausted:
      if self._pad_forever or (self._num_batches and self._batches < self._num_batches):
        self._batches += 1
        return self._padding_batch()
      raise StopIteration
    if self._num_batches is not None and self._batches >= self._num_batches:
      raise RuntimeError(
          f"Data {self.description.get('data')!r} holds more than num_batches="
          f"{self._num_batches} batches of {self.description.get('local_batch_size')} on "
          f"process {self.process_index}; pass a larger num_batches (or None).")
    # `_numpy()` is what tf.data's own as_numpy_iterator uses: a read-only view of the tensor's
    # buffer, where `.numpy()` would copy every batch once more.
    batch = {name: value._numpy()  # pylint: disable=protected-access
             for name, value in batch.items()}
    self._skipped += int(batch.pop("num_skipped"))
    self._count_bad_shards(int(batch.pop("num_bad_shards")))
    self._batches += 1
    return batch

  def _count_bad_shards(self, number: int) -> None:
    if number:
      self._bad_shards += number
      logging.warning("Data %r: %d more bad shard(s), files that are empty or no tar, whose "
                      "samples are lost (each is named in a warning when it is read); %d so far "
                      "on process %d.", self.description.get("data"), number, self._bad_shards,
                      self.process_index)

  def _prefix(self, directory: str) -> str:
    return os.path.join(directory,
                        f"input-{self.process_index:05d}-of-{self.process_count:05d}")

  def save(self, directory: str) -> str:
    """Writes this process's position under `directory` (any tf.io.gfile path)."""
    self._require_open()
    tf.io.gfile.makedirs(directory)
    prefix = self._prefix(directory)
    self._batches_var.assign(self._batches)
    self._skipped_var.assign(self._skipped)
    self._checkpoint.write(prefix)
    with tf.io.gfile.GFile(prefix + ".json", "w") as f:
      json.dump({"version": _STATE_VERSION, "description": self.description,
                 "batches_yielded": self._batches, "skipped_count": self._skipped,
                 "bad_shard_count": self._bad_shards}, f,
                indent=1)
    return prefix

  def saved_description(self, directory: str) -> dict | None:
    """What describes the position saved under `directory` for this process of this many
    processes, or None when there is none (e.g. it was saved by another number of processes:
    see `saved_process_counts`) or it cannot be continued (saved by an older version of the
    pipeline, which this logs)."""
    prefix = self._prefix(directory)
    if not tf.io.gfile.exists(prefix + ".json"):
      return None
    with tf.io.gfile.GFile(prefix + ".json") as f:
      saved = json.load(f)
    if saved.get("version") != _STATE_VERSION:
      logging.warning("%s", _version_message(directory, saved.get("version")))
      return None
    return saved["description"]

  def restore(self, directory: str) -> None:
    """Continues from the position saved under `directory` by an identical pipeline."""
    self._require_open()
    prefix = self._prefix(directory)
    if not tf.io.gfile.exists(prefix + ".json"):
      raise FileNotFoundError(
          f"No saved input position for process {self.process_index} of "
          f"{self.process_count} in {directory!r} (looked for {prefix}.json). Was it saved "
          "with another number of processes?")
    with tf.io.gfile.GFile(prefix + ".json") as f:
      saved = json.load(f)
    if saved.get("version") != _STATE_VERSION:
      raise ValueError(_version_message(directory, saved.get("version")))
    saved_description = dict(_ADDED_LATER, **saved["description"])
    differences = {key: (saved_description.get(key), value)
                   for key, value in self.description.items()
                   if saved_description.get(key) != value}
    if differences:
      details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in differences.items())
      raise ValueError(f"The input position in {directory!r} was saved by a different "
                       f"pipeline ({details}); restore with the same input config, batch size, "
                       "seed and process count, or start the input afresh.")
    self._checkpoint.read(prefix).assert_consumed()
    self._batches = int(self._batches_var.numpy())
    self._skipped = int(self._skipped_var.numpy())
    self._bad_shards = saved.get("bad_shard_count", 0)
    self._exhausted = False


def _version_message(directory: str, version) -> str:
  return (f"The input position in {directory!r} was saved by version {version} of the input "
          f"pipeline; this is version {_STATE_VERSION}, whose state differs (it counts bad "
          "shards), so that position cannot be continued: the input must start afresh.")


def saved_process_counts(directory: str) -> list[int]:
  """The process counts of the input positions saved under `directory` (sorted)."""
  names = tf.io.gfile.glob(os.path.join(directory, "input-*-of-*.json"))
  return sorted({int(os.path.basename(name)[:-len(".json")].rpartition("-of-")[2])
                 for name in names})


@atexit.register
def _close_open_iterators():
  for iterator in list(_OPEN_ITERATORS):
    iterator.close()


def _process(process_index, process_count) -> tuple[int, int]:
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
  return process_index, process_count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"Global batch size {global_batch_size} is not a positive multiple of the "
                     f"{process_count} processes; choose a batch size divisible by "
                     f"{process_count}.")
  return global_batch_size // process_count


# Description fields added after positions were first saved, with the value older ones meant.
_ADDED_LATER = {"synthetic_kind": "shapes"}


def _description(input_config, **kwargs) -> dict:
  """What must match for a saved position to be valid in a new pipeline."""
  keys = ("image_size", "shuffle_buffer", "crop_scale", "crop_ratio", "resize_method",
          "image_dtype",
          "context_length", "image_key", "caption_key", "label_key", "csv_separator",
          "synthetic_kind", "synthetic_train_size", "synthetic_test_size",
          "synthetic_image_size")
  description = {key: input_config.get(key) for key in keys}
  description = {k: list(v) if isinstance(v, tuple) else v for k, v in description.items()}
  description.update(kwargs)
  return description


def make_train_iterator(input_config, *, global_batch_size: int, seed: int,
                        process_index: int | None = None, process_count: int | None = None,
                        data: str | None = None) -> InputIterator:
  """The endless, shuffled, augmented training stream of this process.

  `data` defaults to `input_config.train_data`; `seed` must be the same on all processes (each
  process derives its own shuffle and augmentation seeds from it). Batches hold
  `global_batch_size / process_count` examples.
  """
  process_index, process_count = _process(process_index, process_count)
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  data = data or input_config.train_data
  spec = source_spec.parse(data, default_split="train", field="input.train_data")
  source = sources.make_source(spec, input_config, training=True, seed=_derived_seed(seed, 0),
                               process_index=process_index, process_count=process_count)
  if not source.has_captions:
    raise ValueError(f"Data {data!r}: training needs captions, but caption_key is 'none'.")
  dataset = build_train_dataset(
      source, input_config, local_batch_size=local_batch_size,
      shuffle_seed=_derived_seed(seed, 1, process_index),
      augment_seed=_derived_seed(seed, 2, process_index), data=data)
  return InputIterator(
      dataset, process_index=process_index, process_count=process_count,
      num_examples=source.num_examples,
      description=_description(input_config, data=data, mode="train", seed=seed,
                               global_batch_size=global_batch_size,
                               local_batch_size=local_batch_size,
                               process_count=process_count))


def make_eval_iterator(input_config, *, global_batch_size: int, data: str | None = None,
                       process_index: int | None = None, process_count: int | None = None,
                       num_batches: int | None = None,
                       pad_forever: bool = False) -> InputIterator:
  """One pass over this process's share of the eval data: every example exactly once.

  Batches carry `mask` (real rows), `image`, `text` (with captions) and `label` (with labels).
  Processes may hold different numbers of examples, and every process must run the same number
  of steps: pass `num_batches` (padding batches follow the data up to it), or `pad_forever=True`
  and stop when no process has a real row left.
  """
  process_index, process_count = _process(process_index, process_count)
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  data = data or input_config.eval_data
  spec = source_spec.parse(data, default_split="test", field="input.eval_data")
  source = sources.make_source(spec, input_config, training=False, seed=0,
                               process_index=process_index, process_count=process_count)
  dataset = build_eval_dataset(source, input_config, local_batch_size=local_batch_size,
                               data=data)
  return InputIterator(
      dataset, process_index=process_index, process_count=process_count,
      num_examples=source.num_examples, num_batches=num_batches, pad_forever=pad_forever,
      description=_description(input_config, data=data, mode="eval",
                               global_batch_size=global_batch_size,
                               local_batch_size=local_batch_size,
                               process_count=process_count))
