"""Do the heat maps light up the named shape? Inside-vs-outside similarity on synthetic images.

  python bench/heatmap_localisation.py --workdir /tmp/tiny --num 200 [--features tokens values]

For each of the first N test images of the synthetic data set (`captioned_shapes`), the heat map
of the prompt naming its class ("a photo of a {colour} {shape}.", the first zero-shot template),
exactly as `maskclip-heatmap --features F` computes it (patch cosine, bilinear to the crop), for
each F given (default: the command's default). Prints, for the online and the teacher image tower:
  inside / outside    mean cosine over the shape's pixels / over the rest, averaged over images;
  inside > outside    the fraction of images where the shape is brighter than the background;
  brightness          the same means on the panel's 0..1 colour scale (one prompt: min..max);
  vs other prompts    inside - outside for the true prompt against the mean over the other 35
                      classes' prompts: whether the map follows the prompt or just finds the
                      shape (a colourful object on grey) whatever it is asked.
The shape's pixels are found from the example's class: the shape is painted in one flat colour
within 15 levels of its named colour, and no grey background pixel comes that close to any of
the six saturated colours.
"""
import argparse

import numpy as np

from maskclip_jax import checkpoint, heatmap
from maskclip_jax.data import captioned_shapes
from maskclip_jax.models.image_towers import has_ema_image_tower
from maskclip_jax.models.maskclip import build_model

TEMPLATE = captioned_shapes.ZERO_SHOT_TEMPLATES[0]
# make_example jitters each channel of the named colour by up to 15 levels, then rounds.
_COLOUR_TOLERANCE = 16


def shape_mask(example: dict) -> np.ndarray:
  """(S, S) bool: the pixels of the example's shape."""
  colour = list(captioned_shapes.COLOURS)[example["label"] % len(captioned_shapes.COLOURS)]
  nominal = np.array(captioned_shapes.COLOURS[colour])
  image = example["image"].astype(np.int32)
  mask = (np.abs(image - nominal) <= _COLOUR_TOLERANCE).all(axis=-1)
  # The shape is one flat colour: anything else that matched would be background, and wrong.
  if not mask.any() or len(np.unique(image[mask], axis=0)) != 1:
    raise ValueError(f"could not find the {colour} shape in the example: {example['caption']!r}")
  return mask


def measure(model, params, visual, images, masks, labels, batch, features):
  """Per-image (inside, outside) cosine and 0..1 brightness of the true prompt, and the
  inside - outside contrast averaged over the other prompts."""
  size = model.vision.image_size
  crops = np.stack([heatmap.preprocess(image, size) for image in images])
  texts = heatmap.text_features(
      model, params, [TEMPLATE.format(name) for name in captioned_shapes.CLASS_NAMES])
  rows = []
  for start in range(0, len(crops), batch):
    patches = heatmap.patch_features(model, visual, crops[start:start + batch], features)
    maps = heatmap.upsample(np.einsum("bhwd,pd->bphw", patches, texts), size)
    for b, pixel_maps in enumerate(maps):
      i = start + b
      inside = pixel_maps[:, masks[i]].mean(axis=1)
      outside = pixel_maps[:, ~masks[i]].mean(axis=1)
      true = pixel_maps[labels[i]]
      unit = (true - true.min()) / max(true.max() - true.min(), 1e-12)
      others = np.delete(inside - outside, labels[i])
      rows.append((inside[labels[i]], outside[labels[i]], unit[masks[i]].mean(),
                   unit[~masks[i]].mean(), others.mean()))
  return np.array(rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--step", type=int, default=None)
  parser.add_argument("--num", type=int, default=200, help="Test images to measure.")
  parser.add_argument("--batch", type=int, default=50)
  parser.add_argument("--features", nargs="+", default=[heatmap.DEFAULT_FEATURES],
                      choices=heatmap.FEATURES, help="The patch features to measure, each.")
  args = parser.parse_args()

  config, params, teacher, step = checkpoint.load_for_export(args.workdir, args.step)
  model = build_model(config.model, config.maskclip)
  size = model.vision.image_size
  examples = [captioned_shapes.make_example("test", i, size) for i in range(args.num)]
  images = [e["image"] for e in examples]
  masks = [shape_mask(e) for e in examples]
  labels = [e["label"] for e in examples]
  area = np.mean([m.mean() for m in masks])
  print(f"{args.workdir} step {step}: {args.num} synthetic test images at {size} px, "
        f"shape covers {100 * area:.1f}% of the pixels on average; prompt '{TEMPLATE}'.")
  towers = ["online"] + (["teacher"] if has_ema_image_tower(teacher) else [])
  for features in args.features:
    for tower in towers:
      visual = heatmap.select_visual(params, teacher, tower)
      r = measure(model, params, visual, images, masks, labels, args.batch, features)
      inside, outside, unit_in, unit_out, others = r.T
      contrast = inside - outside
      print(f"{features:>18} {tower:>7}: cosine inside {inside.mean():+.4f}  outside "
            f"{outside.mean():+.4f}  (diff {contrast.mean():+.4f} +- "
            f"{contrast.std() / np.sqrt(len(r)):.4f} s.e.); inside > outside in "
            f"{100 * (contrast > 0).mean():.1f}% of images")
      print(f"{'':>27}  brightness 0..1 inside {unit_in.mean():.3f}  outside "
            f"{unit_out.mean():.3f}; diff for the other 35 prompts {others.mean():+.4f}, true "
            f"prompt's diff larger in {100 * (contrast > others).mean():.1f}% of images")

if __name__ == "__main__":
  main()
