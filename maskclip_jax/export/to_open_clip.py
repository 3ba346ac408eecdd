"""Export to open_clip: the state dict of open_clip's `CLIP` plus `open_clip_config.json`.

The directory loads with `open_clip.create_model_and_transforms("local-dir:DIR")`, and its
`model_cfg` builds the same model with `open_clip.CLIP(**model_cfg)`. The file names are the
ones open_clip's Hugging Face Hub integration reads and writes.
"""
import json
import pathlib
from typing import Any, Dict, Optional

import numpy as np

from maskclip_jax.export.architecture import EVAL_INTERPOLATION, ClipArchitecture
from maskclip_jax.export.open_clip_names import (flatten, is_kernel, open_clip_key,
                                                 to_torch_layout)
from maskclip_jax.export.strict_load import load_strict
from maskclip_jax.normalization import CLIP_MEAN, CLIP_STD

WEIGHTS_BIN = "open_clip_pytorch_model.bin"
WEIGHTS_SAFETENSORS = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"


def open_clip_state_dict(clip_params: Dict[str, Any]) -> Dict[str, np.ndarray]:
  """Our unrolled {visual, text, logit_scale} -> open_clip CLIP keys, in torch layouts."""
  state_dict = {}
  for path, array in flatten(clip_params):
    key = open_clip_key(path)
    if key in state_dict:
      raise ValueError(f"two parameters map to open_clip's {key!r} (the second is "
                       f"{'/'.join(path)}): are scanned and unrolled layers mixed?")
    state_dict[key] = to_torch_layout(np.asarray(array, np.float32), is_kernel(path))
  return state_dict


def open_clip_model_config(arch: ClipArchitecture) -> Dict[str, Any]:
  """open_clip's `model_cfg` (the layout of its model_configs/*.json) for our towers."""
  v, t = arch.vision, arch.text
  return dict(
      embed_dim=arch.embed_dim,
      # Ours is exact (erf) GELU, open_clip's default; written out so nobody has to guess.
      quick_gelu=False,
      vision_cfg=dict(image_size=v.image_size, layers=v.layers, width=v.width,
                      head_width=v.width // v.heads, mlp_ratio=v.mlp_ratio,
                      patch_size=v.patch_size),
      text_cfg=dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width,
                    heads=t.heads, layers=t.layers, mlp_ratio=t.mlp_ratio),
  )


def open_clip_preprocess_config(arch: ClipArchitecture) -> Dict[str, Any]:
  """The evaluation preprocessing of our input pipeline, as open_clip's `preprocess_cfg`."""
  return dict(size=arch.vision.image_size, mode="RGB", mean=list(CLIP_MEAN),
              std=list(CLIP_STD), interpolation=EVAL_INTERPOLATION, resize_mode="shortest",
              fill_color=0)


def builtin_open_clip_name(model_cfg: Dict[str, Any]) -> Optional[str]:
  """The open_clip built-in config (e.g. 'ViT-B-16') that builds the same model, if any."""
  import open_clip  # pylint: disable=import-outside-toplevel
  from open_clip.model import CLIPTextCfg, CLIPVisionCfg  # pylint: disable=import-outside-toplevel

  def canonical(cfg):
    return (cfg["embed_dim"], bool(cfg.get("quick_gelu", False)),
            CLIPVisionCfg(**cfg["vision_cfg"]), CLIPTextCfg(**cfg["text_cfg"]))

  ours = canonical(model_cfg)
  for name in open_clip.list_models():
    builtin = open_clip.get_model_config(name)
    if builtin.get("custom_text") or "timm_model_name" in builtin.get("vision_cfg", {}):
      continue
    try:
      if canonical(builtin) == ours:
        return name
    except (KeyError, TypeError):  # configs of other model families (CoCa, SigLIP, ...)
      continue
  return None


def export_open_clip(clip_params: Dict[str, Any], arch: ClipArchitecture,
                     out_dir: str, provenance: Optional[Dict[str, Any]] = None) -> pathlib.Path:
  """Writes open_clip_config.json, open_clip_pytorch_model.bin, open_clip_model.safetensors."""
  import open_clip  # pylint: disable=import-outside-toplevel
  import safetensors.torch  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  model_cfg = open_clip_model_config(arch)
  model = open_clip.CLIP(**model_cfg)
  state_dict = {key: torch.from_numpy(value)
                for key, value in open_clip_state_dict(clip_params).items()}
  load_strict(model, state_dict, "open_clip's CLIP", arch)

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tensors = {key: value.contiguous() for key, value in model.state_dict().items()}
  torch.save(tensors, out / WEIGHTS_BIN)
  safetensors.torch.save_file(tensors, str(out / WEIGHTS_SAFETENSORS))
  config = dict(model_cfg=model_cfg, preprocess_cfg=open_clip_preprocess_config(arch))
  if provenance:
    config["maskclip_jax"] = provenance  # open_clip reads only model_cfg and preprocess_cfg
  (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
  return out
