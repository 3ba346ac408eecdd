"""Which image tower to use: the trained ('online') one, or the EMA teacher's ('teacher').

A train state's `teacher` holds an EMA copy of `params['visual']` where the run has a teacher
(see train_step.py); runs with config.maskclip.w_dist=0 or distill_target='pixel' keep none.
Export, evaluation and the heat maps all choose with this. Import-light (no jax): config files
and --help import it.
"""
from typing import Any, Mapping, Optional

IMAGE_TOWERS = ("online", "teacher")


def has_ema_image_tower(teacher: Optional[Mapping[str, Any]]) -> bool:
  """Whether a checkpoint's `teacher` holds an EMA image tower (runs with w_dist=0 or
  distill_target='pixel' keep none)."""
  return bool(teacher) and "visual" in teacher


def select_image_tower(params: Mapping[str, Any], teacher: Optional[Mapping[str, Any]],
                       image_tower: str, field: str = "image_tower") -> Any:
  """The image tower's parameters: the trained ('online') one, or the EMA teacher's.

  `field` names the option in the error messages ('--image-tower' in a CLI's).
  """
  if image_tower not in IMAGE_TOWERS:
    raise ValueError(f"{field}={image_tower!r} is unknown; use one of {IMAGE_TOWERS}.")
  if image_tower == "teacher":
    if not has_ema_image_tower(teacher):
      raise ValueError(f"{field}=teacher: this run has no EMA image tower (runs with "
                       "config.maskclip.w_dist=0 or distill_target='pixel' keep none); use "
                       f"{field}=online.")
    return teacher["visual"]
  return params["visual"]
