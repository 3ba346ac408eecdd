"""Import an open_clip (or OpenAI CLIP) checkpoint as our CLIP params, to initialise a run.

`config.init_from=openclip:PATH` -> `load_open_clip_checkpoint(PATH, config)`, which returns
{visual, text, logit_scale} in the layer layout the config asks for; the trainer puts them in
place of the freshly initialised ones (the distillation decoders and heads stay as initialised,
and an EMA teacher starts as a copy of the imported image tower).

OpenAI's checkpoints were trained with QuickGELU and ours is exact GELU: the weights load, but
the imported model's outputs differ slightly from OpenAI's until fine-tuning adapts them.
"""
import os
import sys
import zipfile
from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maskclip_jax.export.architecture import clip_architecture
from maskclip_jax.export.open_clip_names import (CLIP_COLLECTIONS, flatten, from_torch_layout,
                                                 is_kernel, open_clip_key, unflatten)
from maskclip_jax.export.to_open_clip import WEIGHTS_BIN, WEIGHTS_SAFETENSORS
from maskclip_jax.models.layer_layout import stack_layers
from maskclip_jax.models.maskclip import build_model

OPENCLIP_PREFIX = "openclip:"
# Entries that are not parameters: the metadata of OpenAI's TorchScript state dicts, and the
# causal mask, which TorchScript archives keep even where open_clip does not save it.
_NOT_PARAMETERS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; bf16/fp16 have no numpy dtype, so go via f32
    return value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def _normalise_keys(state_dict: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Unwraps training checkpoints and DDP prefixes, folds CustomTextCLIP's `text.` module into
  CLIP's top level, drops entries that are not parameters; values become float32 numpy."""
  if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
    state_dict = state_dict["state_dict"]  # open_clip's training checkpoints
  keys = list(state_dict)
  if keys and all(key.startswith("module.") for key in keys):
    state_dict = {key[len("module."):]: value for key, value in state_dict.items()}
  if "text.token_embedding.weight" in state_dict and "token_embedding.weight" not in state_dict:
    state_dict = {key[len("text."):] if key.startswith("text.") else key: value
                  for key, value in state_dict.items()}
  return {key: _to_numpy(value) for key, value in state_dict.items()
          if key not in _NOT_PARAMETERS}


def expected_clip_shapes(config: ml_collections.ConfigDict) -> Dict[tuple, tuple]:
  """Our CLIP parameters (unrolled layout) -> shape, as the model itself creates them."""
  unrolled = config.copy_and_resolve_references()
  with unrolled.unlocked():
    unrolled.model.scan_layers = False
    unrolled.model.remat = "none"
  model = build_model(unrolled.model, unrolled.maskclip)
  v, t = model.vision, model.text_spec
  images = jax.ShapeDtypeStruct((1, v.image_size, v.image_size, 3), jnp.float32)
  text = jax.ShapeDtypeStruct((1, t.context_length), jnp.int32)

  def init_towers(images, text):
    return model.init(jax.random.PRNGKey(0), images, text,
                      method=lambda m, i, x: (m.encode_image(i), m.encode_text(x)))

  params = jax.eval_shape(init_towers, images, text)["params"]
  clip = {name: params[name] for name in CLIP_COLLECTIONS}
  return {path: tuple(leaf.shape) for path, leaf in flatten(clip)}


def from_open_clip(state_dict: Mapping[str, Any],
                   config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """An open_clip `CLIP` / OpenAI CLIP state dict -> our {visual, text, logit_scale} params.

  The config says the size (it must be the checkpoint's) and the layer layout
  (`config.model.scan_layers`). Fails naming every missing, unexpected or mis-shaped key.
  """
  arch = clip_architecture(config)
  arrays = _normalise_keys(state_dict)
  converted, missing, mismatched, used = {}, [], [], set()
  for path, shape in expected_clip_shapes(config).items():
    key = open_clip_key(path)
    if key not in arrays:
      missing.append(key)
      continue
    used.add(key)
    array = from_torch_layout(arrays[key], is_kernel(path))
    if path == ("logit_scale",):
      array = array.reshape(())  # some open_clip variants store it as shape (1,)
    if array.shape != shape:
      mismatched.append(f"{key} {tuple(arrays[key].shape)} (ours would be {shape})")
      continue
    converted[path] = array
  unexpected = sorted(set(arrays) - used)
  if missing or unexpected or mismatched:
    raise ValueError(
        f"the checkpoint is not an open_clip CLIP of the configured size {arch.describe()}: "
        f"missing {missing[:5]}, unexpected {unexpected[:5]}, mis-shaped {mismatched[:5]} "
        f"(first 5 of each; {len(missing)}, {len(unexpected)}, {len(mismatched)} in all). "
        "Set config.model.size (or its fields) to the checkpoint's architecture; open_clip "
        "models with a timm or Hugging Face tower, SigLIP or CoCa have no counterpart here.")
  params = unflatten(converted)
  return stack_layers(params) if config.model.scan_layers else params


def _torch_pickle_guard(path: str) -> None:
  if "torch" not in sys.modules and "tensorflow" in sys.modules:
    raise RuntimeError(
        f"{path} is a PyTorch pickle, and tensorflow is already imported in this process: "
        "importing torch after tensorflow crashes. Import torch before tensorflow at the top of "
        "the entry point, or convert the checkpoint to .safetensors, which loads without torch.")


def _is_torchscript(path: str) -> bool:
  """TorchScript archives are zip files with a `constants.pkl`; torch.save's are not."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    return any(name.endswith("/constants.pkl") for name in archive.namelist())


def read_state_dict(path: str) -> Mapping[str, Any]:
  """A .safetensors file (read without torch), a torch pickle, or an OpenAI TorchScript file."""
  if path.endswith(".safetensors"):
    import safetensors.numpy  # pylint: disable=import-outside-toplevel
    return safetensors.numpy.load_file(path)
  _torch_pickle_guard(path)
  import torch  # pylint: disable=import-outside-toplevel
  if _is_torchscript(path):  # OpenAI's released checkpoints (ViT-B-16.pt, ...)
    loaded = torch.jit.load(path, map_location="cpu").state_dict()
  else:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(loaded, Mapping):
    raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict.")
  return loaded


def load_open_clip_checkpoint(path: str, config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """`openclip:PATH` (or PATH) -> our CLIP params for `config`; see `from_open_clip`.

  PATH is an open_clip checkpoint file (.safetensors, .bin, .pt, training checkpoints with a
  'state_dict' entry, OpenAI's TorchScript .pt) or an open_clip export directory.
  """
  path = str(path)
  if path.startswith(OPENCLIP_PREFIX):
    path = path[len(OPENCLIP_PREFIX):]
  if os.path.isdir(path):
    candidates = [os.path.join(path, name) for name in (WEIGHTS_SAFETENSORS, WEIGHTS_BIN)]
    found = [candidate for candidate in candidates if os.path.isfile(candidate)]
    if not found:
      raise FileNotFoundError(f"{path} holds neither {WEIGHTS_SAFETENSORS} nor {WEIGHTS_BIN}.")
    path = found[0]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config.init_from: no open_clip checkpoint at {path}.")
  return from_open_clip(read_state_dict(path), config)
