"""The captioned-scenes synthetic set: examples, its TFDS build, `synthetic_kind` and its evals."""
import re

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import input_config, make_tiny_config
from maskclip_jax.config_checks import check_evaluation_config, check_input
from maskclip_jax import sharding, train_step as train_step_lib
from maskclip_jax.data import captioned_scenes as cs
from maskclip_jax.data import captioned_shapes, pipeline, tokenizer
from maskclip_jax.evaluation import config as eval_config_lib, eval_config, retrieval, zeroshot
from maskclip_jax.evaluation.registry import Evaluations
from maskclip_jax.models.maskclip import build_model
from maskclip_jax.optimizer import make_optimizer

SIZE = 32
# A small scenes set (input_config fields).
SCENES = dict(image_size=SIZE, synthetic_kind="scenes", synthetic_train_size=24,
              synthetic_test_size=12, shuffle_buffer=16, cycle_length=2)


def scenes_config(tmp_path, **overrides):
  """The small scenes set, built in `tmp_path`, then `overrides`."""
  return input_config(**{**SCENES, "tfds_data_dir": str(tmp_path), **overrides})


def near(pixels: np.ndarray, colour: str) -> np.ndarray:
  """Which pixels are the nominal `colour`, within make_example's jitter."""
  return np.abs(pixels.astype(int) - captioned_shapes.COLOURS[colour]).max(-1) <= 20


def test_examples_are_deterministic():
  a, b = cs.make_example("train", 3, SIZE), cs.make_example("train", 3, SIZE)
  np.testing.assert_array_equal(a["image"], b["image"])
  for key in ("caption", "label", "colour", "shape", "size", "position", "texture"):
    assert a[key] == b[key]
  for m, n in zip(a["object_masks"], b["object_masks"]):
    np.testing.assert_array_equal(m, n)
  assert a["image"].shape == (SIZE, SIZE, 3) and a["image"].dtype == np.uint8
  assert a["subject_mask"].shape == (SIZE, SIZE) and a["subject_mask"].dtype == bool
  other = cs.make_example("test", 3, SIZE)
  assert other["caption"] != a["caption"] or not np.array_equal(other["image"], a["image"])


@pytest.mark.parametrize("size", [SIZE, 64])
def test_objects_are_distinct_and_the_subject_is_visible_and_captioned(size):
  counts = set()
  for i in range(40):
    ex = cs.make_example("train", i, size)
    masks = ex["object_masks"]
    counts.add(len(masks))
    assert cs.MIN_OBJECTS <= len(masks) <= cs.MAX_OBJECTS
    np.testing.assert_array_equal(masks[0], ex["subject_mask"])
    # Visible parts never overlap, and every object shows most of itself.
    assert (np.sum(masks, axis=0) <= 1).all()
    assert all(m.sum() >= 6 for m in masks)
    colour = list(captioned_shapes.COLOURS)[ex["colour"]]
    shape = captioned_shapes.SHAPES[ex["shape"]]
    assert cs.CLASS_NAMES[ex["label"]] == f"{colour} {shape}"
    # The subject's pixels hold its colour; no other object has that colour.
    assert near(ex["image"][ex["subject_mask"]], colour).sum() >= 5
    for m in masks[1:]:
      assert near(ex["image"][m], colour).mean() < 0.2
    words = re.findall(r"[a-z]+", ex["caption"])
    assert colour in words and shape in words, ex["caption"]
    # Distinct colours and shapes: the caption names each at most once.
    assert sum(w in captioned_shapes.COLOURS for w in words) <= len(masks)
    assert len(set(w for w in words if w in captioned_shapes.SHAPES)) == sum(
        w in captioned_shapes.SHAPES for w in words)
  assert counts == {2, 3, 4}


def test_layouts_have_distinct_colours_shapes_and_cells():
  rng = np.random.default_rng(0)
  for _ in range(50):
    objects, silhouettes = cs._layout(rng, SIZE)  # pylint: disable=protected-access
    for field in ("colour", "shape", "cell"):
      values = [getattr(o, field) for o in objects]
      assert len(set(values)) == len(values)
    assert all(s.any() for s in silhouettes)


def test_attribute_tasks_and_prompts():
  assert set(cs.ATTRIBUTE_TASKS) | {"label"} == set(eval_config_lib.SCENE_TASKS)
  assert cs.CLASS_NAMES == captioned_shapes.CLASS_NAMES
  ex = cs.make_example("test", 0, SIZE)
  for task, (names, templates) in cs.ATTRIBUTE_TASKS.items():
    assert 0 <= ex[task] < len(names) and len(templates) >= 3
    assert zeroshot.class_names(f"scenes:{task}", "") == list(names)
    assert zeroshot.templates_for("", f"scenes:{task}") == list(templates)
    prompts = [t.format(n) for n in names for t in templates]
    assert len(set(prompts)) == len(prompts)
  assert zeroshot.class_names("scenes", "") == list(cs.CLASS_NAMES)
  assert zeroshot.templates_for("", "scenes") == list(cs.ZERO_SHOT_TEMPLATES)
  with pytest.raises(ValueError, match="scenes:colour"):
    zeroshot.class_names("scenes:hue", "")


def test_build_round_trips_the_labels(tmp_path):
  builder = cs.prepared_builder(image_size=SIZE, num_train=20, num_test=8, data_dir=str(tmp_path))
  assert builder.info.splits["test"].num_examples == 8
  assert "captioned_scenes" in builder.data_dir and f"{SIZE}px_20_8" in builder.data_dir
  features = builder.info.features
  assert features["label"].names == list(cs.CLASS_NAMES)
  assert features["position"].num_classes == 9 and features["size"].num_classes == 3
  by_caption = {ex["caption"].decode(): ex
                for ex in tfds.as_numpy(builder.as_dataset(split="test"))}
  for i in range(8):
    reference = cs.make_example("test", i, SIZE)
    stored = by_caption[reference["caption"]]
    np.testing.assert_array_equal(stored["image"], reference["image"])
    for key in ("label", "colour", "shape", "size", "position", "texture"):
      assert stored[key] == reference[key]


def test_synthetic_kind_chooses_the_set_and_label_key_the_label(tmp_path):
  config = scenes_config(tmp_path, label_key="colour")
  batches = list(pipeline.make_eval_iterator(config, data="synthetic:test", global_batch_size=4,
                                             process_index=0, process_count=1))
  # Each caption's label is its subject's colour (TFDS stores the examples shuffled).
  tok = tokenizer.get_tokenizer()
  words = lambda text: tuple(re.findall(r"[a-z]+", text))
  colours = {words(ex["caption"]): ex["colour"]
             for ex in (cs.make_example("test", i, SIZE) for i in range(12))}
  got = {words(tok.decode(text)): label for b in batches
         for text, label in zip(b["text"][b["mask"]], b["label"][b["mask"]])}
  assert got == colours
  # Retrieval's synthetic branch reads the same set.
  ec = eval_config("retrieval", data="synthetic:test")
  captions, _ = retrieval.load_retrieval_data(ec, config, local_batch_size=4, process_index=0,
                                              process_count=1)
  assert sorted(c[0] for c in captions) == sorted(cs.make_example("test", i, SIZE)["caption"]
                                                  for i in range(12))


def test_bad_synthetic_kind_fails_naming_the_field(tmp_path):
  with pytest.raises(ValueError, match=r"--config\.input\.synthetic_kind='squares'.*scenes"):
    check_input(scenes_config(tmp_path, synthetic_kind="squares"))


def test_eval_config_checks_name_the_fields():
  config = make_tiny_config()
  config.input.synthetic_kind = "scenes"
  config.evals = {"zs": eval_config("zeroshot", data="synthetic:test", classes="scenes:hue",
                                    label_key="colour")}
  with pytest.raises(ValueError, match=r"evals\.zs\.classes='scenes:hue'.*scenes:colour"):
    eval_config_lib.check_evals(config, 1)
  config.evals.zs.classes = "scenes:colour"
  config.evals.zs.label_key = ""
  with pytest.raises(ValueError, match=r"set --config\.evals\.zs\.label_key='colour'"):
    eval_config_lib.check_evals(config, 1)
  config.evals.zs.label_key = "colour"
  eval_config_lib.check_evals(config, 1)
  config.input.synthetic_kind = "shapes"
  with pytest.raises(ValueError, match=r"label_key='colour'.*synthetic_kind=scenes"):
    eval_config_lib.check_evals(config, 1)
  config.input.synthetic_kind = "squares"
  with pytest.raises(ValueError, match=r"--config\.input\.synthetic_kind='squares'"):
    check_evaluation_config(config, 1)


def test_attribute_zeroshot_runs_through_the_registry(tmp_path):
  config = make_tiny_config()
  config.input.update(image_size=32, context_length=16, synthetic_kind="scenes",
                      synthetic_train_size=16, synthetic_test_size=20,
                      tfds_data_dir=str(tmp_path / "tfds"))
  config.evals = {
      "colour": eval_config("zeroshot", data="synthetic:test", classes="scenes:colour",
                            label_key="colour", batch_size=8),
      "subject": eval_config("zeroshot", data="synthetic:test", classes="scenes", batch_size=8),
  }
  model = build_model(config.model, config.maskclip)
  state = train_step_lib.init_train_state(model, config, make_optimizer(config),
                                          jax.random.PRNGKey(0))
  mesh = sharding.make_mesh(1, devices=jax.devices()[:1])
  results = Evaluations(config, model, mesh, str(tmp_path)).run(0, state["params"],
                                                                 state["teacher"])
  assert results["colour"]["num_classes"] == 6 and results["colour"]["num_examples"] == 20
  assert 0 <= results["colour"]["top1"] <= 1 and "top5" in results["colour"]
  assert results["subject"]["num_classes"] == 36
