"""maskclip-plot's flags; the curves are drawn by maskclip_jax/plot.py, whose docstring --help
shows."""
import argparse
import sys
from typing import List, Optional

from maskclip_jax import plot


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="maskclip-plot", description=plot.__doc__.split("\n\n", 1)[0],
      epilog=plot.__doc__.split("\n\n", 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="A maskclip-train workdir.")
  parser.add_argument("--out", default=None,
                      help=f"The PNG to write (default: WORKDIR/{plot.DEFAULT_NAME}).")
  return parser


def run(argv: Optional[List[str]] = None) -> None:
  """Console-script entry point (`maskclip-plot`)."""
  parser = _parser()
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    print(plot.write_curves(args.workdir, args.out))
  except (ValueError, FileNotFoundError, ImportError) as e:
    parser.exit(2, f"maskclip-plot: error: {e}\n")


if __name__ == "__main__":
  run()
