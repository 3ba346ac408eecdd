"""Zero-shot classification: class names x prompt templates -> a text classifier -> top-k.

As CLIP: each class's embedding is the mean of its L2-normalised template embeddings,
normalised again; an image's class is the nearest class embedding by cosine similarity.
"""
import json
import os

import ml_collections
import numpy as np

from maskclip_jax.data import tokenizer as tokenizer_lib
from maskclip_jax.evaluation import features as features_lib
from maskclip_jax.evaluation.context import EvalContext
from maskclip_jax.ranking import l2_normalize, topk_accuracy

ASSETS = os.path.join(os.path.dirname(__file__), "assets")


def _asset(name: str) -> list:
  with open(os.path.join(ASSETS, name)) as f:
    return json.load(f)


def _read_json(path: str, what: str, key: str):
  try:
    with open(path) as f:
      content = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"Zero-shot {what} file {path!r} cannot be read as JSON ({e}).") from e
  if isinstance(content, dict):
    if key not in content:
      raise ValueError(f"Zero-shot {what} file {path!r} is a JSON object without a {key!r} "
                       f"list; its keys: {sorted(content)}.")
    content = content[key]
  if not isinstance(content, list) or not content or not all(
      isinstance(x, str) for x in content):
    raise ValueError(f"Zero-shot {what} file {path!r}: {key!r} must be a non-empty list of "
                     "strings.")
  return content


def _has_key(path: str, key: str) -> bool:
  """Whether the JSON file at `path` is an object with `key` (a plain list has no templates)."""
  try:
    with open(path) as f:
      content = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"Zero-shot classes file {path!r} cannot be read as JSON ({e}).") from e
  return isinstance(content, dict) and key in content


def _scenes_task(value: str, field: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(class names, templates) of 'scenes' (the 36 subject classes) or 'scenes:TASK'."""
  from maskclip_jax.data import captioned_scenes  # pylint: disable=g-import-not-at-top
  task = value.partition(":")[2] or "label"
  if task == "label":
    return captioned_scenes.CLASS_NAMES, captioned_scenes.ZERO_SHOT_TEMPLATES
  if task not in captioned_scenes.ATTRIBUTE_TASKS:
    raise ValueError(f"{field}={value!r}: no such captioned_scenes task; use 'scenes' or one of "
                     f"{['scenes:' + t for t in captioned_scenes.ATTRIBUTE_TASKS]}.")
  return captioned_scenes.ATTRIBUTE_TASKS[task]


def class_names(classes: str, data: str) -> list[str]:
  if classes == "scenes" or classes.startswith("scenes:"):
    return list(_scenes_task(classes, "classes")[0])
  if classes == "synthetic":
    from maskclip_jax.data import captioned_shapes  # pylint: disable=g-import-not-at-top
    return list(captioned_shapes.CLASS_NAMES)
  if classes == "imagenet":
    return _asset("imagenet_classnames.json")
  if classes == "folder":
    if not data.startswith("folder:"):
      raise ValueError(f"classes='folder' takes the class names from a folder:PATH data set, "
                       f"but data={data!r}; set classes to 'json:PATH' or 'imagenet'.")
    from maskclip_jax.data.sources import image_folder  # pylint: disable=g-import-not-at-top
    return [name.replace("_", " ") for name in image_folder.folder_class_names(data[7:])]
  if classes.startswith("json:"):
    return _read_json(classes[5:], "classes", "classnames")
  raise ValueError(f"classes={classes!r} is unknown; use 'synthetic', 'scenes[:TASK]', "
                   "'imagenet', 'folder' or 'json:PATH'.")


def templates_for(templates: str, classes: str) -> list[str]:
  if not templates:
    if classes in ("synthetic", "scenes") or classes.startswith("scenes:"):
      templates = classes
    elif classes.startswith("json:") and _has_key(classes[5:], "templates"):
      templates = classes
    else:
      templates = "imagenet"
  if templates == "scenes" or templates.startswith("scenes:"):
    out = list(_scenes_task(templates, "templates")[1])
  elif templates == "synthetic":
    from maskclip_jax.data import captioned_shapes  # pylint: disable=g-import-not-at-top
    out = list(captioned_shapes.ZERO_SHOT_TEMPLATES)
  elif templates == "imagenet":
    out = _asset("imagenet_templates.json")
  elif templates.startswith("json:"):
    out = _read_json(templates[5:], "templates", "templates")
  else:
    raise ValueError(f"templates={templates!r} is unknown; use '', 'imagenet', 'synthetic', "
                     "'scenes[:TASK]' or 'json:PATH'.")
  bad = [t for t in out if "{}" not in t]
  if bad:
    raise ValueError(f"Zero-shot templates {bad[:3]} have no '{{}}' where the class name goes.")
  return out


def classifier(encoders: features_lib.Encoders, names: list[str], templates: list[str], *,
               context_length: int, batch_size: int) -> np.ndarray:
  """(C, D) unit class embeddings: the normalised mean of each class's template embeddings."""
  prompts = [t.format(name) for name in names for t in templates]
  tokens = tokenizer_lib.tokenize(prompts, context_length)
  embeddings = l2_normalize(encoders.text_embeddings(tokens, batch_size))
  embeddings = embeddings.reshape(len(names), len(templates), -1).mean(axis=1)
  return l2_normalize(embeddings)


def nearest_class_accuracy(image_embeddings: np.ndarray, labels: np.ndarray,
                           class_embeddings: np.ndarray, ks=(1, 5)) -> dict[str, float]:
  """{'top1': ..., 'top5': ...}: fraction of images whose label is among the k classes nearest
  to them (cosine similarity to the unit `class_embeddings`); a k above the class count is left
  out."""
  logits = l2_normalize(image_embeddings) @ class_embeddings.T
  return {f"top{k}": topk_accuracy(logits, labels.astype(np.int64), k)
          for k in ks if k <= class_embeddings.shape[0]}


def evaluate(context: EvalContext, entry: ml_collections.ConfigDict) -> dict[str, float]:
  """Zero-shot top-k accuracy on `entry.data` with a classifier of `entry.classes` names
  (config type 'zeroshot')."""
  names = class_names(entry.classes, entry.data)
  templates = templates_for(entry.templates, entry.classes)
  class_embeddings = classifier(context.encoders, names, templates,
                                context_length=context.context_length,
                                batch_size=entry.batch_size)
  features = context.image_features(entry, entry.data)
  labels = features["label"]
  if labels.min() < 0 or labels.max() >= len(names):
    raise ValueError(f"Zero-shot data {entry.data!r} has labels in [{labels.min()}, "
                     f"{labels.max()}] but {len(names)} class names ({entry.classes!r}); set "
                     "label_key, or classes to the data's own class list.")
  metrics = nearest_class_accuracy(features["embedding"], labels, class_embeddings,
                                   tuple(entry.top_k))
  metrics.update(num_examples=float(len(labels)), num_classes=float(len(names)))
  return metrics
