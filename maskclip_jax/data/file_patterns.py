"""File patterns as webdataset users write them: brace ranges, lists, globs, `::` between patterns.

Listing goes through `tf.io.gfile`, so `gs://` and every other filesystem TF reads work alike.
"""
import re

from absl import logging
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


# Missing names quoted in an error (the rest are counted).
_NAMES_SHOWN = 5


def _quote_some(names: list[str]) -> str:
  shown = ", ".join(repr(n) for n in names[:_NAMES_SHOWN])
  more = len(names) - _NAMES_SHOWN
  return shown + (f" and {more} more" if more > 0 else "")


def list_files(pattern: str, *, data: str, allow_missing: bool = False) -> list[str]:
  """All files named by `pattern`, in a stable order; fails naming the pattern if none match.

  Every name written out (a plain name, or one a brace pattern expands to) must exist: a
  missing one fails here, before any training, naming the missing files, unless
  `allow_missing` (`config.input.allow_missing_shards`: the pattern names a superset of the
  files, e.g. a download that lost some shards), which reads those that exist and logs how many
  were missing. A glob (`*`, `?`, `[`) names whatever it matches.
  `data` is the whole data string, quoted in the error so the user sees which setting to fix.
  """
  files, missing, num_named = [], [], 0
  for part in pattern.split("::"):
    for name in expand_braces(part):
      if _GLOB_CHARS.search(name):
        files.extend(sorted(tf.io.gfile.glob(name)))
        continue
      num_named += 1
      if tf.io.gfile.exists(name):
        files.append(name)
      else:
        missing.append(name)
  if not files:
    missing_hint = ""
    if len(missing) > 1 and len(missing) == num_named:
      missing_hint = f" (it expands to {len(missing)} names, e.g. {missing[0]!r}; none exists)"
    raise FileNotFoundError(f"Data {data!r}: pattern {pattern!r} matches no files{missing_hint}. "
                            "Check the path, the brace range and the glob.")
  if missing:
    what = (f"Data {data!r}: {len(missing)} of the {num_named} files that pattern {pattern!r} "
            f"names do not exist: {_quote_some(missing)}")
    if not allow_missing:
      raise FileNotFoundError(
          f"{what}. Check the brace range; if the pattern names more shards than exist on "
          "purpose (e.g. a download that lost some), set "
          "--config.input.allow_missing_shards=True to read those that exist.")
    logging.warning("%s; reading the %d that exist (input.allow_missing_shards=True).", what,
                    num_named - len(missing))
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
