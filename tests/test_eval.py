"""Evaluators against plain NumPy references, on 1 and 8 fake devices, with ragged last batches."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conftest import REPO, input_config, make_tiny_config
from maskclip_jax import sharding, train, train_step as train_step_lib
from maskclip_jax.data import fake_data, pipeline, tokenizer as tokenizer_lib
from maskclip_jax.evaluation import eval_config, retrieval, zeroshot
from maskclip_jax.evaluation.registry import Evaluations
from maskclip_jax.models.maskclip import MaskCLIP, build_model
from maskclip_jax.optimizer import make_optimizer

NUM_TEST = 50  # not a multiple of the eval batch (16)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """A random-init tiny model and a tiny synthetic data set."""
  config = make_tiny_config()
  config.input.tfds_data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.input.image_size = 32
  config.input.context_length = 16
  config.input.synthetic_train_size = 40
  config.input.synthetic_test_size = NUM_TEST
  model = build_model(config.model, config.maskclip)
  state = train_step_lib.init_train_state(model, config, make_optimizer(config),
                                          jax.random.PRNGKey(0))
  return config, model, state


def meshes():
  return [pytest.param(1, id="1device"), pytest.param(8, id="8devices")]


def evaluations_for(config, model, num_devices, workdir, **entries):
  config = config.copy_and_resolve_references()
  config.evals = {name: ec for name, ec in entries.items()}
  mesh = sharding.make_mesh(1, devices=jax.devices()[:num_devices])
  return Evaluations(config, model, mesh, str(workdir))


def reference_image_embeddings(model, params, config, data):
  """Every example of `data` in one unpadded batch, encoded with a plain `apply`."""
  iterator = pipeline.make_eval_iterator(config.input, global_batch_size=256, data=data)
  batch = next(iterator)
  iterator.close()
  real = batch["mask"]
  embedding, tokens = model.apply({"params": params}, batch["image"][real],
                                  method=MaskCLIP.encode_image)
  return dict(embedding=np.asarray(embedding), class_token=np.asarray(tokens[:, 0]),
              label=batch["label"][real])


def unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("num_devices", meshes())
def test_zeroshot_equals_numpy_reference(setup, num_devices, tmp_path):
  config, model, state = setup
  params = state["params"]
  ec = eval_config("zeroshot", data="synthetic:test", classes="synthetic", batch_size=16)
  got = evaluations_for(config, model, num_devices, tmp_path, zs=ec).run(
      0, params, state["teacher"])["zs"]

  ref = reference_image_embeddings(model, params, config, "synthetic:test")
  names, templates = zeroshot.class_names("synthetic", ""), zeroshot.templates_for("",
                                                                                   "synthetic")
  class_embeddings = []
  for name in names:
    tokens = tokenizer_lib.tokenize([t.format(name) for t in templates], 16)
    text = model.apply({"params": params}, tokens, method=MaskCLIP.encode_text)[0]
    class_embeddings.append(unit(unit(text).mean(axis=0)))
  logits = unit(ref["embedding"]) @ np.stack(class_embeddings).T
  order = np.argsort(-logits, axis=1)
  hits = order == ref["label"][:, None]
  assert got["num_examples"] == NUM_TEST
  for k in (1, 5):
    expected = hits[:, :k].any(axis=1).mean()
    assert abs(got[f"top{k}"] - expected) <= 1 / NUM_TEST + 1e-9, (k, got, expected)
  # The pipeline really did give 50 distinct images, each once.
  assert len(np.unique(ref["embedding"].round(5), axis=0)) == NUM_TEST


def write_retrieval_manifest(directory, num_images=21, seed=0):
  rng = np.random.default_rng(seed)
  words = ["red", "blue", "dog", "cat", "house", "tree", "car", "boat", "sky", "field"]
  entries = []
  for i in range(num_images):
    pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    name = f"img_{i}.png"
    Image.fromarray(pixels).save(os.path.join(directory, name))
    captions = [" ".join(rng.choice(words, size=4)) for _ in range(rng.integers(1, 4))]
    entries.append({"image": name, "caption": captions})
  path = os.path.join(directory, "test.json")
  with open(path, "w") as f:
    json.dump(entries, f)
  return path, entries


def numpy_recall(image_emb, text_emb, text_image, k):
  """Per-query loops, the textbook way."""
  images, texts = unit(image_emb), unit(text_emb)
  sims = images @ texts.T
  i2t = []
  for i in range(len(images)):
    top = np.argsort(-sims[i])[:k]
    i2t.append(any(text_image[j] == i for j in top))
  t2i = []
  for j in range(len(texts)):
    top = np.argsort(-sims[:, j])[:k]
    t2i.append(text_image[j] in top)
  return np.mean(i2t), np.mean(t2i)


@pytest.mark.parametrize("num_devices", meshes())
def test_retrieval_equals_numpy_reference(setup, num_devices, tmp_path):
  config, model, state = setup
  params = state["params"]
  path, entries = write_retrieval_manifest(str(tmp_path))
  ec = eval_config("retrieval", data=f"json:{path}", batch_size=8)
  got = evaluations_for(config, model, num_devices, tmp_path, ret=ec).run(
      0, params, state["teacher"])["ret"]

  _, batches = retrieval.load_retrieval_data(ec, config.input, local_batch_size=64,
                                             process_index=0, process_count=1)
  batch = next(batches)
  real = batch["mask"]
  assert list(batch["index"][real]) == list(range(len(entries)))
  image_emb = model.apply({"params": params}, batch["image"][real],
                          method=MaskCLIP.encode_image)[0]
  texts = [c for e in entries for c in e["caption"]]
  text_image = np.repeat(np.arange(len(entries)), [len(e["caption"]) for e in entries])
  text_emb = model.apply({"params": params}, tokenizer_lib.tokenize(texts, 16),
                         method=MaskCLIP.encode_text)[0]
  assert got["num_images"] == len(entries) and got["num_captions"] == len(texts)
  assert len(texts) > len(entries)  # several captions for some images
  for k in (1, 5, 10):
    i2t, t2i = numpy_recall(image_emb, text_emb, text_image, k)
    assert abs(got[f"i2t_r{k}"] - i2t) <= 1 / len(entries) + 1e-9, (k, got, i2t)
    assert abs(got[f"t2i_r{k}"] - t2i) <= 1 / len(texts) + 1e-9, (k, got, t2i)


@pytest.mark.parametrize("num_devices", meshes())
def test_knn_equals_numpy_reference(setup, num_devices, tmp_path):
  config, model, state = setup
  params = state["params"]
  ec = eval_config("knn", data="synthetic:test", train_data="synthetic:train", batch_size=16,
                   k=5, temperature=0.1)
  got = evaluations_for(config, model, num_devices, tmp_path, knn=ec).run(
      0, params, state["teacher"])["knn"]

  train = reference_image_embeddings(model, params, config, "synthetic:train")
  test = reference_image_embeddings(model, params, config, "synthetic:test")
  sims = unit(test["embedding"]) @ unit(train["embedding"]).T
  correct = 0
  for i in range(len(sims)):
    neighbours = np.argsort(-sims[i])[:5]
    votes = np.zeros(36)
    for j in neighbours:
      votes[train["label"][j]] += np.exp(sims[i, j] / 0.1)
    correct += int(np.argmax(votes) == test["label"][i])
  assert got["num_train"] == 40 and got["num_test"] == NUM_TEST
  assert got["num_classes"] == max(train["label"].max(), test["label"].max()) + 1
  assert abs(got["top1"] - correct / NUM_TEST) <= 1 / NUM_TEST + 1e-9, (got, correct)


def test_linear_probe_runs_on_class_tokens(setup, tmp_path):
  config, model, state = setup
  ec = eval_config("linear_probe", data="synthetic:test", train_data="synthetic:train",
                   batch_size=16, feature="class_token", l2_grid=(1e-3, 1e-1), max_steps=50)
  got = evaluations_for(config, model, 1, tmp_path, probe=ec).run(
      0, state["params"], state["teacher"])["probe"]
  assert got["l2"] in (1e-3, 1e-1) and 0 <= got["top1"] <= 1
  assert got["num_train"] == 40 and got["num_test"] == NUM_TEST
  largest_label = max(reference_image_embeddings(model, state["params"], config, data)[
      "label"].max() for data in ("synthetic:train", "synthetic:test"))
  assert got["num_classes"] == largest_label + 1


def test_retrieval_reads_tfds_nested_keys_each_image_with_its_captions(tmp_path):
  from test_data_sources import TinyCaptions  # pylint: disable=g-import-not-at-top
  TinyCaptions(data_dir=str(tmp_path)).download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          compute_stats=tfds.download.ComputeStatsMode.SKIP))
  entry = eval_config("retrieval", data="tfds:tiny_captions:validation", image_key="photo",
                      caption_key="meta/captions")
  captions, batches = retrieval.load_retrieval_data(
      entry, input_config(tfds_data_dir=str(tmp_path)), local_batch_size=16, process_index=0,
      process_count=1)
  batch = next(batches)
  real = batch["mask"]
  ids = fake_data.image_ids(batch["image"][real])
  assert sorted(ids) == list(range(20, 31)) and list(batch["index"][real]) == list(range(11))
  for index, image_id in zip(batch["index"][real], ids):
    caption = fake_data.caption_of(image_id)
    assert captions[index] == [caption, f"{caption} too"]


def test_recall_at_k_on_hand_made_embeddings():
  # Two images, three captions: caption 0 and 1 belong to image 0, caption 2 to image 1.
  images = np.array([[1.0, 0.0], [0.0, 1.0]])
  texts = np.array([[0.6, 0.8], [1.0, 0.1], [0.9, 0.2]])
  got = retrieval.recall_at_k(images, texts, np.array([0, 0, 1]), ks=(1, 2))
  # Image 0's nearest text is caption 1, its own: a hit at 1. Image 1's nearest is caption 0
  # (not its own), then caption 2 (its own): a miss at 1, a hit at 2.
  assert got["i2t_r1"] == 0.5 and got["i2t_r2"] == 1.0
  # Caption 0 is nearer image 1 (0.8 > 0.6): miss at 1, hit at 2. Caption 1 -> image 0: hit.
  # Caption 2 is nearer image 0: miss at 1, hit at 2.
  assert got["t2i_r1"] == pytest.approx(1 / 3) and got["t2i_r2"] == 1.0


def test_zeroshot_topk_on_hand_made_embeddings():
  classes = np.eye(3)
  images = np.array([[1.0, 0.2, 0.1], [0.1, 0.2, 1.0], [0.3, 0.2, 0.1]])
  got = zeroshot.nearest_class_accuracy(images, np.array([0, 1, 2]), classes, ks=(1, 2))
  assert got["top1"] == pytest.approx(1 / 3)  # only the first
  assert got["top2"] == pytest.approx(2 / 3)  # image 1's class 1 is second; image 2's is last


def test_bad_eval_configs_fail_before_compiling(setup):
  config, _, _ = setup
  from maskclip_jax.config_checks import check_config
  for entry, message in (
      (eval_config("zeroshot", batch_size=12), "batch_size=12"),
      (eval_config("zeroshot", image_tower="student"), "image_tower='student'"),
      (eval_config("knn", feature="patch"), "feature='patch'"),
  ):
    bad = config.copy_and_resolve_references()
    bad.evals = {"e": entry}
    with pytest.raises(ValueError, match=f"evals.e.{message}"):
      check_config(bad, 8)
  with pytest.raises(ValueError, match="no field"):
    eval_config("zeroshot", recall_at=(1,))
  clip = config.copy_and_resolve_references()
  clip.maskclip.w_dist = 0.0
  clip.evals = {"e": eval_config("zeroshot", image_tower="teacher")}
  with pytest.raises(ValueError, match="no EMA teacher"):
    check_config(clip, 8)


def test_zeroshot_classes_and_templates_from_json(tmp_path):
  path = tmp_path / "classes.json"
  path.write_text(json.dumps({"classnames": ["a", "b"], "templates": ["x {} y"]}))
  assert zeroshot.class_names(f"json:{path}", "") == ["a", "b"]
  assert zeroshot.templates_for("", f"json:{path}") == ["x {} y"]
  plain = tmp_path / "names.json"
  plain.write_text(json.dumps(["a", "b"]))
  assert len(zeroshot.templates_for("", f"json:{plain}")) == 80  # CLIP's ImageNet templates
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"templates": ["no placeholder"]}))
  with pytest.raises(ValueError, match="no '{}'"):
    zeroshot.templates_for(f"json:{bad}", "imagenet")
  assert len(zeroshot.class_names("imagenet", "")) == 1000


def test_trainer_evals_and_maskclip_eval_agree(setup, tmp_path):
  """The trainer writes eval JSON at its steps; maskclip-eval on that checkpoint matches."""
  config, _, _ = setup
  from maskclip_jax.config_defaults import base_config, shrink_for_local_run
  run_config = shrink_for_local_run(base_config())
  run_config.input.tfds_data_dir = config.input.tfds_data_dir
  run_config.input.synthetic_train_size = 40
  run_config.input.synthetic_test_size = NUM_TEST
  run_config.total_steps = 4
  run_config.checkpoint.every_steps = 2
  run_config.evals = {"zs": eval_config("zeroshot", data="synthetic:test", batch_size=16,
                                        every_steps=2),
                      "zs_teacher": eval_config("zeroshot", data="synthetic:test",
                                                batch_size=16, image_tower="teacher")}
  workdir = str(tmp_path / "run")
  last = train.train_and_evaluate(run_config, workdir)
  evals_dir = os.path.join(workdir, "evals")
  assert sorted(os.listdir(evals_dir)) == ["zs_step2.json", "zs_step4.json",
                                           "zs_teacher_step4.json"]
  assert last["eval/zs/top1"] == json.load(open(os.path.join(evals_dir, "zs_step4.json")))[
      "metrics"]["top1"]

  result = subprocess.run(
      [sys.executable, "-m", "maskclip_jax.cli.evaluate", f"--workdir={workdir}", "--step=2",
       "--evals=zs"], capture_output=True, text=True, timeout=600, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  trained = json.load(open(os.path.join(evals_dir, "zs_step2.json")))["metrics"]
  standalone = json.load(open(os.path.join(evals_dir, "standalone", "zs_step2.json")))["metrics"]
  assert standalone == trained
  assert f"top1={trained['top1']:.4f}" in result.stdout
  assert f"num_examples={NUM_TEST}, num_classes=36" in result.stdout


def test_metrics_print_to_four_decimals_and_counts_as_whole_numbers():
  from maskclip_jax.evaluation.registry import format_metrics
  assert format_metrics({"top1": 0.228, "top5": 1.0, "num_examples": 1000.0}) == (
      "top1=0.2280, top5=1.0000, num_examples=1000")
