"""maskclip-heatmap and maskclip_jax/heatmap/: the maps against a plain reference (output
tokens, and MaskCLIP's value features against a hand computation from the last block's
parameters), the figure's layout, the eval preprocessing, and clear errors for bad inputs."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from scipy import special

from conftest import REPO, fresh_train_state, make_tiny_config, randomised
from maskclip_jax import checkpoint, heatmap
from maskclip_jax import normalization
from maskclip_jax.data import tokenizer
from maskclip_jax.cli import heatmap as heatmap_cli
from maskclip_jax.cli.heatmap import run
from maskclip_jax.models import layer_layout
from maskclip_jax.models.maskclip import MaskCLIP, build_model, image_tower

STEP = 3
PROMPTS = ["a red circle", "a blue square", "a green star"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tiny run's workdir (32 px, patch 8: a 4x4 grid) whose teacher differs from its online
  image tower, so that the two can be told apart."""
  config = make_tiny_config()
  model, state = fresh_train_state(config)
  state = dict(jax.device_get(state), teacher=randomised(state["teacher"], 1))
  path = str(tmp_path_factory.mktemp("run"))
  checkpoint.save_state(path, STEP, state, config)
  return path, model, state


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
  """A 40x50 (H x W) PNG: not square and not the model's size, so it is resized and cropped."""
  path = str(tmp_path_factory.mktemp("img") / "image.png")
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
  return path


def _fails(capsys, *args):
  with pytest.raises(SystemExit) as exit_info:
    run(list(args))
  assert exit_info.value.code == 2
  return capsys.readouterr().err


def test_cli_writes_one_panel_per_prompt(workdir, image_file, tmp_path, capsys):
  path, _, _ = workdir
  out = str(tmp_path / "sub" / "heat.png")
  # Several prompts after one --text, as a user types them.
  run(["--workdir", path, "--image", image_file, "--text", *PROMPTS, "--out", out])
  printed = capsys.readouterr().out
  # 32-px crop -> 256-px panels (x8); 3 panels, 8-px margins, a 32-px caption band above.
  expected = (3 * 256 + 4 * 8, 8 + 32 + 256 + 8)
  assert heatmap.figure_size(3, 32) == expected
  # Small crops are enlarged by whole factors up to 256 px; bigger ones are drawn as they are.
  assert [heatmap.panel_size(s) for s in (32, 64, 100, 224, 336)] == [256, 256, 200, 224, 336]
  with Image.open(out) as figure:
    assert figure.format == "PNG" and figure.mode == "RGB" and figure.size == expected
    pixels = np.asarray(figure)
  assert f"Wrote {out}: 800x304 px, 3 panel(s)" in printed and f"step {STEP}" in printed
  # Each panel holds an image (not the white background) exactly where the layout puts it.
  for i in range(3):
    left = 8 + i * (256 + 8)
    panel = pixels[40:40 + 256, left:left + 256]
    assert (panel != 255).any(axis=-1).mean() > 0.9
    assert (pixels[40:40 + 256, left - 8:left] == 255).all()  # the margin before it


def test_maps_are_cosines_of_projected_patch_tokens(workdir, image_file):
  """Against a reference from the whole model's encode_image/encode_text, for both towers."""
  _, model, state = workdir
  image = heatmap.load_image(image_file)
  crop = heatmap.preprocess(image, 32)
  ids = tokenizer.tokenize(PROMPTS, 16)
  # Jitted: eager apply dispatches op by op and takes several times longer.
  encode_text = jax.jit(lambda p, t: model.apply({"params": p}, t, method=MaskCLIP.encode_text))
  encode_image = jax.jit(lambda p, x: model.apply({"params": p}, x,
                                                  method=MaskCLIP.encode_image))
  text, _ = encode_text(state["params"], ids)
  text = np.asarray(text) / np.linalg.norm(text, axis=-1, keepdims=True)
  maps = {}
  for tower, visual in (("online", state["params"]["visual"]),
                        ("teacher", state["teacher"]["visual"])):
    result = heatmap.heat_maps(model, state["params"], image, PROMPTS, teacher=state["teacher"],
                               image_tower_name=tower, features="tokens")
    params = dict(state["params"], visual=visual)
    pixels = normalization.normalize(crop[None])
    _, tokens = encode_image(params, pixels)
    patches = np.asarray(tokens)[0, 1:] @ np.asarray(visual["proj"])
    patches /= np.linalg.norm(patches, axis=-1, keepdims=True)
    reference = np.einsum("nd,pd->pn", patches, text).reshape(3, 4, 4)
    assert result.similarity.shape == (3, 4, 4) and result.upsampled.shape == (3, 32, 32)
    np.testing.assert_allclose(result.similarity, reference, atol=1e-5)
    np.testing.assert_array_equal(result.crop, crop)
    # Bilinear upsampling stays within the patch values.
    assert result.upsampled.min() >= reference.min() - 1e-6
    assert result.upsampled.max() <= reference.max() + 1e-6
    maps[tower] = result.similarity
  assert np.abs(maps["online"] - maps["teacher"]).max() > 1e-3


def _layer_norm(x, params):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * params["scale"] + params["bias"]


def _dense(x, params):
  return x @ params["kernel"] + params["bias"]


@pytest.mark.parametrize("features", ["values", "values_no_residual"])
def test_value_features_are_the_last_blocks_value_embedding(workdir, image_file, features):
  """MaskCLIP's features by hand, in numpy, from the last block's parameters and its input."""
  _, model, state = workdir
  image = heatmap.load_image(image_file)
  visual = jax.tree.map(np.asarray, state["teacher"]["visual"])
  result = heatmap.heat_maps(model, state["params"], image, PROMPTS, teacher=state["teacher"],
                             image_tower_name="teacher", features=features)
  assert result.features == features
  # The last block's input: the output of the one before it, as the unmodified tower computes.
  pixels = normalization.normalize(result.crop[None])
  _, captured = jax.jit(lambda p, x: image_tower(model).apply(
      {"params": p}, x, capture_intermediates=True, mutable=["intermediates"]))(visual, pixels)
  x = np.asarray(captured["intermediates"]["transformer"]["resblocks_0"]["__call__"][0])[0]
  block = visual["transformer"]["resblocks_1"]  # the tiny tower has 2 layers
  width = x.shape[-1]
  in_proj = block["attn"]["in_proj"]
  # The fused in_proj's outputs are [q | k | v], each `width` wide (heads inside each).
  value = _dense(_layer_norm(x, block["ln_1"]),
                 {"kernel": in_proj["kernel"][:, 2 * width:], "bias": in_proj["bias"][2 * width:]})
  out = _dense(value, block["attn"]["out_proj"])
  if features == "values":  # residual and MLP kept, as in MaskCLIP's released ViT code
    out = x + out
    hidden = _dense(_layer_norm(out, block["ln_2"]), block["mlp"]["c_fc"])
    out = out + _dense(0.5 * hidden * (1 + special.erf(hidden / np.sqrt(2))),
                       block["mlp"]["c_proj"])
  patches = _layer_norm(out, visual["ln_post"])[1:] @ visual["proj"]
  patches /= np.linalg.norm(patches, axis=-1, keepdims=True)
  text = heatmap.text_features(model, state["params"], PROMPTS)
  reference = np.einsum("nd,pd->pn", patches, text).reshape(3, 4, 4)
  np.testing.assert_allclose(result.similarity, reference, atol=1e-5)
  tokens = heatmap.heat_maps(model, state["params"], image, PROMPTS, teacher=state["teacher"],
                             image_tower_name="teacher", features="tokens")
  assert np.abs(result.similarity - tokens.similarity).max() > 1e-2


def test_value_features_of_a_scanned_tower(workdir):
  """config.model.scan_layers stacks the blocks: the same features from the stacked params."""
  _, model, state = workdir
  scanned = model.clone(scan_layers=True)
  visual = jax.tree.map(np.asarray, state["params"]["visual"])
  stacked = layer_layout.stack_layers(visual)
  assert "resblocks" in stacked["transformer"]
  # One crop, as heat_maps: the unrolled model's computations are then compiled already.
  crops = np.random.default_rng(2).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
  for features in ("values", "values_no_residual"):
    np.testing.assert_allclose(heatmap.patch_features(scanned, stacked, crops, features),
                               heatmap.patch_features(model, visual, crops, features),
                               atol=1e-5)


def test_default_image_tower_is_the_teacher_where_there_is_one(workdir):
  _, _, state = workdir
  params, teacher = state["params"], state["teacher"]
  assert heatmap.resolve_image_tower(teacher) == "teacher"
  assert heatmap.select_visual(params, teacher) is teacher["visual"]
  # Runs without a teacher (w_dist=0, pixel targets) keep none: the online tower, no error.
  for none in (None, {}):
    assert heatmap.resolve_image_tower(none) == "online"
    assert heatmap.select_visual(params, none) is params["visual"]
  assert heatmap.resolve_image_tower(teacher, "online") == "online"
  with pytest.raises(ValueError, match="no EMA image tower"):
    heatmap.select_visual(params, None, "teacher")
  image = np.zeros((32, 32, 3), np.uint8)
  config = make_tiny_config()
  model = build_model(config.model, config.maskclip)
  assert heatmap.heat_maps(model, params, image, ["a"]).image_tower == "online"
  assert heatmap.heat_maps(model, params, image, ["a"], teacher=teacher).image_tower == "teacher"


def test_preprocess_is_the_eval_geometry():
  """Shorter side to the size, centre crop; the same pixels as the tf.data eval transform up to
  resampling details (PIL antialiases and rounds)."""
  tf = pytest.importorskip("tensorflow")
  from maskclip_jax.data import preprocess as tf_preprocess  # pylint: disable=g-import-not-at-top
  yy, xx = np.mgrid[0:64, 0:96].astype(np.float32)
  image = np.stack([xx * 2.5, yy * 3.5, 128 + 60 * np.sin(xx / 7) * np.cos(yy / 5)], -1)
  image = np.clip(image, 0, 255).astype(np.uint8)
  ours = heatmap.preprocess(image, 32)
  png = tf.io.encode_png(image)
  theirs = tf_preprocess.decode_resize_center_crop(png, 32).numpy()
  assert ours.shape == theirs.shape == (32, 32, 3)
  assert np.abs(ours - theirs).mean() < 1.0
  same = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  np.testing.assert_array_equal(heatmap.preprocess(same, 32), same)


def test_colour_scales():
  np.testing.assert_array_equal(heatmap.colorize(np.array([0.0, 1.0])),
                                [[0, 0, 128], [128, 0, 0]])  # jet: dark blue .. dark red
  maps = np.array([[[0.0, 0.1]], [[0.2, 0.4]]])
  shared = heatmap.color_ranges(maps, "shared")
  np.testing.assert_allclose(shared, [[0.0, 0.4], [0.0, 0.4]])
  np.testing.assert_allclose(heatmap.to_unit(maps, shared), [[[0, 0.25]], [[0.5, 1]]])
  per_prompt = heatmap.color_ranges(maps, "per_prompt")
  np.testing.assert_allclose(heatmap.to_unit(maps, per_prompt), [[[0, 1]], [[0, 1]]])


def test_cli_features(workdir, image_file, tmp_path, capsys):
  path, _, _ = workdir
  # The CLI's copies (kept so that --help needs no jax) agree with the library's.
  assert heatmap_cli.FEATURES == heatmap.FEATURES
  assert heatmap_cli.DEFAULT_FEATURES == heatmap.DEFAULT_FEATURES
  assert heatmap_cli.SCALES == heatmap.SCALES
  maps = {}
  for features in ("values", "tokens"):
    out = str(tmp_path / f"{features}.png")
    run(["--workdir", path, "--image", image_file, "--text", "a", "--out", out,
         "--features", features])
    assert f", {features} features, " in capsys.readouterr().out
    maps[features] = np.asarray(Image.open(out))
  assert (maps["values"] != maps["tokens"]).any()
  out = str(tmp_path / "default.png")
  run(["--workdir", path, "--image", image_file, "--text", "a", "--out", out])
  printed = capsys.readouterr().out
  # The defaults are the ones that localise: value features without the last residual, on the
  # EMA teacher when the checkpoint has one.
  assert heatmap.DEFAULT_FEATURES == "values_no_residual"
  assert ", teacher image tower, " in printed
  assert f", {heatmap.DEFAULT_FEATURES} features, " in printed
  explicit = str(tmp_path / "explicit.png")
  run(["--workdir", path, "--image", image_file, "--text", "a", "--out", explicit,
       "--image-tower", "teacher", "--features", "values_no_residual"])
  capsys.readouterr()
  np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(explicit)))
  err = _fails(capsys, "--workdir", path, "--image", image_file, "--text", "a", "--out", out,
               "--features", "keys")
  assert "--features" in err and "invalid choice: 'keys'" in err
  with pytest.raises(ValueError, match="--features='keys' is unknown"):
    heatmap.heat_maps(None, {}, np.zeros((8, 8, 3), np.uint8), ["a"], features="keys")


def test_bad_inputs_fail_naming_them(workdir, image_file, tmp_path, capsys):
  path, _, _ = workdir
  out = str(tmp_path / "heat.png")
  missing = str(tmp_path / "nope.jpg")
  err = _fails(capsys, "--workdir", path, "--image", missing, "--text", "a", "--out", out)
  assert f"--image={missing}: cannot read it as an image" in err
  not_an_image = tmp_path / "notes.png"
  not_an_image.write_text("hello")
  err = _fails(capsys, "--workdir", path, "--image", str(not_an_image), "--text", "a",
               "--out", out)
  assert f"--image={not_an_image}: cannot read it as an image" in err
  err = _fails(capsys, "--workdir", path, "--image", image_file, "--text", "a dog", " ",
               "--out", out)
  assert "--text: prompt(s) number [2] are empty" in err
  err = _fails(capsys, "--workdir", str(tmp_path / "norun"), "--image", image_file,
               "--text", "a", "--out", out)
  assert "norun does not exist" in err
  bare = str(tmp_path / "bare")
  checkpoint.write_config(bare, make_tiny_config())
  err = _fails(capsys, "--workdir", bare, "--image", image_file, "--text", "a", "--out", out)
  assert f"--workdir={bare} has no checkpoint" in err
  err = _fails(capsys, "--workdir", path, "--step", "99", "--image", image_file,
               "--text", "a", "--out", out)
  assert "step 99" in err and str(STEP) in err
  assert "--text" in _fails(capsys, "--workdir", path, "--image", image_file, "--out", out)
  assert not os.path.exists(out)


def test_the_command_never_imports_tensorflow(workdir, image_file, tmp_path):
  """torch users run it next to torch; tensorflow imported after torch crashes."""
  path, _, _ = workdir
  out = str(tmp_path / "heat.png")
  code = ("import sys\nfrom maskclip_jax.cli.heatmap import run\n"
          f"run(['--workdir', {path!r}, '--image', {image_file!r}, '--text', 'a', "
          f"'--text', 'b', '--out', {out!r}, '--scale', 'shared'])\n"
          "tf = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')\n"
          "assert not tf, tf\n")
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  with Image.open(out) as figure:
    assert figure.size == heatmap.figure_size(2, 32)
