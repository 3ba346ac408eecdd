"""Zero-shot classification with an exported model in PyTorch, the way open_clip users run it.

A test helper (test_export_zeroshot.py), not part of the package: a check that an export
behaves like the JAX model end to end. open_clip builds the model, its preprocessing (from the
exported `preprocess_cfg`) and its tokenizer from the export directory alone, so this measures
what a PyTorch user would get.

    acc = open_clip_zeroshot(DIR, pil_images, labels, class_names, templates)
"""
from typing import Sequence

import numpy as np

from maskclip_jax.ranking import topk_accuracy


def open_clip_zeroshot(model_dir: str, images: Sequence, labels: Sequence[int],
                       class_names: Sequence[str], templates: Sequence[str], *,
                       batch_size: int = 128) -> dict:
  """{'top1', 'top5'} of `images` (PIL) against prompts `template.format(name)`, CLIP-style."""
  import open_clip  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
  tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
  model.eval()
  with torch.no_grad():
    classes = []
    for name in class_names:
      text = model.encode_text(tokenizer([t.format(name) for t in templates]), normalize=True)
      mean = text.mean(dim=0)
      classes.append(mean / mean.norm())
    classes = torch.stack(classes)
    logits = []
    for start in range(0, len(images), batch_size):
      batch = torch.stack([preprocess(im) for im in images[start:start + batch_size]])
      logits.append(model.encode_image(batch, normalize=True) @ classes.T)
    logits = torch.cat(logits).numpy()
  # The JAX evaluator's own count (a tie counts against the true class), for equal figures.
  labels = np.asarray(labels)
  return {f"top{k}": topk_accuracy(logits, labels, k) for k in (1, 5) if k <= len(class_names)}
