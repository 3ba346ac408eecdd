"""Heat maps: where in an image a text prompt matches, from per-patch CLIP similarity.

For each prompt, the cosine similarity between every patch's feature (a width-sized vector from
the image tower's last block, through ln_post and the tower's `proj`, as the class token is for
the CLIP embedding) and the prompt's text embedding, on the patch grid; upsampled bilinearly to
the crop and overlaid on it, one panel per prompt, side by side in one image.

Colour scale (`scale`): 'per_prompt' (the default) stretches each panel's own min..max patch
similarity over the colour map, so each panel shows where in the image its prompt matches best,
brighter (red) there; the question a heat map answers. Similarities of different prompts sit at
different levels (a prompt naming the image's colour is higher at every patch than one that does
not), so on one 'shared' range, the smallest to the largest over all prompts, panels are
comparable with each other but the level differences between prompts swamp the differences
within each panel. Every panel's caption gives the cosine range its colours span, and the raw
cosine maps are returned untouched.

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

Pure numpy, PIL and JAX: no tensorflow (torch users import this next to torch) and no matplotlib
(the colour map is a few lines below).
"""
import dataclasses
import functools
from typing import Any, Dict, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from maskclip_jax import losses, normalization
from maskclip_jax.data import tokenizer as tokenizer_lib
from maskclip_jax.models import layer_layout
from maskclip_jax.models.image_towers import has_ema_image_tower, select_image_tower
from maskclip_jax.models.maskclip import MaskCLIP, image_tower
from maskclip_jax.models.transformer import (MultiHeadAttention, ResidualAttentionBlock,
                                             layer_norm)

SCALES = ("per_prompt", "shared")
FEATURES = ("tokens", "values", "values_no_residual")
DEFAULT_FEATURES = "values_no_residual"

# Layout of the figure, in pixels: a crop smaller than PANEL is enlarged by the largest whole
# factor that keeps it within PANEL (a 64-px crop 4x, to be readable; 224 px stays as it is);
# panels are MARGIN apart and around; above each, a caption band of two text lines (the prompt,
# then its similarity range).
PANEL = 256
MARGIN = 8
FONT_SIZE = 13
LINE_HEIGHT = 16
CAPTION_HEIGHT = 2 * LINE_HEIGHT
# The heat map's weight in the overlay: enough colour to read, enough image to see the object.
ALPHA = 0.55


@dataclasses.dataclass
class HeatMaps:
  """What `heat_maps` computes. P prompts, an (h, w) patch grid, an S-px crop."""
  prompts: list            # the P prompts, in order
  similarity: np.ndarray   # (P, h, w) float32 raw cosine similarity per patch
  upsampled: np.ndarray    # (P, S, S) float32 the same, bilinearly upsampled to the crop
  crop: np.ndarray         # (S, S, 3) uint8 the preprocessed image the model saw
  figure: Image.Image      # the rendered panels (RGB)
  scale: str               # the colour scale used, one of SCALES
  features: str            # the patch features used, one of FEATURES
  image_tower: str         # the image tower used, one of models/image_towers.py's IMAGE_TOWERS


def panel_size(crop_size: int) -> int:
  """Width (= height) of one panel's image: the crop, enlarged by a whole factor if small."""
  return crop_size * max(1, PANEL // crop_size)


def figure_size(num_prompts: int, crop_size: int) -> tuple:
  """(width, height) in pixels of the figure for `num_prompts` panels of an S-px crop."""
  panel = panel_size(crop_size)
  return (num_prompts * panel + (num_prompts + 1) * MARGIN,
          MARGIN + CAPTION_HEIGHT + panel + MARGIN)


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


def preprocess(image: np.ndarray, size: int) -> np.ndarray:
  """(H, W, 3) uint8 -> (size, size, 3) uint8: shorter side to `size` (bicubic), centre crop.

  The geometry of the eval pipeline (data/preprocess.py `decode_resize_center_crop`, open_clip's
  Resize + CenterCrop) with PIL instead of tensorflow; PIL always antialiases when it shrinks
  and rounds to uint8, so pixel values can differ from the pipeline's by a few levels, never their
places.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"the image is {image.dtype} {image.shape}; expected (H, W, 3) uint8 RGB.")
  height, width = image.shape[:2]
  factor = size / min(height, width)
  new_h = max(int(round(height * factor)), size)
  new_w = max(int(round(width * factor)), size)
  if (new_h, new_w) != (height, width):
    image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))
  top = (new_h - size) // 2
  left = (new_w - size) // 2
  return image[top:top + size, left:left + size]


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


def color_ranges(similarity: np.ndarray, scale: str = "per_prompt") -> np.ndarray:
  """(P, h, w) cosine maps -> (P, 2): the (low, high) similarity each panel's colours span."""
  if scale not in SCALES:
    raise ValueError(f"scale={scale!r} is unknown; use one of {SCALES}.")
  flat = similarity.reshape(similarity.shape[0], -1)
  if scale == "shared":
    return np.tile([flat.min(), flat.max()], (flat.shape[0], 1))
  return np.stack([flat.min(axis=1), flat.max(axis=1)], axis=1)


def to_unit(maps: np.ndarray, ranges: np.ndarray) -> np.ndarray:
  """(P, ...) maps -> [0, 1], each map's (low, high) from `ranges` going to 0 and 1."""
  shape = (-1,) + (1,) * (maps.ndim - 1)
  low, high = ranges[:, 0].reshape(shape), ranges[:, 1].reshape(shape)
  # A constant map has no range: it shows as the bottom of the scale rather than dividing by 0.
  return np.clip((maps - low) / np.maximum(high - low, 1e-12), 0.0, 1.0)


def colorize(values: np.ndarray) -> np.ndarray:
  """[0, 1] -> uint8 RGB on the 'jet' colour map (dark blue, cyan, yellow, dark red).

  jet's channels are three clipped triangles; a 5-point table would give the same picture.
  """
  x = np.clip(values, 0.0, 1.0)[..., None] * 4.0
  centres = np.array([3.0, 2.0, 1.0])  # red, green, blue peak at x = 3/4, 1/2, 1/4
  rgb = np.clip(1.5 - np.abs(x - centres), 0.0, 1.0)
  return np.round(rgb * 255).astype(np.uint8)


def _font():
  # Pillow >= 10.1 ships a scalable default font; older ones (or no FreeType) have a bitmap one.
  try:
    return ImageFont.load_default(size=FONT_SIZE)
  except TypeError:
    return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
  """`text`, cut with '...' so that it fits in `width` pixels."""
  if draw.textlength(text, font=font) <= width:
    return text
  while text and draw.textlength(text + "...", font=font) > width:
    text = text[:-1]
  return text + "..."


def render(crop: np.ndarray, unit_maps: np.ndarray, prompts: Sequence[str],
           ranges: np.ndarray) -> Image.Image:
  """One panel per prompt, side by side: the crop with its [0, 1] map overlaid in colour, the
  prompt and the cosine range of its colour scale written above it. Size: `figure_size`."""
  size = crop.shape[0]
  panel = panel_size(size)
  width, height = figure_size(len(prompts), size)
  figure = Image.new("RGB", (width, height), "white")
  draw = ImageDraw.Draw(figure)
  font = _font()
  for i, (prompt, unit, (low, high)) in enumerate(zip(prompts, unit_maps, ranges)):
    overlay = (1 - ALPHA) * crop.astype(np.float32) + ALPHA * colorize(unit).astype(np.float32)
    image = Image.fromarray(np.round(overlay).astype(np.uint8))
    if panel != size:  # whole-factor enlargement: every crop pixel stays a crisp square
      image = image.resize((panel, panel), Image.NEAREST)
    left = MARGIN + i * (panel + MARGIN)
    figure.paste(image, (left, MARGIN + CAPTION_HEIGHT))
    draw.text((left, MARGIN), _fit(draw, prompt, font, panel), fill="black", font=font)
    draw.text((left, MARGIN + LINE_HEIGHT), f"cos {low:+.3f} (blue) .. {high:+.3f} (red)",
              fill=(90, 90, 90), font=font)
  return figure


def heat_maps(model: MaskCLIP, params: Dict[str, Any], image: np.ndarray,
              prompts: Sequence[str], *, teacher: Optional[Dict[str, Any]] = None,
              image_tower_name: Optional[str] = None, scale: str = "per_prompt",
              features: str = DEFAULT_FEATURES) -> HeatMaps:
  """The heat maps of `prompts` on `image` ((H, W, 3) uint8) for a MaskCLIP's params.

  `params` are the train state's params (the text tower is always theirs); `image_tower_name`
  'teacher' takes the image tower from `teacher`, the EMA teacher's params, 'online' from
  `params`, None (default) the teacher where there is one. `features`: which patch features,
  one of FEATURES (module docstring).
  """
  prompts = list(prompts)
  if not prompts:
    raise ValueError("no prompts: give at least one text to locate, e.g. --text 'a dog'.")
  empty = [i for i, p in enumerate(prompts) if not p.strip()]
  if empty:
    raise ValueError(f"the prompts at index {empty} are empty; each must say what to look for.")
  if scale not in SCALES:
    raise ValueError(f"scale={scale!r} is unknown; use one of {SCALES}.")
  check_features(features)
  image_tower_name = resolve_image_tower(teacher, image_tower_name)
  visual = select_visual(params, teacher, image_tower_name)
  size = model.vision.image_size
  crop = preprocess(image, size)
  patches = patch_features(model, visual, crop[None], features)[0]  # (h, w, D)
  texts = text_features(model, params, prompts)               # (P, D)
  similarity = np.einsum("hwd,pd->phw", patches, texts)
  upsampled = upsample(similarity, size)
  # The range comes from the patch grid: bilinear upsampling stays within it.
  ranges = color_ranges(similarity, scale)
  figure = render(crop, to_unit(upsampled, ranges), prompts, ranges)
  return HeatMaps(prompts=prompts, similarity=similarity.astype(np.float32),
                  upsampled=upsampled, crop=crop, figure=figure, scale=scale,
                  features=features, image_tower=image_tower_name)


def load_image(path: str) -> np.ndarray:
  """An image file -> (H, W, 3) uint8 RGB (grey, palette and alpha images are converted)."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"--image={path}: cannot read it as an image ({e}).") from e
