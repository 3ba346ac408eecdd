"""File patterns as webdataset users write them: brace ranges, lists, globs, `::` between patterns.

Listing goes through `tf.io.gfile`, so `gs://` and every other filesystem TF reads work alike.
"""
import re

import tensorflow as tf

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")
_GLOB_CHARS = re.compile(r"[*?\[]")


def expand_braces(pattern: str) -> list[str]:
  """`a{000..002}.tar` -> a000.tar a001.tar a002.tar; `{x,y}` -> x y (nested and repeated too).

  Zero padding follows the first bound's width, as in bash and `braceexpand`.
  """
  match = _BRACE.search(pattern)
  if not match:
    return [pattern]
  head, body, tail = pattern[:match.start()], match.group(1), pattern[match.end():]
  numeric = _RANGE.fullmatch(body)
  if numeric:
    lo_text, hi_text = numeric.groups()
    lo, hi = int(lo_text), int(hi_text)
    width = len(lo_text) if lo_text.lstrip("-").startswith("0") else 0
    step = 1 if hi >= lo else -1
    options = [f"{i:0{width}d}" for i in range(lo, hi + step, step)]
  else:
    options = body.split(",")
  return [expanded for option in options for expanded in expand_braces(head + option + tail)]


def list_files(pattern: str, *, data: str) -> list[str]:
  """All files named by `pattern`, in a stable order; fails naming the pattern if none match.

  `data` is the whole data string, quoted in the error so the user sees which setting to fix.
  """
  files = []
  for part in pattern.split("::"):
    for name in expand_braces(part):
      if _GLOB_CHARS.search(name):
        files.extend(sorted(tf.io.gfile.glob(name)))
      elif tf.io.gfile.exists(name):
        files.append(name)
  missing_hint = ""
  if not files:
    expanded = [n for p in pattern.split("::") for n in expand_braces(p)]
    if len(expanded) > 1 and not any(_GLOB_CHARS.search(n) for n in expanded):
      missing_hint = f" (it expands to {len(expanded)} names, e.g. {expanded[0]!r}; none exists)"
    raise FileNotFoundError(f"Data {data!r}: pattern {pattern!r} matches no files{missing_hint}. "
                            "Check the path, the brace range and the glob.")
  # A file named twice (overlapping patterns) would be read twice per epoch.
  return list(dict.fromkeys(files))


def files_for_process(files: list[str], process_index: int,
                      process_count: int) -> tuple[list[str], bool]:
  """This process's share of `files` -> (files to read, whether to shard by example instead).

  With at least as many files as processes each process reads a disjoint set of whole files
  (round robin, so sizes stay even). With fewer, every process reads all files and keeps every
  process_count-th example; the caller then applies `Dataset.shard`.
  """
  if len(files) >= process_count:
    return files[process_index::process_count], False
  return files, True
