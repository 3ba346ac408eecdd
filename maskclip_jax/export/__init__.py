"""To and from PyTorch: open_clip, Hugging Face transformers CLIP, timm.

Import-light on purpose: torch, open_clip, transformers and timm are imported inside the
functions that write those formats, and tensorflow never (importing it before torch crashes).

  clip_params_for_export(params, teacher, image_tower)  the CLIP model of a train state
  export_open_clip / export_hf / export_timm            write one format's directory
  from_open_clip(state_dict, config)                    open_clip / OpenAI weights -> our params
  load_open_clip_checkpoint(path, config)               the same from a file (`openclip:PATH`)
`maskclip-export` is from_workdir.py's export_workdir (a workdir's checkpoint -> one format)
behind cli/export.py's flags.
"""
from maskclip_jax.export.architecture import ClipArchitecture, clip_architecture
from maskclip_jax.export.clip_params import clip_params_for_export
from maskclip_jax.export.import_open_clip import from_open_clip, load_open_clip_checkpoint
from maskclip_jax.export.to_hf import export_hf
from maskclip_jax.export.to_open_clip import export_open_clip, open_clip_state_dict
from maskclip_jax.export.to_timm import export_timm

__all__ = [
    "ClipArchitecture", "clip_architecture", "clip_params_for_export",
    "export_hf", "export_open_clip", "export_timm", "from_open_clip",
    "load_open_clip_checkpoint", "open_clip_state_dict",
]
