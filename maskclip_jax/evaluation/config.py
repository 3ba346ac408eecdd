"""Evaluator config entries: `config.evals.NAME = eval_config(TYPE, field=value, ...)`.

No tensorflow or jax here: config files import this. Every entry has the common fields below
plus its type's own; the defaults list every field, so a mistyped one is an error (locked
configs), and `--config.evals.NAME.FIELD=VALUE` overrides any of them.
"""
import ml_collections

from maskclip_jax.models.image_towers import IMAGE_TOWERS

TYPES = ("zeroshot", "retrieval", "linear_probe", "knn")
# Labels of the captioned_scenes subject, each a zero-shot task 'scenes:TASK' ('label', the 36
# colour x shape classes, is also plain 'scenes'); data/captioned_scenes.py's ATTRIBUTE_TASKS
# holds the others' class names (kept here by name: this file imports no tensorflow).
SCENE_TASKS = ("label", "colour", "shape", "size", "position", "texture")
_SYNTHETIC_LABELS = {"shapes": ("label",), "scenes": SCENE_TASKS}
PROBE_FEATURES = ("embedding", "class_token")


def _common(type_name: str) -> dict:
  return dict(
      type=type_name,
      data="synthetic",   # any labelled input source, `folder:PATH` too; see each type
      every_steps=0,      # in training: every N steps (0: only at the end), and at the end
      batch_size=256,     # global; a multiple of the device count
      image_tower="online",  # 'online' or 'teacher' (the EMA teacher's image tower)
      # Input keys for this data (empty: the source's default; see data/config.py).
      image_key="",
      caption_key="none",
      label_key="",
  )


def _specific(type_name: str) -> dict:
  if type_name == "zeroshot":
    return dict(
        # Class names: 'synthetic', 'imagenet' (the 1000 ImageNet-1k names), 'folder' (the
        # class folder names of a `folder:PATH` data set), 'json:PATH' (a list of names, or
        # {"classnames": [...], "templates": [...]}), or, for input.synthetic_kind='scenes',
        # 'scenes' (the subject's 36 colour x shape classes) or 'scenes:TASK' (an attribute of
        # the subject: TASK = colour, shape, size, position or texture; set label_key=TASK).
        classes="synthetic",
        # Prompt templates with '{}' for the name: '' (the class source's own: 'synthetic'
        # and 'scenes[:TASK]' have 4, the others CLIP's 80 ImageNet templates), 'imagenet',
        # 'synthetic', 'scenes[:TASK]', 'json:PATH' (a list, or the 'templates' key of a dict).
        templates="",
        top_k=(1, 5),
    )
  if type_name == "retrieval":
    # Data: 'json:PATH' (a list of {"image": path, "caption": [captions]}, as LAVIS/BLIP ship
    # the Flickr30k/COCO Karpathy test splits; or Karpathy's dataset_*.json with its 'images'
    # list, of which `split` is read), 'csv:PATH' (image and caption columns; rows of one
    # image are grouped), 'tfds:NAME[:SPLIT]' (e.g. tfds:coco_captions:test), or 'synthetic'.
    return dict(
        caption_key="",
        split="test",       # for Karpathy's JSON
        image_root="",      # relative image paths are relative to this (default: the file's dir)
        recall_at=(1, 5, 10),
    )
  if type_name == "linear_probe":
    return dict(
        train_data="synthetic:train",
        feature="class_token",  # 'class_token' (before the projection) or 'embedding' (after)
        l2_grid=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
        holdout_fraction=0.2,
        max_train_examples=0,  # 0: all; else the first N (by process order) for a quick probe
        max_steps=1000,
    )
  if type_name == "knn":
    return dict(
        train_data="synthetic:train",
        feature="embedding",
        k=20,
        temperature=0.07,
        max_train_examples=0,
    )
  raise ValueError(f"Evaluator type {type_name!r} is unknown; use one of {TYPES}.")


def eval_config(type_name: str, **overrides) -> ml_collections.ConfigDict:
  """A complete entry of `type_name` with `overrides` applied."""
  fields = dict(_common(type_name), **_specific(type_name))
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f"Evaluator type {type_name!r} has no field(s) {unknown}; its fields are "
                     f"{sorted(fields)}.")
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def check_evals(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Fails before compiling on a bad `config.evals` entry, naming it."""
  for name in sorted(config.get("evals", {}).keys()):
    entry = config.evals[name]
    where = f"--config.evals.{name}"
    if entry.get("type") not in TYPES:
      raise ValueError(f"{where}.type={entry.get('type')!r} is unknown; use one of {TYPES}.")
    expected = set(_common(entry.type)) | set(_specific(entry.type))
    missing, extra = sorted(expected - set(entry.keys())), sorted(set(entry.keys()) - expected)
    if missing or extra:
      raise ValueError(f"{where}: fields {missing} missing and {extra} unknown for type "
                       f"{entry.type!r}; build entries with evaluation.eval_config(type, ...).")
    if entry.batch_size <= 0 or entry.batch_size % num_devices:
      raise ValueError(f"{where}.batch_size={entry.batch_size} is not a positive multiple of the "
                       f"{num_devices} devices.")
    if entry.every_steps < 0:
      raise ValueError(f"{where}.every_steps={entry.every_steps} must be >= 0 (0: at the end).")
    if entry.image_tower not in IMAGE_TOWERS:
      raise ValueError(f"{where}.image_tower={entry.image_tower!r}: use one of {IMAGE_TOWERS}.")
    maskclip = config.maskclip
    if entry.image_tower == "teacher" and (maskclip.w_dist <= 0 or maskclip.teacher != "ema"
                                           or maskclip.distill_target == "pixel"):
      raise ValueError(f"{where}.image_tower='teacher' but this run has no EMA teacher "
                       "(maskclip.w_dist=0, teacher='online' or distill_target='pixel'); use "
                       "'online'.")
    if entry.type in ("linear_probe", "knn") and entry.feature not in PROBE_FEATURES:
      raise ValueError(f"{where}.feature={entry.feature!r}: use one of {PROBE_FEATURES}.")
    if entry.type != "retrieval":
      _check_synthetic_labels(config, entry, where)
    if entry.type == "zeroshot":
      _check_scenes_classes(entry, where)


def _is_synthetic(data: str) -> bool:
  return data == "synthetic" or data.startswith("synthetic:")


def _scenes_task(value: str) -> str | None:
  """'colour' for 'scenes:colour', 'label' for 'scenes', None for other class sources."""
  if value == "scenes" or value.startswith("scenes:"):
    return value.partition(":")[2] or "label"
  return None


def _check_synthetic_labels(config, entry, where: str) -> None:
  """label_key must name a label of the synthetic set that input.synthetic_kind chooses."""
  datas = [entry.data] + ([entry.train_data] if "train_data" in entry else [])
  if not any(_is_synthetic(d) for d in datas):
    return
  kind = config.input.get("synthetic_kind", "shapes")  # check_input validated it
  labels = _SYNTHETIC_LABELS[kind]
  if entry.label_key and entry.label_key not in labels:
    fix = ("set --config.input.synthetic_kind=scenes for the subject's attributes"
           if kind == "shapes" else f"use one of {labels}")
    raise ValueError(f"{where}.label_key={entry.label_key!r}: the synthetic set {kind!r} has the "
                     f"labels {labels}; {fix}.")


def _check_scenes_classes(entry, where: str) -> None:
  for field in ("classes", "templates"):
    task = _scenes_task(entry[field])
    if task is not None and task not in SCENE_TASKS:
      raise ValueError(f"{where}.{field}={entry[field]!r}: no such captioned_scenes task; use "
                       f"'scenes' or one of {['scenes:' + t for t in SCENE_TASKS[1:]]}.")
  task = _scenes_task(entry.classes)
  # On synthetic data the labels must be the task's own (elsewhere label_key may differ).
  if task is not None and _is_synthetic(entry.data) and (entry.label_key or "label") != task:
    raise ValueError(f"{where}.classes={entry.classes!r} are the subject's {task} classes, but "
                     f"{where}.label_key={entry.label_key!r}; set {where}.label_key={task!r}.")
