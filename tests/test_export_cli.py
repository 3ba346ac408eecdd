"""maskclip-export end to end: a workdir's checkpoint -> each target, through the CLI."""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

from conftest import fresh_train_state, make_tiny_config, random_batch, randomised  # noqa: E402
from maskclip_jax import checkpoint, export  # noqa: E402
from maskclip_jax.cli.export import run  # noqa: E402
from maskclip_jax.export.open_clip_names import flatten  # noqa: E402
from maskclip_jax.models.layer_layout import unstack_layers  # noqa: E402
from maskclip_jax.models.maskclip import MaskCLIP, build_model  # noqa: E402

STEP = 7


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tiny MaskCLIP run's workdir (all branches, EMA teacher), checkpointed at STEP; its
  teacher differs from the online tower so the two exports can be told apart."""
  config = make_tiny_config()
  config.model.scan_layers = True  # the trainer's fast layout; export unrolls it
  _, state = fresh_train_state(config)
  state = dict(state, params=randomised(state["params"], 1),
               teacher=randomised(state["teacher"], 2))
  path = str(tmp_path_factory.mktemp("run"))
  checkpoint.save_state(path, STEP, state, config)
  return path, config, state


def _export(capsys, *args):
  run(list(args))
  return capsys.readouterr().out


def _export_fails(capsys, *args):
  with pytest.raises(SystemExit) as exit_info:
    run(list(args))
  assert exit_info.value.code == 2
  return capsys.readouterr().err


def test_open_clip_export_of_a_workdir_gives_our_embeddings(workdir, tmp_path, capsys):
  path, config, state = workdir
  out = str(tmp_path / "open_clip")
  printed = _export(capsys, "--workdir", path, "--to", "open_clip", "--out", out)
  assert f'create_model_and_transforms("local-dir:{out}")' in printed
  with open(os.path.join(out, "open_clip_config.json")) as f:
    provenance = json.load(f)["maskclip_jax"]
  assert provenance["step"] == STEP and provenance["image_tower"] == "online"

  model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
  model.eval()
  batch = random_batch(0, image_size=32, context_length=16)
  ours = build_model(config.model, config.maskclip)
  encode_image = jax.jit(lambda p, x: ours.apply({"params": p}, x, method=MaskCLIP.encode_image))
  encode_text = jax.jit(lambda p, t: ours.apply({"params": p}, t, method=MaskCLIP.encode_text))
  image_embedding, _ = encode_image(state["params"], batch["image"])
  text_embedding, _ = encode_text(state["params"], batch["text"])
  with torch.no_grad():
    torch_image = model.encode_image(torch.from_numpy(batch["image"]).permute(0, 3, 1, 2))
    torch_text = model.encode_text(torch.from_numpy(batch["text"]).long())
  assert np.abs(torch_image.numpy() - np.asarray(image_embedding)).max() <= 1e-4
  assert np.abs(torch_text.numpy() - np.asarray(text_embedding)).max() <= 1e-4


def test_teacher_export_carries_the_ema_image_tower(workdir, tmp_path, capsys):
  path, config, state = workdir
  out = str(tmp_path / "teacher")
  _export(capsys, "--workdir", path, "--to", "open_clip", "--out", out,
          "--image-tower", "teacher", "--step", str(STEP))
  imported = export.load_open_clip_checkpoint(out, config)
  for name, expected in (("visual", state["teacher"]["visual"]), ("text", state["params"]["text"])):
    ours = dict(flatten(unstack_layers(jax.tree.map(np.asarray, expected))))
    theirs = dict(flatten(unstack_layers(imported[name])))
    assert ours.keys() == theirs.keys()
    for key in ours:
      np.testing.assert_array_equal(theirs[key], ours[key], err_msg=f"{name}/{key}")


def test_hf_export_of_a_workdir_loads_with_no_missing_keys(workdir, tmp_path, capsys):
  path, _, _ = workdir
  out = str(tmp_path / "hf")
  printed = _export(capsys, "--workdir", path, "--to", "hf", "--out", out)
  assert f'CLIPModel.from_pretrained("{out}")' in printed
  _, info = transformers.CLIPModel.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]


def test_timm_export_of_a_size_timm_lacks_fails_naming_the_size(workdir, tmp_path, capsys):
  path, _, _ = workdir
  out = tmp_path / "timm"
  err = _export_fails(capsys, "--workdir", path, "--to", "timm", "--out", str(out))
  assert "config.model.size=None (vision: 32 px, patch 8, width 32" in err
  assert "has no timm architecture" in err and "--to open_clip" in err
  assert not out.exists()


def test_a_missing_step_and_a_used_out_dir_are_refused(workdir, tmp_path, capsys):
  path, _, _ = workdir
  err = _export_fails(capsys, "--workdir", path, "--step", "3", "--to", "open_clip",
                      "--out", str(tmp_path / "a"))
  assert "step 3" in err and str(STEP) in err
  used = tmp_path / "used"
  used.mkdir()
  (used / "keep.txt").write_text("mine")
  err = _export_fails(capsys, "--workdir", path, "--to", "hf", "--out", str(used))
  assert "is not empty" in err and "--overwrite" in err


def test_export_without_pytorch_says_how_to_install_it(workdir, tmp_path, capsys,
                                                       monkeypatch):
  # The main install (`pip install -e .`) has no torch: the export names the extra to install.
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as if absent
  path, _, _ = workdir
  err = _export_fails(capsys, "--workdir", path, "--to", "open_clip",
                      "--out", str(tmp_path / "out"))
  assert "needs PyTorch" in err and '.[torch]' in err
  assert not (tmp_path / "out").exists()
