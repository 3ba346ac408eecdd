"""A training workdir's checkpoint -> open_clip, Hugging Face or timm files (`maskclip-export`).

torch is imported first and tensorflow never: importing tensorflow before torch crashes.
"""
import os
from typing import List, Optional

TARGETS = ("open_clip", "hf", "timm")


def _how_to_load(target: str, out: str, extra: Optional[str]) -> List[str]:
  if target == "open_clip":
    lines = ["import open_clip",
             f'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{out}")',
             f'tokenizer = open_clip.get_tokenizer("local-dir:{out}")']
    if extra:
      lines.append(f'# or: open_clip.create_model("{extra}", pretrained="'
                   f'{os.path.join(out, "open_clip_pytorch_model.bin")}")')
  elif target == "hf":
    lines = ["from transformers import CLIPModel, CLIPProcessor",
             f'model = CLIPModel.from_pretrained("{out}")',
             f'processor = CLIPProcessor.from_pretrained("{out}")']
  else:
    lines = ["import timm", f'model = timm.create_model("local-dir:{out}", pretrained=True)',
             f"# = {extra}: outputs the image embedding; forward_head(..., pre_logits=True) "
             "gives the features before the projection."]
  return lines


def export_workdir(workdir: str, target: str, out: str, step: Optional[int] = None,
                   image_tower: str = "online", overwrite: bool = False) -> List[str]:
  """Exports `target` (one of TARGETS) to `out`; returns the lines of PyTorch that load it.

  Raises ValueError, FileNotFoundError or ModuleNotFoundError (no torch), naming the command's
  flag or the fix, for a bad input.
  """
  # torch first: it must be imported before tensorflow if anything later imports that.
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ModuleNotFoundError as e:  # the main install (`pip install -e .`) has no torch
    raise ModuleNotFoundError(
        "maskclip-export writes PyTorch checkpoints and needs PyTorch: install the torch extra, "
        "pip install -e \".[torch]\" (or pip install torch open_clip_torch).") from e
  from maskclip_jax import checkpoint  # pylint: disable=import-outside-toplevel
  from maskclip_jax import export as export_lib  # pylint: disable=import-outside-toplevel
  from maskclip_jax.export import to_open_clip, to_timm  # pylint: disable=import-outside-toplevel

  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise ValueError(f"--out={out} is not empty; choose a new directory or pass --overwrite.")
  # The size decides whether the target can take the model at all: fail before loading.
  arch = export_lib.clip_architecture(checkpoint.read_config(workdir))
  if target == "timm":
    timm_name, timm_args = to_timm.timm_architecture(arch)
  config, params, teacher, step = checkpoint.load_for_export(workdir, step)
  clip_params = export_lib.clip_params_for_export(params, teacher, image_tower)
  provenance = dict(source="maskclip_jax", workdir=os.path.abspath(workdir), step=int(step),
                    image_tower=image_tower, size=config.model.size)
  extra = None
  if target == "open_clip":
    export_lib.export_open_clip(clip_params, arch, out, provenance)
    extra = to_open_clip.builtin_open_clip_name(to_open_clip.open_clip_model_config(arch))
  elif target == "hf":
    export_lib.export_hf(clip_params, arch, out)
  else:
    export_lib.export_timm(clip_params, arch, out, provenance)
    extra = f"timm's {timm_name} with {timm_args}"
  print(f"Exported step {step} of {arch.describe()} ({image_tower} image tower) to {out} for "
        f"{target}. Load it with:")
  lines = _how_to_load(target, out, extra)
  print("\n".join(f"  {line}" for line in lines))
  return lines
