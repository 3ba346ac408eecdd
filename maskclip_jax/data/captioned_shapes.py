"""`captioned_shapes`: the embedded synthetic data set (a TFDS builder; no download, no network).

Each image holds one coloured shape (6 shapes x 6 colours = 36 classes) of one of three sizes at
one of nine places, on a grey, faintly textured background (noise, stripes, checks or a
gradient), with a caption and the class label (shape x colour) for zero-shot classification.

Captions vary in detail, as people's do. A training caption names the colour and the shape, and
in two of three also the size and the place ("a small red triangle at the top left"), in the
rest the place or neither ("a red triangle at the top left", "a photo of a red triangle"). A
test caption always says all four, so that in retrieval it names its image as closely as the
generator can. Captions without the size and the place are what zero-shot prompts look like;
with none of them (v1), a contrastive model on this data learned colour and size and hardly
any shape.

Examples are a pure function of (split, index), so every build of a config is identical. 11k
examples at 64 px build in about ten seconds on one core.

A zero-shot evaluator gets its class names and prompt templates from `CLASS_NAMES` and
`ZERO_SHOT_TEMPLATES`.
"""
import dataclasses
import functools
import io

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
# Well separated hues; backgrounds are grey, so colour never comes from the texture.
COLOURS = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (35, 75, 220),
    "yellow": (235, 210, 35),
    "purple": (140, 45, 180),
    "orange": (245, 135, 25),
}
# Shape radius as a fraction of the image side. Large enough that a 16-px patch sees the outline
# of even a small shape; close enough that a large one still fits one place of the grid.
SIZES = {"small": 0.15, "medium": 0.20, "large": 0.25}
# 3 x 3 grid, row-major: (name in a caption, row, column).
POSITIONS = (
    ("at the top left", 0, 0), ("at the top", 0, 1), ("at the top right", 0, 2),
    ("on the left", 1, 0), ("in the center", 1, 1), ("on the right", 1, 2),
    ("at the bottom left", 2, 0), ("at the bottom", 2, 1), ("at the bottom right", 2, 2),
)
# Captions that say everything: every test caption, two of three training ones.
CAPTION_TEMPLATES = (
    "a {size} {colour} {shape} {where}",
    "a photo of a {size} {colour} {shape} {where}",
    "{where}, a {size} {colour} {shape}",
    "there is a {colour} {shape} {where}, it is {size}",
)
# Training captions, drawn uniformly: the full ones (2/3), one without the size, one with only
# colour and shape, as a zero-shot prompt is. Of the mixes tried (1/2, 4/7, 2/3 and 4/5 full),
# 2/3 gave the best retrieval and zero-shot together (README).
TRAIN_CAPTION_TEMPLATES = CAPTION_TEMPLATES + (
    "a {colour} {shape} {where}",
    "a photo of a {colour} {shape}",
)
# Label = shape index * len(COLOURS) + colour index.
CLASS_NAMES = tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS)
ZERO_SHOT_TEMPLATES = (
    "a photo of a {}.",
    "a {}.",
    "a drawing of a {}.",
    "a {} on a textured background.",
)
BACKGROUNDS = ("noise", "stripes", "checks", "gradient")
_SPLIT_SEEDS = {"train": 0, "test": 1}


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
  """Pixels inside `shape`, given coordinates relative to its centre in units of its radius."""
  if shape == "circle":
    return dx**2 + dy**2 <= 1.0
  if shape == "square":
    return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8
  if shape == "triangle":  # apex up at (0, -1), base at dy = 0.8
    return (dy <= 0.8) & (np.abs(dx) <= (dy + 1.0) / 1.8)
  if shape == "diamond":
    return np.abs(dx) + np.abs(dy) <= 1.0
  if shape == "cross":
    return (((np.abs(dx) <= 0.3) & (np.abs(dy) <= 1.0)) |
            ((np.abs(dy) <= 0.3) & (np.abs(dx) <= 1.0)))
  if shape == "star":  # five points, one facing up
    angle = np.arctan2(dy, dx) + np.pi / 2
    return np.sqrt(dx**2 + dy**2) <= 0.4 + 0.6 * ((1 + np.cos(5 * angle)) / 2)**2
  raise ValueError(f"Unknown shape {shape!r}; known: {SHAPES}.")


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """(row, column) coordinates of pixel centres in units of the image side, float32."""
  yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
  return yy, xx


# The background's texture contrast (grey levels, drawn uniformly) and tint (+- grey levels):
# faint here, so that the shape's outline stands out; captioned_scenes keeps stronger ones.
BACKGROUND_CONTRAST = (4.5, 12.0)
BACKGROUND_TINT = 2.4


def _background(rng: np.random.Generator, size: int, contrast_range=BACKGROUND_CONTRAST,
                max_tint: float = BACKGROUND_TINT) -> np.ndarray:
  """(size, size, 3) float grey texture: level 70-180, a contrast from `contrast_range`, a tint
  up to `max_tint` a channel."""
  yy, xx = _pixel_grid(size)
  kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
  if kind == "noise":
    texture = rng.uniform(-1, 1, (size, size)).astype(np.float32)
  elif kind == "stripes":
    angle = rng.uniform(0, np.pi)
    texture = np.sign(np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * rng.uniform(12, 30)))
  elif kind == "checks":
    cells = rng.integers(3, 9)
    texture = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2) * 2.0 - 1.0
  else:
    angle = rng.uniform(0, 2 * np.pi)
    texture = (xx - 0.5) * np.cos(angle) * 2 + (yy - 0.5) * np.sin(angle) * 2
  level = rng.uniform(70, 180)
  contrast = rng.uniform(*contrast_range)
  tint = rng.uniform(-max_tint, max_tint, 3)
  return (level + contrast * texture)[..., None] + tint.astype(np.float32)


def make_example(split: str, index: int, image_size: int) -> dict:
  """The example `index` of `split`: {'image': uint8 (S, S, 3), 'caption': str, 'label': int}."""
  rng = np.random.default_rng([_SPLIT_SEEDS[split], index])
  shape_i = rng.integers(len(SHAPES))
  colour_i = rng.integers(len(COLOURS))
  size_name = list(SIZES)[rng.integers(len(SIZES))]
  where, row, col = POSITIONS[rng.integers(len(POSITIONS))]
  colour_name = list(COLOURS)[colour_i]

  image = _background(rng, image_size)
  radius = SIZES[size_name] * image_size * rng.uniform(0.9, 1.1)
  cell = image_size / 3
  # Centre in the named cell with some jitter, but the whole shape inside the image.
  cy = np.clip((row + 0.5) * cell + rng.uniform(-0.2, 0.2) * cell, radius, image_size - radius)
  cx = np.clip((col + 0.5) * cell + rng.uniform(-0.2, 0.2) * cell, radius, image_size - radius)
  yy, xx = _pixel_grid(image_size)
  mask = _shape_mask(SHAPES[shape_i], (xx * image_size - cx) / radius,
                     (yy * image_size - cy) / radius)
  colour = np.array(COLOURS[colour_name]) + rng.uniform(-15, 15, 3)
  image[mask] = colour
  templates = CAPTION_TEMPLATES if split == "test" else TRAIN_CAPTION_TEMPLATES
  caption = templates[rng.integers(len(templates))].format(
      size=size_name, colour=colour_name, shape=SHAPES[shape_i], where=where)
  return {
      "image": np.clip(np.round(image), 0, 255).astype(np.uint8),
      "caption": caption,
      "label": int(shape_i * len(COLOURS) + colour_i),
  }


@dataclasses.dataclass(eq=False)
class CaptionedShapesConfig(tfds.core.BuilderConfig):
  image_size: int = 64
  num_train: int = 10_000
  num_test: int = 1_000


def make_config(image_size: int, num_train: int, num_test: int) -> CaptionedShapesConfig:
  """A config whose name (and so its folder in the data dir) says its image size and sizes."""
  for field, value in (("synthetic_image_size", image_size), ("synthetic_train_size", num_train),
                       ("synthetic_test_size", num_test)):
    if value < 1:
      raise ValueError(f"--config.input.{field}={value}: must be at least 1.")
  return CaptionedShapesConfig(name=f"{image_size}px_{num_train}_{num_test}",
                               image_size=image_size, num_train=num_train, num_test=num_test,
                               description=f"{image_size}x{image_size} px, {num_train} train "
                               f"and {num_test} test examples")


class CaptionedShapes(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes on textured backgrounds, with captions and shape x colour labels."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
      "1.0.0": "First release.",
      "2.0.0": "Larger shapes (radius 0.15-0.25 of the side, was 0.11-0.24), fainter "
               "backgrounds, training captions that vary in detail, test captions that say "
               "everything.",
  }
  BUILDER_CONFIGS = [make_config(64, 10_000, 1_000)]
  DESCRIPTION = __doc__

  # TFDS finds a builder's source file through `importlib_resources` on some installs, a
  # package we do not otherwise need; the answer is simply this file.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def _features(self) -> dict:
    """The stored features: image, caption and label (subclasses add theirs)."""
    size = self.builder_config.image_size
    return {
        "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
        "caption": tfds.features.Text(),
        "label": tfds.features.ClassLabel(names=CLASS_NAMES),
    }

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict(self._features()),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {
        "train": self._generate_examples("train", self.builder_config.num_train),
        "test": self._generate_examples("test", self.builder_config.num_test),
    }

  def _generate_examples(self, split, num_examples):
    for index in range(num_examples):
      example = make_example(split, index, self.builder_config.image_size)
      # PNG at the fastest compression: TFDS's own encoder costs 4x more, at build time.
      png = io.BytesIO()
      Image.fromarray(example["image"]).save(png, format="png", compress_level=1)
      yield index, dict(example, image=png.getvalue())


def prepared_builder(*, image_size: int, num_train: int, num_test: int,
                     data_dir: str | None = None, builder_class=None) -> CaptionedShapes:
  """The builder for this config (of `builder_class`, default CaptionedShapes; captioned_scenes
  passes its own), built into `data_dir` first if it is not there yet."""
  builder_class = builder_class or CaptionedShapes
  config = make_config(image_size, num_train, num_test)
  # TFDS refuses a config object named like a predefined one; name that one instead.
  predefined = {c.name for c in builder_class.BUILDER_CONFIGS}
  make = lambda: builder_class(config=config.name if config.name in predefined else config,
                               data_dir=data_dir or None)
  builder = make()
  if not builder.is_prepared():
    try:
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          compute_stats=tfds.download.ComputeStatsMode.SKIP))
    except FileExistsError:
      # Processes started together (launch/local.sh) each build it in a directory of their
      # own and rename that into place; the renames after the first fail. Theirs is as good.
      builder = make()
      if not builder.is_prepared():
        raise
  return builder
