"""`tfds:NAME[:SPLIT]` (any prepared TFDS data set) and `synthetic[:SPLIT]` (captioned_shapes or
captioned_scenes, by `input.synthetic_kind`).

Each process reads `tfds.even_splits(SPLIT, process_count)[process_index]`. Only the features in
use are decoded, and the image is left encoded (it is decoded, cropped and counted if bad by the
pipeline, like every other source's). `captions_and_encoded_images` reads a whole split in its
order instead, for the retrieval evaluation.
"""
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# Imported to register the builders for `tfds:` use too.
from maskclip_jax.data import captioned_scenes, captioned_shapes
from maskclip_jax.data.sources import Source

DEFAULT_IMAGE_KEY = "image"
DEFAULT_CAPTION_KEY = "caption"


def _feature_at(features, path: str, *, data: str, field: str):
  """The TFDS feature at 'a/b/c' (through dicts and sequences); errors list what exists."""
  feature = features
  for part in path.split("/"):
    if isinstance(feature, tfds.features.Sequence):
      feature = feature.feature
    if not isinstance(feature, tfds.features.FeaturesDict) or part not in feature.keys():
      available = list(feature.keys()) if isinstance(feature, tfds.features.FeaturesDict) else []
      raise ValueError(f"Data {data!r}: no feature {path!r} (at {part!r}; there: {available}); "
                       f"set --config.input.{field} to one of the data set's features.")
    feature = feature[part]
  return feature


def nested(path: str, leaf):
  """'a/b' -> {'a': {'b': leaf}}: the shape TFDS wants for decoders and partial decoding."""
  out = leaf
  for part in reversed(path.split("/")):
    out = {part: out}
  return out


def _merge(a: dict, b: dict) -> dict:
  out = dict(a)
  for key, value in b.items():
    out[key] = _merge(out[key], value) if isinstance(value, dict) and key in out else value
  return out


def value_at(example, path: str):
  """The value at 'a/b/c' of a (nested) example."""
  for part in path.split("/"):
    example = example[part]
  return example


def synthetic_builder(input_config):
  """The embedded set that `synthetic` names (`input.synthetic_kind`), built first if need be."""
  # config_checks.check_input validated the kind.
  modules = {"shapes": captioned_shapes, "scenes": captioned_scenes}
  return modules[input_config.get("synthetic_kind", "shapes")].prepared_builder(
      image_size=input_config.synthetic_image_size or input_config.image_size,
      num_train=input_config.synthetic_train_size,
      num_test=input_config.synthetic_test_size, data_dir=input_config.tfds_data_dir or None)


def builder_for(spec, input_config):
  """The prepared TFDS builder of a `tfds:` or `synthetic` source spec."""
  if spec.kind == "synthetic":
    return synthetic_builder(input_config)
  data_dir = input_config.tfds_data_dir or None
  try:
    builder = tfds.builder(spec.location, data_dir=data_dir)
  except Exception as e:  # TFDS raises several types for an unknown name or config.
    raise ValueError(f"Data {spec.text!r}: TFDS has no data set {spec.location!r} ({e}).") from e
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"Data {spec.text!r}: TFDS data set {spec.location!r} is not prepared in "
        f"{builder.data_dir!r}. Build it first (`tfds build {spec.location} --data_dir=DIR`) "
        "and set --config.input.tfds_data_dir=DIR; nothing is downloaded at training time.")
  return builder


def captions_and_encoded_images(spec, input_config, *, image_key: str,
                                caption_key: str) -> tuple[list[list[str]], tf.data.Dataset]:
  """Every example of a `tfds:` or `synthetic` split, in the split's order, unshuffled.

  For evaluations that match images to their captions by position (retrieval): read all of the
  split on every process, unlike `make`, which gives each process its share.

  Args:
    spec: the parsed source spec (`source_spec.parse`).
    input_config: `config.input` (`tfds_data_dir`; for `synthetic`, which set and its sizes).
    image_key: the image feature, 'a/b' for a nested one.
    caption_key: the caption feature: a string, or a sequence of strings ('captions/text').

  Returns:
    (each example's captions, decoded to str; a dataset of each example's encoded image bytes,
    a scalar tf.string), both in the split's order.
  """
  builder = builder_for(spec, input_config)
  captions_only = builder.as_dataset(
      split=spec.split, shuffle_files=False,
      decoders=tfds.decode.PartialDecoding(nested(caption_key, True)))
  captions = []
  for example in captions_only.as_numpy_iterator():
    value = value_at(example, caption_key)
    values = [value] if np.ndim(value) == 0 else list(value)
    captions.append([v.decode("utf-8") for v in values])
  images = builder.as_dataset(
      split=spec.split, shuffle_files=False,
      decoders=tfds.decode.PartialDecoding(
          nested(image_key, True), decoders=nested(image_key, tfds.decode.SkipDecoding())))
  return captions, images.map(lambda example: value_at(example, image_key))


def make(spec, input_config, *, training, seed, process_index, process_count) -> Source:
  builder = builder_for(spec, input_config)
  if spec.kind == "synthetic":
    # label_key picks another of its labels (captioned_scenes: 'colour', 'shape', ...).
    image_key, caption_key = "image", "caption"
    label_key = input_config.label_key or "label"
  else:
    image_key = input_config.image_key or DEFAULT_IMAGE_KEY
    caption_key = input_config.caption_key or DEFAULT_CAPTION_KEY
    label_key = input_config.label_key
  has_captions = caption_key != "none"

  features = builder.info.features
  image_feature = _feature_at(features, image_key, data=spec.text, field="image_key")
  if not isinstance(image_feature, tfds.features.Image):
    raise ValueError(f"Data {spec.text!r}: feature {image_key!r} is a "
                     f"{type(image_feature).__name__}, not an image; set "
                     "--config.input.image_key to an Image feature.")
  wanted = nested(image_key, True)
  for key, field in ((caption_key if has_captions else "", "caption_key"),
                     (label_key, "label_key")):
    if key:
      _feature_at(features, key, data=spec.text, field=field)
      wanted = _merge(wanted, nested(key, True))

  base_split = spec.split.split("[")[0]
  if base_split not in builder.info.splits:
    raise ValueError(f"Data {spec.text!r}: no split {base_split!r}; the data set has "
                     f"{list(builder.info.splits)}.")
  split = spec.split
  if process_count > 1:
    split = tfds.even_splits(spec.split, n=process_count, drop_remainder=False)[process_index]
  try:
    num_examples = builder.info.splits[split].num_examples
  except Exception:  # Not every split expression can be sized ahead.
    num_examples = None

  read_config = tfds.ReadConfig(
      shuffle_seed=seed, shuffle_reshuffle_each_iteration=True,
      # Caching would put the whole data set into every saved pipeline position.
      try_autocache=False, skip_prefetch=True, add_tfds_id=False)
  dataset = builder.as_dataset(
      split=split, shuffle_files=training, read_config=read_config,
      decoders=tfds.decode.PartialDecoding(
          wanted, decoders=nested(image_key, tfds.decode.SkipDecoding())))

  def parse(example):
    image = value_at(example, image_key)
    caption = value_at(example, caption_key) if has_captions else tf.constant("")
    label = (tf.cast(value_at(example, label_key), tf.int64) if label_key else
             tf.constant(-1, tf.int64))
    return {"image": image, "caption": caption, "label": label,
            "ok": tf.strings.length(image) > 0}

  return Source(dataset=dataset, parse=parse, has_captions=has_captions,
                has_labels=bool(label_key), num_examples=num_examples)
