"""Names for leaves of parameter and train-state pytrees, as used by regex rules."""


def path_name(path) -> str:
  """A pytree key path as 'visual/transformer/resblocks_0/attn/in_proj/kernel'."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)
