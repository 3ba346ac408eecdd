"""Patch-prompt cosine similarity from a MaskCLIP: the model surgery behind the heat maps.

For each prompt, the cosine similarity between every patch's feature (a width-sized vector from
the image tower's last block, through ln_post and the tower's `proj`, as the class token is for
the CLIP embedding) and the prompt's text embedding, on the patch grid.

Patch features (`features`). With x the last block's input, a = attn(ln_1(x)), and
x' = x + a, x'' = x' + mlp(ln_2(x')) the block as trained:
  'tokens'              ln_post(x'') @ proj: the tower's own projected patch tokens. The last
                        block's query-key attention mixes image-level information into every
                        patch, so these say much about the whole image and little about what
                        lies under the patch (CLIP's known failure at localisation).
  'values'              the same, with the last block's attention matrix replaced by the
                        identity: a = out_proj(v), v the value third of in_proj(ln_1(x)), each
                        patch's own value embedding. MaskCLIP (Zhou, Loy, Dai, "Extract Free
                        Dense Labels from CLIP", ECCV 2022) as their released ViT code computes it
                        (mmseg backbone, `return_qkv` on the last layer: v += x, then
                        v = ffn(norm2(v), identity=v), then the final norm and the head's proj):
                        the residual and the MLP stay. The paper's v_proj -> c_proj description is
                        of the ResNet attention pool, which has neither.
  'values_no_residual'  ln_post(a) @ proj with the same identity-attention a: the last block's
  (default)             residual and MLP dropped too, which ClearCLIP (Lan et al., ECCV 2024)
                        found removes most of the remaining noise (their best also swaps the
                        identity for q-q attention, not done here).
Every other block, and the class token, are untouched; only the patches are drawn.

Image tower (`image_tower_name`): 'online' (the trained tower), 'teacher' (its EMA), or None (the
default): the teacher when the checkpoint has one, else the online tower. The defaults are what
localises: on the tiny synthetic run (configs/tiny_synthetic.py, 300 steps, 200 test images,
bench/heatmap_localisation.py) the named shape's patches are brighter than the background by
+0.038 cosine with values_no_residual on the teacher, while 'tokens' on the online tower is no
brighter inside than outside (-0.004).
"""
import functools
from typing import Any, Dict, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskclip_jax import losses, normalization
from maskclip_jax.data import tokenizer as tokenizer_lib
from maskclip_jax.models import layer_layout
from maskclip_jax.models.image_towers import has_ema_image_tower, select_image_tower
from maskclip_jax.models.maskclip import MaskCLIP, image_tower
from maskclip_jax.models.transformer import (MultiHeadAttention, ResidualAttentionBlock,
                                             layer_norm)

FEATURES = ("tokens", "values", "values_no_residual")
DEFAULT_FEATURES = "values_no_residual"


def resolve_image_tower(teacher: Optional[Dict[str, Any]],
                        image_tower_name: Optional[str] = None) -> str:
  """`image_tower_name`, or for None the teacher if the checkpoint has one, else 'online'."""
  if image_tower_name is None:
    return "teacher" if has_ema_image_tower(teacher) else "online"
  return image_tower_name


def select_visual(params: Dict[str, Any], teacher: Optional[Dict[str, Any]],
                  image_tower_name: Optional[str] = None) -> Dict[str, Any]:
  """The image tower's parameters: the trained ('online') one or the EMA teacher's.

  None picks the teacher where there is one (`resolve_image_tower`).
  """
  return select_image_tower(params, teacher, resolve_image_tower(teacher, image_tower_name),
                            field="--image-tower")


def _identity_attention_in_last_block(num_layers: int, features: str, seen: list):
  """A flax method interceptor that rewires the last transformer block (`resblocks_{L-1}`) of
  the image tower for `features` 'values' / 'values_no_residual' (module docstring)."""
  last = f"resblocks_{num_layers - 1}"

  def interceptor(next_fun, args, kwargs, context):
    block = context.module
    if (context.method_name != "__call__" or not isinstance(block, ResidualAttentionBlock)
        or block.name != last):
      return next_fun(*args, **kwargs)
    seen.append(block.name)
    x = args[0]
    # Softmax over logits masked to the diagonal is exactly 1 there and exactly 0 elsewhere, so
    # every token's attention output is out_proj of its own value: the model's own attention
    # code computes MaskCLIP's value embedding, with no second copy of it here.
    identity = jnp.eye(x.shape[1], dtype=bool)[None, None]
    if features == "values":
      # Zhou et al.'s released ViT code (mmseg backbone, `return_qkv` on the last layer) keeps
      # the residual and the FFN around the value path: v = x + out_proj(v); v = v + ffn(ln_2(v)).
      return next_fun(x, mask=identity)
    # 'values_no_residual': out_proj(v(ln_1(x))) alone, with this block's own parameters.
    params = block.variables["params"]
    y = layer_norm("ln_1", block.dtype).apply({"params": params["ln_1"]}, x).astype(block.dtype)
    return MultiHeadAttention(block.num_heads, block.dtype, block.attention).apply(
        {"params": params["attn"]}, y, mask=identity)

  return interceptor


def _patch_tokens(model: MaskCLIP, visual_params, pixels, features: str):
  """(B, 1 + h * w, width) ln_post tokens of normalised pixels, for `features`."""
  if features == "tokens":
    _, tokens = image_tower(model).apply({"params": visual_params}, pixels)
    return tokens
  # A scanned stack traces one block for all layers, so its last layer cannot be rewired alone:
  # unroll it (models/layer_layout.py). Inference needs no remat; the einsum attention takes the
  # identity mask on every backend and computes the same function as the other kinds.
  tower = image_tower(model).clone(scan=False, remat="none", attention="einsum")
  if model.scan_layers:
    visual_params = layer_layout.unstack_layers(flax.core.unfreeze(visual_params))
  seen = []
  with nn.intercept_methods(_identity_attention_in_last_block(model.vision.layers, features,
                                                              seen)):
    _, tokens = tower.apply({"params": visual_params}, pixels)
  if seen != [f"resblocks_{model.vision.layers - 1}"]:
    raise ValueError(f"features={features!r}: the image tower's last block "
                     f"resblocks_{model.vision.layers - 1} was called {len(seen)} times, not "
                     "once; its parameters are not in a layout this code knows.")
  return tokens


# Modules are frozen dataclasses, hashed by value: static arguments, so each model compiles once.
@functools.partial(jax.jit, static_argnums=(0, 3))
def _encode_patches(model: MaskCLIP, visual_params, crops, features: str):
  tokens = _patch_tokens(model, visual_params, normalization.normalize(crops), features)
  # Token 0 is the class token; the rest are the patches in raster order.
  patches = tokens[:, 1:].astype(jnp.float32) @ visual_params["proj"].astype(jnp.float32)
  grid = model.vision.image_size // model.vision.patch_size
  return losses.l2_normalize(patches, eps=1e-12).reshape(crops.shape[0], grid, grid, -1)


@functools.partial(jax.jit, static_argnums=0)
def _encode_text(model: MaskCLIP, params, ids):
  embedding, _ = model.apply({"params": params}, ids, method=MaskCLIP.encode_text)
  return losses.l2_normalize(embedding, eps=1e-12)  # its float32 cast is the one done here


def check_features(features: str) -> None:
  if features not in FEATURES:
    raise ValueError(f"--features={features!r} is unknown; use one of {FEATURES}.")


def patch_features(model: MaskCLIP, visual_params, crops: np.ndarray,
                   features: str = DEFAULT_FEATURES) -> np.ndarray:
  """(B, S, S, 3) uint8 crops -> (B, h, w, embed_dim) L2-normalised projected patch features,
  `features` one of FEATURES (module docstring)."""
  check_features(features)
  return np.asarray(_encode_patches(model, visual_params, jnp.asarray(crops), features))


def text_features(model: MaskCLIP, params, prompts: Sequence[str]) -> np.ndarray:
  """P prompts -> (P, embed_dim) L2-normalised text embeddings (the model's context length)."""
  ids = tokenizer_lib.tokenize(list(prompts), model.text_spec.context_length)
  return np.asarray(_encode_text(model, params, ids))


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
  """(..., h, w) -> (..., size, size) bilinear, each patch's value at its centre."""
  maps = jnp.asarray(maps, jnp.float32)
  return np.asarray(jax.image.resize(maps, maps.shape[:-2] + (size, size), "bilinear"))
