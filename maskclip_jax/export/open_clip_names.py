"""Our parameter paths <-> open_clip `CLIP` state-dict keys, and the layout change of each array.

Our names already mirror open_clip's modules, so the mapping is a renaming plus:
  Dense `kernel` (in, out)  <-> torch Linear `weight` (out, in)          transpose;
  Conv  `kernel` (p, p, 3, W) <-> torch Conv2d `weight` (W, 3, p, p)      HWIO <-> OIHW;
  LayerNorm `scale`, Embed `embedding` -> `weight`; fused `attn/in_proj/{kernel,bias}` ->
  torch MultiheadAttention's `attn.in_proj_{weight,bias}` (same [q; k; v] row order);
  `visual/...` -> `visual....`; `text/...` -> top level (open_clip's CLIP has no text module);
  `proj`, `text_projection`, embeddings and `logit_scale` are stored as they are.
Works on the unrolled layer layout (`resblocks_{i}`); see models/layer_layout.py.
"""
import re
from typing import Dict, Iterator, Mapping, Tuple

import numpy as np

Path = Tuple[str, ...]
CLIP_COLLECTIONS = ("visual", "text", "logit_scale")
_BLOCK = re.compile(r"resblocks_(\d+)")


def open_clip_key(path: Path) -> str:
  """('visual', 'transformer', 'resblocks_0', 'attn', 'in_proj', 'kernel') ->
  'visual.transformer.resblocks.0.attn.in_proj_weight'."""
  if not path or path[0] not in CLIP_COLLECTIONS:
    raise ValueError(f"{'/'.join(path)} is not a parameter of the CLIP model "
                     f"(one of {CLIP_COLLECTIONS}).")
  head, rest = path[0], list(path[1:])
  parts = ["visual"] if head == "visual" else []
  if head == "logit_scale":
    if rest:
      raise ValueError(f"{'/'.join(path)}: logit_scale is a single scalar parameter.")
    return "logit_scale"
  if not rest:
    raise ValueError(f"{'/'.join(path)} is a whole tower, not a parameter.")
  rest = [f"resblocks.{m.group(1)}" if (m := _BLOCK.fullmatch(p)) else p for p in rest]
  leaf = rest.pop()
  if rest and rest[-1] == "in_proj":
    rest.pop()
    leaf = {"kernel": "in_proj_weight", "bias": "in_proj_bias"}[leaf]
  elif leaf in ("kernel", "scale", "embedding"):
    leaf = "weight"
  return ".".join(parts + rest + [leaf])


def is_kernel(path: Path) -> bool:
  return path[-1] == "kernel"


def to_torch_layout(array: np.ndarray, kernel: bool) -> np.ndarray:
  """Our array -> the torch module's layout (contiguous)."""
  if kernel and array.ndim == 2:
    array = array.T
  elif kernel and array.ndim == 4:
    array = array.transpose(3, 2, 0, 1)
  elif kernel:
    raise ValueError(f"a kernel of rank {array.ndim} has no torch layout rule")
  # Not np.ascontiguousarray: it turns the 0-d logit_scale into shape (1,).
  return np.array(array, order="C")


def from_torch_layout(array: np.ndarray, kernel: bool) -> np.ndarray:
  """A torch module's array -> our layout (the inverse of `to_torch_layout`)."""
  if kernel and array.ndim == 2:
    array = array.T
  elif kernel and array.ndim == 4:
    array = array.transpose(2, 3, 1, 0)
  elif kernel:
    raise ValueError(f"a kernel of rank {array.ndim} has no torch layout rule")
  return np.array(array, order="C")


def flatten(tree, prefix: Path = ()) -> Iterator[Tuple[Path, object]]:
  """Nested mappings -> (path, leaf) pairs in a stable (sorted) order."""
  if isinstance(tree, Mapping):
    for key in sorted(tree):
      yield from flatten(tree[key], prefix + (str(key),))
  else:
    yield prefix, tree


def unflatten(pairs: Dict[Path, object]) -> dict:
  tree: dict = {}
  for path, leaf in pairs.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return tree
