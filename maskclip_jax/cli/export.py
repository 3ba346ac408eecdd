"""maskclip-export: a training workdir's CLIP model -> open_clip, Hugging Face or timm files.

  maskclip-export --workdir /tmp/run --to open_clip --out /tmp/run_open_clip
  maskclip-export --workdir /tmp/run --step 5000 --to hf --out /tmp/run_hf
  maskclip-export --workdir /tmp/run --to timm --out /tmp/run_timm --image-tower teacher
Reads WORKDIR/config.json and the latest (or --step) checkpoint; exports the image and text
towers and the temperature (`timm`: the image tower only). The distillation decoders and heads
are pretraining-only and are not exported.
"""
import argparse
import sys
from typing import List, Optional

from maskclip_jax.cli.workdir_flags import workdir_parser
from maskclip_jax.export.from_workdir import TARGETS, export_workdir
from maskclip_jax.models.image_towers import IMAGE_TOWERS


def _parser() -> argparse.ArgumentParser:
  parser = workdir_parser("maskclip-export", __doc__,
                          "The checkpoint step to export (default: the latest).")
  parser.add_argument("--to", required=True, choices=TARGETS, help="The target library.")
  parser.add_argument("--out", required=True, help="The directory to write (created).")
  parser.add_argument("--image-tower", default="online", choices=IMAGE_TOWERS,
                      help="Which image tower: the trained one, or its EMA teacher.")
  parser.add_argument("--overwrite", action="store_true",
                      help="Write into --out even if it is not empty.")
  return parser


def run(argv: Optional[List[str]] = None) -> None:
  """Console-script entry point (`maskclip-export`)."""
  parser = _parser()
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    export_workdir(args.workdir, args.to, args.out, args.step, args.image_tower, args.overwrite)
  except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
    parser.exit(2, f"maskclip-export: error: {e}\n")


if __name__ == "__main__":
  run()
