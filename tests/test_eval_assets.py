"""The shipped ImageNet-1k class names and CLIP's 80 ImageNet prompt templates."""
import json
import os

import pytest

import maskclip_jax

ASSETS = os.path.join(os.path.dirname(maskclip_jax.__file__), "evaluation", "assets")


def load(name):
  with open(os.path.join(ASSETS, name), encoding="utf-8") as f:
    return json.load(f)


def test_class_names_and_templates_are_well_formed():
  names = load("imagenet_classnames.json")
  templates = load("imagenet_templates.json")
  assert len(names) == 1000 and all(isinstance(n, str) and n.strip() == n and n for n in names)
  # OpenAI's curated names repeat two ('missile', 'sunglasses'), as their notebook does.
  assert len(set(names)) == 998
  assert len(templates) == 80 and len(set(templates)) == 80
  assert all(t.count("{}") == 1 for t in templates)
  assert templates[0].format("dog") == "a bad photo of a dog."


def test_they_equal_open_clips_lists():
  metadata = pytest.importorskip("open_clip.zero_shot_metadata")
  assert load("imagenet_classnames.json") == list(metadata.IMAGENET_CLASSNAMES)
  assert load("imagenet_templates.json") == [t("{}") for t in metadata.OPENAI_IMAGENET_TEMPLATES]
