"""The flags every command that reads a training workdir starts with (stdlib only: --help
stays fast)."""
import argparse


def workdir_parser(prog: str, doc: str, step_help: str) -> argparse.ArgumentParser:
  """A parser for `prog` described by its module docstring `doc` (first paragraph), with
  --workdir and --step."""
  parser = argparse.ArgumentParser(
      prog=prog, description=doc.split("\n\n", 1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="A maskclip-train workdir.")
  parser.add_argument("--step", type=int, default=None, help=step_help)
  return parser
