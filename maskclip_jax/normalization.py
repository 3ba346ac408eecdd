"""CLIP's pixel normalisation, without tensorflow: usable on numpy and jax arrays alike.

It sits beside the step, not in `data/`: the input pipeline, the train step (uint8 batches),
evaluation, heat maps and the exporters (the preprocessing they write) all use it, and neither
the step nor export imports tensorflow. CLIP_MEAN / CLIP_STD are defined here only.

The pipeline normalises on the host by default (`config.input.image_dtype = 'float32'`). With
`image_dtype = 'uint8'` it hands over 0..255 pixels (4x less host memory and transfer, and about
a third less host CPU per image) and the train step calls `normalize` on the device instead.
"""
import numpy as np

# OpenAI CLIP's constants (open_clip's OPENAI_DATASET_MEAN / OPENAI_DATASET_STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# (x / 255 - mean) / std == x * SCALE + OFFSET, one multiply-add.
SCALE = tuple(1 / (255 * s) for s in CLIP_STD)
OFFSET = tuple(-m / s for m, s in zip(CLIP_MEAN, CLIP_STD))


def normalize(images):
  """0..255 RGB (..., 3), any numeric dtype, numpy or jax -> float32 CLIP-normalised."""
  return images.astype(np.float32) * np.asarray(SCALE, np.float32) + np.asarray(OFFSET,
                                                                                np.float32)
