"""Export parity with open_clip, Hugging Face and timm at ViT-Ti/16 and ViT-S/16, 224 px.

Random parameters -> export to open_clip, Hugging Face and timm -> load each with the library's
own loader -> the same image and text embeddings (and timm's pre-logits features) as ours, to
1e-4 in f32; strict loading; an exact round trip through open_clip; equal tokenizer ids.
Every parameter is random (biases and LayerNorm offsets too), so a misplaced tensor shows.
The towers run in the scanned layout here (one compiled block per tower keeps the test fast);
test_export_open_clip.py checks that both layouts export the same state dict.
"""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below must load from local files

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

from maskclip_jax import export, normalization  # noqa: E402
from maskclip_jax.config_defaults import base_config  # noqa: E402
from maskclip_jax.data.tokenizer import EOT_ID, ClipTokenizer  # noqa: E402
from maskclip_jax.export.import_open_clip import expected_clip_shapes  # noqa: E402
from maskclip_jax.export.open_clip_names import flatten, unflatten  # noqa: E402
from maskclip_jax.models.layer_layout import stack_layers  # noqa: E402
from maskclip_jax.models.maskclip import MaskCLIP, build_model  # noqa: E402

TOLERANCE = 1e-4
CAPTIONS = [
    "a photo of a cat", "Two dogs playing in the snow!", "a red circle on the left",
    "Café au lait in Paris", "东京タワーの夜景 🦆", "Tom &amp; Jerry",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 12),  # truncated at 77
    "",
]


def random_clip_params(config, seed):
  """Random {visual, text, logit_scale} in the config's layout, at init-like scales, with no
  parameter left at a constant (zero biases or unit LayerNorm scales would hide a swap)."""
  rng = np.random.default_rng(seed)
  params = {}
  for path, shape in expected_clip_shapes(config).items():
    if path[-1] == "scale":
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    elif path[-1] == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      value = rng.standard_normal(shape) / np.sqrt(fan_in)
    elif path == ("logit_scale",):
      value = np.log(1 / 0.07) + rng.standard_normal(shape)
    elif path[-1] in ("proj", "text_projection", "class_embedding"):
      value = rng.standard_normal(shape) * shape[0] ** -0.5
    else:  # biases, token and position embeddings
      value = 0.05 * rng.standard_normal(shape)
    params[path] = value.astype(np.float32)
  tree = unflatten(params)
  return stack_layers(tree) if config.model.scan_layers else tree


def _max_diff(torch_out, ours) -> float:
  if hasattr(torch_out, "pooler_output"):  # transformers >= 5 returns a model output
    torch_out = torch_out.pooler_output
  return float(np.abs(torch_out.detach().numpy() - np.asarray(ours)).max())


class Exported:
  """One size's params, our outputs on fixed inputs, and its three export directories."""

  def __init__(self, size, tmp_dir):
    config = base_config()
    config.model.size = size
    config.model.scan_layers = True
    config.maskclip.w_dist = 0.0  # the CLIP towers are all that is exported
    config.maskclip.w_mlm = 0.0
    self.size, self.config = size, config
    self.arch = export.clip_architecture(config)
    self.params = random_clip_params(config, seed=len(size))
    model = build_model(config.model, config.maskclip)
    rng = np.random.default_rng(0)
    s = self.arch.vision.image_size
    self.images = rng.normal(size=(4, s, s, 3)).astype(np.float32)
    self.text = ClipTokenizer(context_length=self.arch.text.context_length)(CAPTIONS)
    encode_image = jax.jit(lambda p, x: model.apply({"params": p}, x,
                                                    method=MaskCLIP.encode_image))
    encode_text = jax.jit(lambda p, t: model.apply({"params": p}, t,
                                                   method=MaskCLIP.encode_text))
    self.image_embedding, image_tokens = encode_image(self.params, self.images)
    self.image_features = image_tokens[:, 0]  # ln_post class token, before `proj`
    self.text_embedding, _ = encode_text(self.params, self.text)
    self.images_nchw = torch.from_numpy(self.images).permute(0, 3, 1, 2)
    self.text_ids = torch.from_numpy(self.text).long()

    clip = export.clip_params_for_export(self.params)
    self.open_clip_dir = str(tmp_dir / "open_clip")
    self.hf_dir = str(tmp_dir / "hf")
    self.timm_dir = str(tmp_dir / "timm")
    export.export_open_clip(clip, self.arch, self.open_clip_dir, dict(step=0))
    export.export_hf(clip, self.arch, self.hf_dir)
    export.export_timm(clip, self.arch, self.timm_dir, dict(step=0))


@pytest.fixture(scope="module", params=["ViT-Ti/16", "ViT-S/16"])
def exported(request, tmp_path_factory):
  return Exported(request.param, tmp_path_factory.mktemp(request.param.replace("/", "")))


def test_open_clip_local_dir_gives_our_embeddings(exported):
  model, _, preprocess = open_clip.create_model_and_transforms(
      f"local-dir:{exported.open_clip_dir}")
  model.eval()
  with torch.no_grad():
    image_diff = _max_diff(model.encode_image(exported.images_nchw), exported.image_embedding)
    text_diff = _max_diff(model.encode_text(exported.text_ids), exported.text_embedding)
  print(f"\n{exported.size} open_clip max |diff|: image {image_diff:.2e}, text {text_diff:.2e}")
  assert image_diff <= TOLERANCE and text_diff <= TOLERANCE
  assert model.logit_scale.item() == pytest.approx(float(exported.params["logit_scale"]))
  # The eval transform is ours: shorter side to the image size, centre crop, CLIP mean/std.
  size = exported.arch.vision.image_size
  assert tuple(np.broadcast_to(model.visual.preprocess_cfg["size"], 2)) == (size, size)
  assert model.visual.preprocess_cfg["resize_mode"] == "shortest"
  assert tuple(model.visual.preprocess_cfg["mean"]) == pytest.approx(normalization.CLIP_MEAN)


def test_open_clip_files_load_strictly(exported):
  with open(os.path.join(exported.open_clip_dir, "open_clip_config.json")) as f:
    saved = json.load(f)
  assert set(saved) >= {"model_cfg", "preprocess_cfg"}
  assert saved["model_cfg"]["quick_gelu"] is False
  from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel
  from_bin = torch.load(os.path.join(exported.open_clip_dir, "open_clip_pytorch_model.bin"),
                        weights_only=True)
  from_safetensors = load_file(os.path.join(exported.open_clip_dir,
                                            "open_clip_model.safetensors"))
  assert from_bin.keys() == from_safetensors.keys()
  for state_dict in (from_bin, from_safetensors):
    model = open_clip.CLIP(**saved["model_cfg"])
    result = model.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
  for key, value in from_bin.items():
    assert torch.equal(value, from_safetensors[key]), key


def test_hf_from_pretrained_gives_our_embeddings(exported):
  model, info = transformers.CLIPModel.from_pretrained(exported.hf_dir, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert not info.get("mismatched_keys")
  assert model.config.vision_config.hidden_act == "gelu"  # exact, not OpenAI's quick_gelu
  assert model.config.text_config.hidden_act == "gelu"
  model.eval()
  with torch.no_grad():
    image_diff = _max_diff(model.get_image_features(pixel_values=exported.images_nchw),
                           exported.image_embedding)
    text_diff = _max_diff(model.get_text_features(input_ids=exported.text_ids),
                          exported.text_embedding)
    outputs = model(input_ids=exported.text_ids, pixel_values=exported.images_nchw)
  print(f"\n{exported.size} HF max |diff|: image {image_diff:.2e}, text {text_diff:.2e}")
  assert image_diff <= TOLERANCE and text_diff <= TOLERANCE
  assert model.logit_scale.item() == pytest.approx(float(exported.params["logit_scale"]))
  # The forward pass's normalised embeddings are ours normalised.
  ours = np.asarray(exported.image_embedding)
  ours = ours / np.linalg.norm(ours, axis=-1, keepdims=True)
  assert np.abs(outputs.image_embeds.numpy() - ours).max() <= TOLERANCE


def test_hf_processor_tokenizes_like_ours(exported):
  processor = transformers.CLIPProcessor.from_pretrained(exported.hf_dir)
  # HF's normaliser has no ftfy/HTML unescaping (see to_hf.py): compare on plain captions.
  plain = [c for c in CAPTIONS if c.isascii() and "&" not in c]
  context = exported.arch.text.context_length
  ours = ClipTokenizer(context_length=context)(plain)
  theirs = processor.tokenizer(plain, padding="max_length", truncation=True,
                               max_length=context, return_tensors="np")["input_ids"]
  for our_ids, their_ids in zip(ours, theirs):
    length = int(np.argmax(our_ids == EOT_ID)) + 1  # up to and including EOT; padding differs
    np.testing.assert_array_equal(their_ids[:length], our_ids[:length])
  model = transformers.CLIPModel.from_pretrained(exported.hf_dir).eval()
  with torch.no_grad():
    features = model.get_text_features(input_ids=torch.from_numpy(theirs).long())
  rows = [CAPTIONS.index(c) for c in plain]
  assert _max_diff(features, np.asarray(exported.text_embedding)[rows]) <= TOLERANCE


def test_timm_local_dir_gives_our_image_embedding_and_features(exported):
  model = timm.create_model(f"local-dir:{exported.timm_dir}", pretrained=True).eval()
  with torch.no_grad():
    embedding_diff = _max_diff(model(exported.images_nchw), exported.image_embedding)
    features = model.forward_head(model.forward_features(exported.images_nchw),
                                  pre_logits=True)
    features_diff = _max_diff(features, exported.image_features)
  print(f"\n{exported.size} timm max |diff|: embedding {embedding_diff:.2e}, "
        f"pre-logits {features_diff:.2e}")
  assert embedding_diff <= TOLERANCE and features_diff <= TOLERANCE


def test_timm_files_load_strictly_into_the_named_architecture(exported):
  with open(os.path.join(exported.timm_dir, "config.json")) as f:
    saved = json.load(f)
  assert saved["architecture"] == "vit_base_patch16_clip_224"
  assert saved["pretrained_cfg"]["tag"] == "maskclip_jax"
  model = timm.create_model(saved["architecture"], **saved["model_args"])
  from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel
  result = model.load_state_dict(load_file(os.path.join(exported.timm_dir,
                                                        "model.safetensors")), strict=True)
  assert not result.missing_keys and not result.unexpected_keys


def test_round_trip_through_open_clip_is_exact(exported):
  model = open_clip.create_model(f"local-dir:{exported.open_clip_dir}")
  imported = export.from_open_clip(model.state_dict(), exported.config)
  ours = dict(flatten(exported.params))
  theirs = dict(flatten(imported))
  assert ours.keys() == theirs.keys()
  for path, value in ours.items():
    assert theirs[path].dtype == np.float32
    np.testing.assert_array_equal(theirs[path], value, err_msg="/".join(path))


def test_open_clip_tokenizer_ids_equal_ours(exported):
  tokenizer = open_clip.get_tokenizer(f"local-dir:{exported.open_clip_dir}")
  ours = ClipTokenizer(context_length=exported.arch.text.context_length)(CAPTIONS)
  np.testing.assert_array_equal(tokenizer(CAPTIONS).numpy(), ours)
