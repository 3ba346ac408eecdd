"""`captioned_scenes`: the harder embedded synthetic data set (a TFDS builder; no download).

Each image holds 2-4 objects on captioned_shapes' grey textured backgrounds. An object has a
colour, a shape, a size, a place (a cell of the 3 x 3 grid) and a texture (its fill: solid,
striped, dotted or outlined). Objects of one image differ in colour, in shape and in cell, so
any one of these names one object. The first object is the *subject*: drawn last, so never
occluded, and every label describes it: `label` (colour x shape, captioned_shapes' 36
`CLASS_NAMES` in the same order), `colour`, `shape`, `size`, `position` and `texture`. Captions
name the subject and some of the others, with relations read off the grid ("a large striped red
square at the top left, to the left of a small blue circle"; "a blue circle below a red star
and a green cross").

`make_example(split, index, image_size)` is a pure function; besides the stored features it
returns the objects' pixel masks (not stored), for benchmarks that regenerate examples.
Zero-shot class names and prompts: `CLASS_NAMES` / `ZERO_SHOT_TEMPLATES` for the 36 subject
classes and `ATTRIBUTE_TASKS[task] = (names, templates)` for each attribute.
"""
import dataclasses
import io

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from maskclip_jax.data import captioned_shapes
from maskclip_jax.data.captioned_shapes import COLOURS, POSITIONS, SHAPES, SIZES

# An object's fill; the colour keeps most of the object's pixels in every texture.
TEXTURES = ("solid", "striped", "dotted", "outlined")
# Short names of the grid cells for the `position` feature: "top left", ..., "center".
POSITION_NAMES = tuple(where.split("the ", 1)[1] for where, _, _ in POSITIONS)
MIN_OBJECTS, MAX_OBJECTS = 2, 4
# Same classes in the same order as captioned_shapes: label = shape index * 6 + colour index.
CLASS_NAMES = captioned_shapes.CLASS_NAMES
ZERO_SHOT_TEMPLATES = (
    "a photo of a {}.",
    "a {} among other shapes.",
    "a {} and other shapes.",
    "a drawing of a {}.",
)
# Attribute zero-shot tasks: feature name -> (class names in label order, prompt templates).
# Colour and texture names can start with a vowel ("orange", "outlined"): their templates put
# no article before the name.
ATTRIBUTE_TASKS = {
    "colour": (tuple(COLOURS), (
        "a photo of an object coloured {}.",
        "an object that is {}.",
        "a shape painted {}.",
        "something {} among other shapes.",
    )),
    "shape": (SHAPES, (
        "a photo of a {}.",
        "a {}.",
        "a drawing of a {}.",
        "a {} among other shapes.",
    )),
    "size": (tuple(SIZES), (
        "a photo of a {} object.",
        "a {} shape.",
        "a {} object among other shapes.",
        "something {}.",
    )),
    "position": (tuple(where for where, _, _ in POSITIONS), (
        "a photo of an object {}.",
        "a shape {}.",
        "something {}.",
        "there is an object {}.",
    )),
    "texture": (TEXTURES, (
        "a photo of a shape that is {}.",
        "an object that is {}.",
        "something {} among other shapes.",
        "a {} pattern.",
    )),
}
_RELATIONS = ("to the left of", "to the right of", "above", "below")
_NUMBERS = {2: "two", 3: "three", 4: "four"}
# Object radius as a fraction of the image side: 2-4 objects share an image, so these stay
# captioned_shapes v1's (its own grew in v2).
RADII = {"small": 0.11, "medium": 0.17, "large": 0.24}
# The background of captioned_shapes v1: scenes keep its stronger texture.
_BACKGROUND = dict(contrast_range=(15.0, 40.0), max_tint=8.0)
_SEED_SALT = 7  # examples differ from captioned_shapes' with the same (split, index)
# A layout whose other objects are covered by more than this fraction is drawn again.
_MAX_HIDDEN = 0.4
_LAYOUT_TRIES = 20


@dataclasses.dataclass
class _Object:
  colour: int
  shape: int
  size: int
  cell: int
  texture: int
  radius: float = 0.0
  cy: float = 0.0
  cx: float = 0.0

  @property
  def row(self) -> int:
    return POSITIONS[self.cell][1]

  @property
  def col(self) -> int:
    return POSITIONS[self.cell][2]

  def words(self, *fields: str) -> str:
    """'large striped red square' with `fields` among size, texture, colour, shape."""
    values = {"size": list(SIZES)[self.size], "texture": TEXTURES[self.texture],
              "colour": list(COLOURS)[self.colour], "shape": SHAPES[self.shape]}
    return " ".join(values[f] for f in ("size", "texture", "colour", "shape") if f in fields)


def _a(phrase: str) -> str:
  return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _listed(phrases: list[str]) -> str:
  return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _relations(a: _Object, b: _Object) -> list[str]:
  """Every relation that holds of `a` with respect to `b`, by their grid cells."""
  out = []
  if a.col != b.col:
    out.append(_RELATIONS[0] if a.col < b.col else _RELATIONS[1])
  if a.row != b.row:
    out.append(_RELATIONS[2] if a.row < b.row else _RELATIONS[3])
  return out


def _caption(rng: np.random.Generator, objects: list[_Object]) -> str:
  """One of six templates; the subject (objects[0]) is always named, mostly in full."""
  subject, others = objects[0], list(objects[1:])
  rng.shuffle(others)
  full = _a(subject.words("size", "texture", "colour", "shape"))
  where = POSITIONS[subject.cell][0]
  # Others by colour and shape, which name them, sometimes with one more attribute.
  extra = [("colour", "shape"), ("size", "colour", "shape"), ("texture", "colour", "shape")]
  named = [_a(o.words(*extra[rng.integers(len(extra))])) for o in others]

  def relation(a, b):  # Of the relations that hold (one or two), one at random.
    holding = _relations(a, b)
    return holding[rng.integers(len(holding))]

  kind = rng.integers(6)
  if kind == 0:
    return f"{full} {where}, {relation(subject, others[0])} {named[0]}"
  if kind == 1:
    return f"{full} " + " and ".join(f"{relation(subject, o)} {n}"
                                     for o, n in zip(others, named))
  if kind == 2:
    return f"{named[0]} {relation(others[0], subject)} {full}"
  if kind == 3:
    return f"{_NUMBERS[len(objects)]} shapes: {full} {where}, " + _listed(named)
  if kind == 4:
    return f"a photo of {full} {where}, with " + _listed(named)
  # The relation that holds of the subject towards most others, and those others.
  groups = {r: [n for o, n in zip(others, named) if r in _relations(subject, o)]
            for r in _RELATIONS}
  best = max(_RELATIONS, key=lambda r: len(groups[r]))
  return f"{_a(subject.words('colour', 'shape'))} {best} {_listed(groups[best])}"


def _erode(mask: np.ndarray, pixels: int) -> np.ndarray:
  """`mask` shrunk by `pixels` (4-neighbour erosion; objects never touch the image border)."""
  for _ in range(pixels):
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    mask = inner
  return mask


def _layout(rng: np.random.Generator, image_size: int) -> tuple[list[_Object], list[np.ndarray]]:
  """Objects (subject first) and their silhouettes: distinct colours, shapes and cells."""
  n = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
  colours = rng.choice(len(COLOURS), n, replace=False)
  shapes = rng.choice(len(SHAPES), n, replace=False)
  cells = rng.choice(len(POSITIONS), n, replace=False)
  sizes = rng.integers(len(SIZES), size=n)
  textures = rng.integers(len(TEXTURES), size=n)
  yy, xx = captioned_shapes._pixel_grid(image_size)  # pylint: disable=protected-access
  cell = image_size / 3
  objects, silhouettes = [], []
  for i in range(n):
    o = _Object(int(colours[i]), int(shapes[i]), int(sizes[i]), int(cells[i]), int(textures[i]))
    o.radius = list(RADII.values())[o.size] * image_size * rng.uniform(0.9, 1.1)
    # Less jitter than captioned_shapes: neighbours must stay apart to stay recognisable.
    o.cy = np.clip((o.row + 0.5 + rng.uniform(-0.1, 0.1)) * cell, o.radius,
                   image_size - o.radius)
    o.cx = np.clip((o.col + 0.5 + rng.uniform(-0.1, 0.1)) * cell, o.radius,
                   image_size - o.radius)
    objects.append(o)
    silhouettes.append(captioned_shapes._shape_mask(  # pylint: disable=protected-access
        SHAPES[o.shape], (xx * image_size - o.cx) / o.radius, (yy * image_size - o.cy) / o.radius))
  return objects, silhouettes


def _fill(o: _Object, silhouette: np.ndarray, background: np.ndarray, colour: np.ndarray,
          image_size: int) -> np.ndarray:
  """(S, S, 3) pixels of the object's texture (valid inside its silhouette)."""
  yy, xx = captioned_shapes._pixel_grid(image_size)  # pylint: disable=protected-access
  period = max(3.0, image_size / 12)  # pixels; the same for every object, so one pattern
  tint = 0.5 * colour + 0.5 * 255.0  # the pattern's second tone: the colour, paler
  texture = TEXTURES[o.texture]
  if texture == "solid":
    coloured = silhouette
  elif texture == "striped":  # diagonal stripes, half of them the colour
    coloured = ((xx + yy) * image_size / period) % 1.0 < 0.5
  elif texture == "dotted":  # pale dots on the colour
    fy, fx = (yy * image_size / period) % 1.0 - 0.5, (xx * image_size / period) % 1.0 - 0.5
    coloured = fy**2 + fx**2 > 0.3**2
  else:  # outlined: a band of the colour around the background (the object stays opaque)
    coloured = silhouette & ~_erode(silhouette, max(1, round(0.22 * o.radius)))
    return np.where(coloured[..., None], colour, background)
  return np.where(coloured[..., None], colour, tint)


def make_example(split: str, index: int, image_size: int) -> dict:
  """The example `index` of `split`, with the subject's labels and every object's mask.

  {'image': uint8 (S, S, 3), 'caption': str, 'label', 'colour', 'shape', 'size', 'position',
  'texture': int, 'object_labels': [int] (every object's colour x shape class, subject first),
  'subject_mask': bool (S, S), 'object_masks': [bool (S, S)] (subject first; the visible part
  of each object's silhouette, an outlined object's inside included)}.
  Only the subject's labels are stored in TFDS; the rest is for benchmarks that regenerate.
  """
  rng = np.random.default_rng(
      [_SEED_SALT, captioned_shapes._SPLIT_SEEDS[split], index])  # pylint: disable=protected-access
  for _ in range(_LAYOUT_TRIES):
    objects, silhouettes = _layout(rng, image_size)
    # Larger others first, smaller on top of them, the subject last.
    order = sorted(range(1, len(objects)), key=lambda i: -objects[i].radius) + [0]
    visible = [None] * len(objects)
    covered = np.zeros((image_size, image_size), bool)
    for i in reversed(order):
      visible[i] = silhouettes[i] & ~covered
      covered |= silhouettes[i]
    if all(v.sum() >= (1 - _MAX_HIDDEN) * s.sum() for v, s in zip(visible, silhouettes)):
      break
  # After _LAYOUT_TRIES (rare) the last layout stands: the subject is unoccluded in any.

  background = captioned_shapes._background(  # pylint: disable=protected-access
      rng, image_size, **_BACKGROUND)
  image = background.copy()
  for i in order:
    colour = np.array(COLOURS[list(COLOURS)[objects[i].colour]]) + rng.uniform(-15, 15, 3)
    fill = _fill(objects[i], silhouettes[i], background, colour, image_size)
    image[silhouettes[i]] = fill[silhouettes[i]]
  subject = objects[0]
  return {
      "image": np.clip(np.round(image), 0, 255).astype(np.uint8),
      "caption": _caption(rng, objects),
      "label": subject.shape * len(COLOURS) + subject.colour,
      "colour": subject.colour,
      "shape": subject.shape,
      "size": subject.size,
      "position": subject.cell,
      "texture": subject.texture,
      "object_labels": [o.shape * len(COLOURS) + o.colour for o in objects],
      "subject_mask": visible[0],
      "object_masks": visible,
  }


class CaptionedScenes(captioned_shapes.CaptionedShapes):
  """2-4 coloured, textured shapes a scene, captions with relations, the subject's labels.

  A subclass for captioned_shapes' source path and splits; its own name (`captioned_scenes`)
  keeps its folder in the data dir apart. Configs: `captioned_shapes.make_config`.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [captioned_shapes.make_config(64, 10_000, 1_000)]

  DESCRIPTION = __doc__

  def _features(self) -> dict:
    return dict(
        super()._features(),
        colour=tfds.features.ClassLabel(names=list(COLOURS)),
        shape=tfds.features.ClassLabel(names=SHAPES),
        size=tfds.features.ClassLabel(names=list(SIZES)),
        position=tfds.features.ClassLabel(names=POSITION_NAMES),
        texture=tfds.features.ClassLabel(names=TEXTURES),
    )

  def _generate_examples(self, split, num_examples):
    for index in range(num_examples):
      example = make_example(split, index, self.builder_config.image_size)
      # Regenerated by who needs them.
      del example["subject_mask"], example["object_masks"], example["object_labels"]
      png = io.BytesIO()  # Fastest compression, as captioned_shapes.
      Image.fromarray(example["image"]).save(png, format="png", compress_level=1)
      yield index, dict(example, image=png.getvalue())


def prepared_builder(*, image_size: int, num_train: int, num_test: int,
                     data_dir: str | None = None) -> CaptionedScenes:
  """The builder for this config, built into `data_dir` first if it is not there yet."""
  return captioned_shapes.prepared_builder(image_size=image_size, num_train=num_train,
                                           num_test=num_test, data_dir=data_dir,
                                           builder_class=CaptionedScenes)
