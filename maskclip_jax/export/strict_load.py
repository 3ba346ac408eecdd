"""Loading a converted state dict into the target PyTorch module, failing with the model named.

Every exporter loads what it converted into a freshly built target model before writing
anything: a conversion that does not fit the target is an export error that names our model
size, not a torch shape error at the user's `load_state_dict`.
"""
from typing import Dict

from maskclip_jax.export.architecture import ClipArchitecture


def load_strict(module, state_dict: Dict[str, object], target: str,
                arch: ClipArchitecture) -> None:
  """module.load_state_dict(state_dict) with no missing, unexpected or mis-shaped keys."""
  expected = module.state_dict()
  mismatched = [f"{key}: ours {tuple(value.shape)}, {target} {tuple(expected[key].shape)}"
                for key, value in state_dict.items()
                if key in expected and tuple(value.shape) != tuple(expected[key].shape)]
  missing = sorted(set(expected) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(expected))
  if mismatched or missing or unexpected:
    raise ValueError(
        f"{arch.describe()} does not convert to {target}: mismatched shapes {mismatched[:5]}, "
        f"missing {missing[:5]}, unexpected {unexpected[:5]} (first 5 of each). This is a bug in "
        "the conversion or a model feature the target cannot express; please report it.")
  module.load_state_dict(state_dict, strict=True)
