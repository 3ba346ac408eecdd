"""maskclip-heatmap: where in an image each text prompt matches, as one PNG of heat-map panels.

  maskclip-heatmap --workdir /tmp/run --image dog.jpg --text "a dog" "a cat" --out heat.png
  maskclip-heatmap --workdir /tmp/run --step 5000 --image-tower teacher --image x.png \\
      --text "a red circle" --text "a blue square" --out heat.png
Reads WORKDIR/config.json and the latest (or --step) checkpoint. Each panel is the image after
the eval preprocessing (shorter side resized, centre crop) with the cosine similarity between
each patch's projected feature and the prompt's text embedding overlaid (blue low, red high).
`--scale per_prompt` (default) stretches each panel's colours over its own similarity range (where
does this prompt match best); `shared` puts all panels on one range (which prompt matches more).
`--features values_no_residual` (default) takes MaskCLIP's dense patch features (Zhou et al.,
ECCV 2022): the last block's attention replaced by the identity, each patch its own value
embedding, so that the last layer does not mix the whole image into every patch, with the last
block's residual and MLP dropped too (ClearCLIP-like); `values` keeps them; `tokens` takes the
tower's own ln_post patch tokens, which localise poorly. `--image-tower` defaults to the EMA
teacher where the checkpoint has one (it localises better), else the online tower. See
maskclip_jax/heatmap/. Never imports tensorflow.
"""
import argparse
import sys
from typing import List, Optional

from maskclip_jax.cli.workdir_flags import workdir_parser
from maskclip_jax.models.image_towers import IMAGE_TOWERS

# heatmap.SCALES, FEATURES and DEFAULT_FEATURES, repeated so that --help does not wait for jax
# to import (a test checks that they agree).
SCALES = ("per_prompt", "shared")
FEATURES = ("tokens", "values", "values_no_residual")
DEFAULT_FEATURES = "values_no_residual"


def _parser() -> argparse.ArgumentParser:
  parser = workdir_parser("maskclip-heatmap", __doc__,
                          "The checkpoint step to use (default: the latest).")
  parser.add_argument("--image-tower", default=None, choices=IMAGE_TOWERS,
                      help="Which image tower: the trained one, or its EMA teacher (default: "
                      "the teacher if the checkpoint has one, else online).")
  parser.add_argument("--image", required=True, help="The image file (any format PIL reads).")
  # nargs='+' with 'extend': both `--text "a dog" "a cat"` and `--text a --text b` work.
  parser.add_argument("--text", required=True, nargs="+", action="extend", metavar="PROMPT",
                      help="One or more prompts; one panel each, in this order.")
  parser.add_argument("--out", required=True, help="The PNG to write.")
  parser.add_argument("--scale", default="per_prompt", choices=SCALES,
                      help="Each panel on its own colour range, or all on one shared range.")
  parser.add_argument("--features", default=DEFAULT_FEATURES, choices=FEATURES,
                      help="The patch features: MaskCLIP's value embeddings of the last block "
                      "(values_no_residual, the default, without its residual and MLP; values, "
                      "with them), or the tower's own output tokens (tokens).")
  return parser


def run(argv: Optional[List[str]] = None) -> None:
  """Console-script entry point (`maskclip-heatmap`)."""
  parser = _parser()
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  # Imported only now, so that --help and argument errors come before jax starts up.
  from maskclip_jax.heatmap import write_heatmap  # pylint: disable=import-outside-toplevel
  try:
    write_heatmap(args.workdir, args.image, args.text, args.out, args.step, args.image_tower,
                  args.scale, args.features)
  except (ValueError, FileNotFoundError) as e:
    parser.exit(2, f"maskclip-heatmap: error: {e}\n")


if __name__ == "__main__":
  run()
