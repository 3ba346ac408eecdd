"""Converts a tower's transformer between the two layer layouts the model can have.

unrolled (`config.model.scan_layers=False`): transformer/resblocks_{i}/<block params>
scanned  (`config.model.scan_layers=True`):  transformer/resblocks/block/<block params>, every
                                              leaf stacked on a leading layer axis.
Export works on the unrolled layout (one torch module per block); import produces the layout
the config asks for; heatmap/similarity.py unrolls a scanned image tower to rewire its last block.
"""
import re
from typing import Any, Dict

import numpy as np

_UNROLLED_BLOCK = re.compile(r"resblocks_(\d+)")


def _leaves(tree):
  if isinstance(tree, dict):
    for value in tree.values():
      yield from _leaves(value)
  else:
    yield tree


def _map(fn, tree):
  if isinstance(tree, dict):
    return {key: _map(fn, value) for key, value in tree.items()}
  return fn(tree)


def _is_scanned_stack(node: Dict[str, Any]) -> bool:
  stack = node.get("resblocks")
  return isinstance(stack, dict) and set(stack) == {"block"}


def unstack_layers(tree: Dict[str, Any]) -> Dict[str, Any]:
  """Every scanned `resblocks/block` stack -> `resblocks_{i}`; unrolled subtrees pass through."""
  if not isinstance(tree, dict):
    return tree
  out = {key: unstack_layers(value) for key, value in tree.items() if key != "resblocks"}
  if _is_scanned_stack(tree):
    stacked = tree["resblocks"]["block"]
    depths = {np.shape(leaf)[0] for leaf in _leaves(stacked)}
    if len(depths) != 1:
      raise ValueError(f"a scanned transformer's leaves disagree on the layer count: {depths}")
    (depth,) = depths
    for i in range(depth):
      out[f"resblocks_{i}"] = _map(lambda x, i=i: x[i], stacked)
  elif "resblocks" in tree:
    out["resblocks"] = unstack_layers(tree["resblocks"])
  return out


def stack_layers(tree: Dict[str, Any]) -> Dict[str, Any]:
  """Every run of `resblocks_0 .. resblocks_{L-1}` -> one `resblocks/block` stack."""
  if not isinstance(tree, dict):
    return tree
  indices = sorted(int(m.group(1)) for m in map(_UNROLLED_BLOCK.fullmatch, tree) if m)
  out = {key: stack_layers(value) for key, value in tree.items()
         if not _UNROLLED_BLOCK.fullmatch(key)}
  if indices:
    if indices != list(range(len(indices))):
      raise ValueError(f"transformer blocks are not numbered 0..{len(indices) - 1}: {indices}")
    blocks = [tree[f"resblocks_{i}"] for i in indices]
    out["resblocks"] = {"block": _stack(blocks)}
  return out


def _stack(blocks):
  first = blocks[0]
  if isinstance(first, dict):
    return {key: _stack([block[key] for block in blocks]) for key in first}
  return np.stack([np.asarray(block) for block in blocks])
