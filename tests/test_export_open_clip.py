"""open_clip export/import mechanics on the tiny model: both layer layouts, the train state's
extra collections, the teacher tower, checkpoint files, and errors that name the problem."""
import sys
import warnings

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from maskclip_jax import export  # noqa: E402
from maskclip_jax.config_defaults import base_config  # noqa: E402
from maskclip_jax.export import import_open_clip  # noqa: E402
from maskclip_jax.export.open_clip_names import flatten  # noqa: E402
from maskclip_jax.models.layer_layout import stack_layers, unstack_layers  # noqa: E402
from maskclip_jax.models.maskclip import build_model  # noqa: E402
from conftest import REPO, fresh_train_state, make_tiny_config, randomised  # noqa: E402


def _train_state(config, seed=0):
  _, state = fresh_train_state(config, seed)
  return dict(state, params=randomised(state["params"], seed),
              teacher=randomised(state["teacher"], seed + 1))


@pytest.fixture(scope="module")
def unrolled_state():
  return _train_state(make_tiny_config())


def _assert_trees_equal(a, b):
  a, b = dict(flatten(a)), dict(flatten(b))
  assert a.keys() == b.keys()
  for path in a:
    np.testing.assert_array_equal(np.asarray(a[path]), np.asarray(b[path]),
                                  err_msg="/".join(path))


def test_layer_layouts_convert_both_ways(unrolled_state):
  visual = jax.tree.map(np.asarray, unrolled_state["params"]["visual"])
  stacked = stack_layers(visual)
  assert "resblocks_0" not in stacked["transformer"]
  assert stacked["transformer"]["resblocks"]["block"]["ln_1"]["scale"].shape == (2, 32)
  _assert_trees_equal(unstack_layers(stacked), visual)
  _assert_trees_equal(unstack_layers(visual), visual)  # unrolled passes through


def test_scanned_checkpoint_exports_the_same_state_dict(unrolled_state):
  params = unrolled_state["params"]
  scanned = dict(params, visual=stack_layers(jax.tree.map(np.asarray, params["visual"])),
                 text=stack_layers(jax.tree.map(np.asarray, params["text"])))
  a = export.open_clip_state_dict(export.clip_params_for_export(params))
  b = export.open_clip_state_dict(export.clip_params_for_export(scanned))
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_export_leaves_out_the_distillation_parts(unrolled_state):
  assert {"image_decoder", "codeword_head", "text_decoder", "text_mask_embedding"} <= set(
      unrolled_state["params"])
  clip = export.clip_params_for_export(unrolled_state["params"], unrolled_state["teacher"])
  assert set(clip) == {"visual", "text", "logit_scale"}
  state_dict = export.open_clip_state_dict(clip)
  model = open_clip.CLIP(**export.to_open_clip.open_clip_model_config(
      export.clip_architecture(make_tiny_config())))
  assert set(state_dict) == set(model.state_dict())


def test_teacher_image_tower_is_selectable(unrolled_state):
  params, teacher = unrolled_state["params"], unrolled_state["teacher"]
  online = export.clip_params_for_export(params, teacher, "online")
  ema = export.clip_params_for_export(params, teacher, "teacher")
  _assert_trees_equal(ema["visual"], teacher["visual"])
  _assert_trees_equal(online["visual"], params["visual"])
  _assert_trees_equal(ema["text"], params["text"])  # the teacher is an image tower only
  with pytest.raises(ValueError, match="no EMA image tower.*--image-tower=online"):
    export.clip_params_for_export(params, {}, "teacher")


@pytest.mark.parametrize("scan_layers", [False, True])
def test_from_open_clip_gives_the_configured_layout_exactly(unrolled_state, scan_layers):
  config = make_tiny_config()
  config.model.scan_layers = scan_layers
  clip = export.clip_params_for_export(unrolled_state["params"])
  imported = export.from_open_clip(export.open_clip_state_dict(clip), config)
  # The layout the model itself creates for this config.
  model = build_model(config.model, config.maskclip)
  v, t = model.vision, model.text_spec
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), np.zeros((1, v.image_size, v.image_size, 3), np.float32),
      np.zeros((1, t.context_length), np.int32),
      method=lambda m, i, x: (m.encode_image(i), m.encode_text(x))))["params"]
  expected = {name: shapes[name] for name in ("visual", "text", "logit_scale")}
  assert jax.tree.structure(imported) == jax.tree.structure(expected)
  assert jax.tree.map(np.shape, imported) == jax.tree.map(lambda s: s.shape, expected)
  _assert_trees_equal(unstack_layers(imported), clip)


def test_load_open_clip_checkpoint_reads_every_file_kind(unrolled_state, tmp_path):
  config = make_tiny_config()
  clip = export.clip_params_for_export(unrolled_state["params"])
  out = tmp_path / "open_clip"
  export.export_open_clip(clip, export.clip_architecture(config), str(out))
  tensors = torch.load(out / "open_clip_pytorch_model.bin", weights_only=True)
  # open_clip's training checkpoints: {'epoch', 'state_dict' with DDP's 'module.' prefix, ...}
  torch.save(dict(epoch=3, state_dict={f"module.{k}": v for k, v in tensors.items()}),
             tmp_path / "epoch_3.pt")
  # CustomTextCLIP's layout keeps the text tower under `text.`.
  custom_text = {(f"text.{k}" if not k.startswith(("visual.", "logit_scale")) else k): v
                 for k, v in tensors.items()}
  torch.save(custom_text, tmp_path / "custom_text.bin")
  # OpenAI's checkpoints are TorchScript archives (made here by tracing open_clip's model).
  model = open_clip.create_model(f"local-dir:{out}").eval()
  size, context = config.model.vision.image_size, config.model.text.context_length
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # tracer warnings, and torch.jit's deprecation notice
    traced = torch.jit.trace(model, (torch.zeros(1, 3, size, size),
                                     torch.zeros(1, context, dtype=torch.long)),
                             strict=False, check_trace=False)
    torch.jit.save(traced, str(tmp_path / "openai_style.pt"))
  for path in (f"openclip:{out}", str(out / "open_clip_model.safetensors"),
               str(out / "open_clip_pytorch_model.bin"), str(tmp_path / "epoch_3.pt"),
               str(tmp_path / "custom_text.bin"), str(tmp_path / "openai_style.pt")):
    _assert_trees_equal(unstack_layers(export.load_open_clip_checkpoint(path, config)), clip)


def test_from_open_clip_names_a_size_mismatch(unrolled_state):
  state_dict = export.open_clip_state_dict(
      export.clip_params_for_export(unrolled_state["params"]))
  config = make_tiny_config()
  config.model.vision.width = 64
  with pytest.raises(ValueError) as error:
    export.from_open_clip(state_dict, config)
  message = str(error.value)
  assert "config.model.size=None (vision: 32 px, patch 8, width 64" in message
  assert "visual.conv1.weight (32, 3, 8, 8)" in message
  assert "config.model.size" in message  # the fix


def test_from_open_clip_rejects_unknown_and_missing_keys(unrolled_state):
  state_dict = export.open_clip_state_dict(
      export.clip_params_for_export(unrolled_state["params"]))
  siglip_like = dict(state_dict, logit_bias=np.zeros((), np.float32))
  with pytest.raises(ValueError, match=r"unexpected \['logit_bias'\]"):
    export.from_open_clip(siglip_like, make_tiny_config())
  del state_dict["visual.ln_post.bias"]
  with pytest.raises(ValueError, match=r"missing \['visual.ln_post.bias'\]"):
    export.from_open_clip(state_dict, make_tiny_config())


def test_torch_pickles_refuse_to_load_after_tensorflow(monkeypatch):
  # Importing torch after tensorflow crashes: the loader must say so instead of importing it.
  monkeypatch.delitem(sys.modules, "torch")
  monkeypatch.setitem(sys.modules, "tensorflow", object())
  with pytest.raises(RuntimeError, match="Import torch before tensorflow"):
    import_open_clip.read_state_dict("/nonexistent/model.bin")


def test_export_package_imports_neither_torch_nor_tensorflow():
  import subprocess  # pylint: disable=import-outside-toplevel
  code = ("import sys, maskclip_jax.export, maskclip_jax.cli.export; "
          "print(sorted(m for m in ('torch', 'tensorflow', 'open_clip', 'timm', 'transformers')"
          " if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=REPO)
  assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("size, builtin", [
    ("ViT-S/16", "ViT-S-16"), ("ViT-B/16", "ViT-B-16"), ("ViT-L/14", "ViT-L-14"),
    ("ViT-Ti/16", None)])
def test_sizes_open_clip_ships_are_recognised(size, builtin):
  config = base_config()
  config.model.size = size
  model_cfg = export.to_open_clip.open_clip_model_config(export.clip_architecture(config))
  assert export.to_open_clip.builtin_open_clip_name(model_cfg) == builtin
