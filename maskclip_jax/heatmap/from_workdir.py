"""A training workdir's checkpoint + an image file -> the heat-map PNG (`maskclip-heatmap`)."""
import os
from typing import List, Optional

from maskclip_jax import checkpoint
from maskclip_jax.heatmap.image_crop import load_image
from maskclip_jax.heatmap.prompt_maps import HeatMaps, heat_maps
from maskclip_jax.heatmap.similarity import DEFAULT_FEATURES
from maskclip_jax.models.maskclip import build_model


def write_heatmap(workdir: str, image_path: str, prompts: List[str], out: str,
                  step: Optional[int] = None, image_tower: Optional[str] = None,
                  scale: str = "per_prompt", features: str = DEFAULT_FEATURES) -> HeatMaps:
  """Writes the heat-map PNG and prints what it drew; returns the `HeatMaps`.

  Raises ValueError or FileNotFoundError, naming the command's flag, for a bad input.
  """
  # Every input is checked before the checkpoint is read (seconds to minutes for big models).
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir={workdir} does not exist or is not a directory.")
  checkpoint.read_config(workdir)  # a directory without config.json is no workdir: says so
  if checkpoint.latest_step(workdir) is None:
    raise FileNotFoundError(f"--workdir={workdir} has no checkpoint under "
                            f"{checkpoint.checkpoint_dir(workdir)}: train it first, or point at "
                            "a workdir that has one.")
  if not prompts:
    raise ValueError("--text: no prompts; give at least one, e.g. --text 'a dog' 'a cat'.")
  empty = [i + 1 for i, p in enumerate(prompts) if not p.strip()]
  if empty:
    raise ValueError(f"--text: prompt(s) number {empty} are empty; each must name what to look "
                     "for, e.g. --text 'a dog' 'a cat'.")
  image = load_image(image_path)
  if not out.lower().endswith(".png"):
    raise ValueError(f"--out={out}: the figure is written as PNG; name the file *.png.")

  config, params, teacher, step = checkpoint.load_for_export(workdir, step)
  model = build_model(config.model, config.maskclip)
  maps = heat_maps(model, params, image, prompts, teacher=teacher,
                   image_tower_name=image_tower, scale=scale, features=features)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  maps.figure.save(out, format="PNG")
  width, height = maps.figure.size
  grid = "x".join(map(str, maps.similarity.shape[1:]))
  print(f"Wrote {out}: {width}x{height} px, {len(prompts)} panel(s) of the "
        f"{maps.crop.shape[0]}-px crop of {image_path}; step {step}, "
        f"{maps.image_tower} image tower, {grid} patches, {features} features, "
        f"{scale} colour scale.")
  for prompt, sim in zip(prompts, maps.similarity):
    print(f"  {prompt!r}: patch cosine {sim.min():+.3f} .. {sim.max():+.3f} "
          f"(mean {sim.mean():+.3f})")
  return maps
