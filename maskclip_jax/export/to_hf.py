"""Export to Hugging Face transformers: a `CLIPModel` directory (config.json + model.safetensors)
with its `CLIPProcessor` (tokenizer files and image preprocessing), loadable offline with
`CLIPModel.from_pretrained(DIR)` and `CLIPProcessor.from_pretrained(DIR)`.

Converted from the open_clip state dict (to_open_clip.py): HF's CLIP is the same network with
other names, separate q/k/v projections instead of the fused `in_proj`, and Linear modules (so
transposed weights) for the two projections.
"""
import pathlib
import re
from typing import Any, Dict

import numpy as np

from maskclip_jax.data.tokenizer import EOT_TEXT, SOT_TEXT, ClipTokenizer
from maskclip_jax.export.architecture import ClipArchitecture
from maskclip_jax.export.strict_load import load_strict
from maskclip_jax.export.to_open_clip import open_clip_state_dict
from maskclip_jax.models.transformer import LN_EPS
from maskclip_jax.models.vocabulary import EOT_ID, SOT_ID
from maskclip_jax.normalization import CLIP_MEAN, CLIP_STD

# HF's CLIP vocabulary spells open_clip's two special tokens the way OpenAI's release did.
HF_SPECIAL_TOKENS = {SOT_TEXT: "<|startoftext|>", EOT_TEXT: "<|endoftext|>"}
_OPEN_CLIP_BLOCK = re.compile(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)")
_BLOCK_RENAMES = {
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOWER_RENAMES = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic: HF's spelling
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
# open_clip multiplies by the projection (x @ proj); HF applies a bias-free Linear (x @ W.T).
_PROJECTIONS = {"visual.proj": "visual_projection.weight",
                "text_projection": "text_projection.weight"}


def hf_clip_state_dict(open_clip_sd: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """open_clip CLIP state dict (numpy) -> HF `CLIPModel` state dict (numpy)."""
  out = {}
  for key, value in open_clip_sd.items():
    if key in _TOWER_RENAMES:
      out[_TOWER_RENAMES[key]] = value
    elif key in _PROJECTIONS:
      out[_PROJECTIONS[key]] = np.ascontiguousarray(value.T)
    elif match := _OPEN_CLIP_BLOCK.fullmatch(key):
      tower = "vision_model" if match.group(1) else "text_model"
      prefix = f"{tower}.encoder.layers.{match.group(2)}."
      name = match.group(3)
      if name in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = name.rsplit("_", 1)[1]  # weight | bias
        for part, array in zip(("q", "k", "v"), np.split(value, 3, axis=0)):
          out[f"{prefix}self_attn.{part}_proj.{kind}"] = np.ascontiguousarray(array)
      elif name in _BLOCK_RENAMES:
        out[prefix + _BLOCK_RENAMES[name]] = value
      else:
        raise ValueError(f"open_clip's {key} has no Hugging Face CLIP counterpart")
    else:
      raise ValueError(f"open_clip's {key} has no Hugging Face CLIP counterpart")
  return out


def hf_clip_config(arch: ClipArchitecture, logit_scale: float):
  """A `CLIPConfig` for our towers: exact GELU ('gelu'; 'quick_gelu' is OpenAI's), LN eps, and
  the CLIP tokenizer's special ids (the text tower pools at the first EOT, our argmax)."""
  from transformers import CLIPConfig  # pylint: disable=import-outside-toplevel
  v, t = arch.vision, arch.text
  text_config = dict(
      vocab_size=t.vocab_size, hidden_size=t.width, intermediate_size=int(t.width * t.mlp_ratio),
      projection_dim=arch.embed_dim, num_hidden_layers=t.layers, num_attention_heads=t.heads,
      max_position_embeddings=t.context_length, hidden_act="gelu", layer_norm_eps=LN_EPS,
      bos_token_id=SOT_ID, eos_token_id=EOT_ID, pad_token_id=EOT_ID)
  vision_config = dict(
      hidden_size=v.width, intermediate_size=int(v.width * v.mlp_ratio),
      projection_dim=arch.embed_dim, num_hidden_layers=v.layers, num_attention_heads=v.heads,
      num_channels=3, image_size=v.image_size, patch_size=v.patch_size, hidden_act="gelu",
      layer_norm_eps=LN_EPS)
  return CLIPConfig(text_config=text_config, vision_config=vision_config,
                    projection_dim=arch.embed_dim, logit_scale_init_value=logit_scale)


def hf_clip_processor(arch: ClipArchitecture):
  """CLIPProcessor: our BPE vocabulary as HF's CLIPTokenizer, and our eval preprocessing.

  HF's tokenizer normalises text with NFC + whitespace + lowercase only; ours (open_clip's) also
  runs ftfy and HTML unescaping, so captions with mojibake or HTML entities can tokenise
  differently. Ordinary captions give the same ids up to padding (HF pads with EOT, we with 0;
  neither changes the embedding: the mask is causal and pooling is at the first EOT).
  """
  from transformers import (  # pylint: disable=import-outside-toplevel
      CLIPImageProcessor, CLIPProcessor, CLIPTokenizer)
  ours = ClipTokenizer(context_length=arch.text.context_length)
  vocab = {HF_SPECIAL_TOKENS.get(token, token): index for token, index in ours.encoder.items()}
  merges = [pair for pair, _ in sorted(ours.bpe_ranks.items(), key=lambda item: item[1])]
  tokenizer = CLIPTokenizer(vocab=vocab, merges=merges,
                            model_max_length=arch.text.context_length)
  size = arch.vision.image_size
  image_processor = CLIPImageProcessor(
      size={"shortest_edge": size}, crop_size={"height": size, "width": size},
      image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), resample=3)  # 3 = PIL bicubic
  return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def export_hf(clip_params: Dict[str, Any], arch: ClipArchitecture,
              out_dir: str) -> pathlib.Path:
  """Writes config.json, model.safetensors and the processor files into `out_dir`."""
  import torch  # pylint: disable=import-outside-toplevel
  from transformers import CLIPModel  # pylint: disable=import-outside-toplevel

  open_clip_sd = open_clip_state_dict(clip_params)
  config = hf_clip_config(arch, float(open_clip_sd["logit_scale"]))
  model = CLIPModel(config).eval()
  state_dict = {key: torch.from_numpy(value)
                for key, value in hf_clip_state_dict(open_clip_sd).items()}
  load_strict(model, state_dict, "Hugging Face CLIPModel", arch)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  model.save_pretrained(out, safe_serialization=True)
  hf_clip_processor(arch).save_pretrained(out)
  return out
