"""Parses a data string (`config.input.train_data`) into what kind of source to read and where."""
import dataclasses
import re

from maskclip_jax.data import config as config_lib

KINDS = ("synthetic", "wds", "tfrecord", "tfds", "csv", "folder")
# TFDS names may carry a version after a colon (`mnist:3.0.1`); splits may hold colons too
# (`train[:90%]`), so the name is everything up to the first colon not followed by a version.
_TFDS_NAME = re.compile(r"(?P<name>[^:\[\]]+(?::\d+\.\d+\.\d+)?)(?::(?P<split>.+))?")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  kind: str  # one of KINDS
  location: str  # file pattern, CSV path, folder or TFDS name; '' for synthetic
  split: str  # TFDS / synthetic split; '' for file sources
  text: str  # the string as written, for messages


def parse(data: str, *, default_split: str, field: str = "input.train_data") -> SourceSpec:
  """`wds:shards/{0..9}.tar` -> SourceSpec('wds', 'shards/{0..9}.tar', '', ...).

  `default_split` is used for `synthetic` and `tfds:NAME` written without a split.
  """
  if not isinstance(data, str) or not data:
    raise ValueError(f"--config.{field}={data!r} is not a data string; use one of "
                     f"{', '.join(config_lib.SOURCE_FORMS)}.")
  kind, sep, rest = data.partition(":")
  if kind not in KINDS:
    raise ValueError(f"--config.{field}={data!r}: unknown source kind {kind!r}; use one of "
                     f"{', '.join(config_lib.SOURCE_FORMS)}.")
  if kind == "synthetic":
    return SourceSpec(kind, "", rest or default_split, data)
  if not sep or not rest:
    what, form = ("data set", "NAME[:SPLIT]") if kind == "tfds" else (
        "path", "PATH" if kind in ("csv", "folder") else "PATTERN")
    raise ValueError(f"--config.{field}={data!r} names no {what}; write it as {kind}:{form}.")
  if kind == "tfds":
    match = _TFDS_NAME.fullmatch(rest)
    if not match:
      raise ValueError(f"--config.{field}={data!r}: cannot read a TFDS name from {rest!r}; "
                       "write tfds:NAME[:SPLIT], e.g. tfds:coco_captions:train.")
    return SourceSpec(kind, match["name"], match["split"] or default_split, data)
  return SourceSpec(kind, rest, "", data)
