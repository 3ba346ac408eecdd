"""Data strings and file patterns: brace ranges, lists, globs, '::', clear errors."""
import pytest

from maskclip_jax.data import file_patterns
from maskclip_jax.data import source_spec


def test_brace_expansion():
  assert file_patterns.expand_braces("s/{00000..00002}.tar") == [
      "s/00000.tar", "s/00001.tar", "s/00002.tar"]
  assert file_patterns.expand_braces("{8..11}") == ["8", "9", "10", "11"]
  assert file_patterns.expand_braces("{3..1}") == ["3", "2", "1"]
  assert file_patterns.expand_braces("{a,b}/{0..1}.tar") == ["a/0.tar", "a/1.tar", "b/0.tar",
                                                              "b/1.tar"]
  assert file_patterns.expand_braces("plain.tar") == ["plain.tar"]


def test_list_files_globs_ranges_and_double_colon(tmp_path):
  for name in ["a-0.tar", "a-1.tar", "a-2.tar", "b-0.tar", "notes.txt"]:
    (tmp_path / name).write_bytes(b"x")
  listed = file_patterns.list_files(f"{tmp_path}/a-{{0..1}}.tar::{tmp_path}/b-*.tar", data="d")
  assert [p.rsplit("/", 1)[1] for p in listed] == ["a-0.tar", "a-1.tar", "b-0.tar"]
  # Overlapping patterns list a file once.
  listed = file_patterns.list_files(f"{tmp_path}/a-*.tar::{tmp_path}/a-0.tar", data="d")
  assert len(listed) == 3


def test_list_files_names_the_pattern_that_matches_nothing(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"'wds:x'.*missing-\{0\.\.3\}\.tar.*expands to 4"):
    file_patterns.list_files(f"{tmp_path}/missing-{{0..3}}.tar", data="wds:x")


@pytest.mark.parametrize("text, kind, location, split", [
    ("synthetic", "synthetic", "", "train"),
    ("synthetic:test", "synthetic", "", "test"),
    ("wds:gs://bucket/{000..009}.tar", "wds", "gs://bucket/{000..009}.tar", ""),
    ("tfrecord:/data/*.tfrecord", "tfrecord", "/data/*.tfrecord", ""),
    ("csv:/data/train.csv", "csv", "/data/train.csv", ""),
    ("tfds:coco_captions", "tfds", "coco_captions", "train"),
    ("tfds:coco_captions:val", "tfds", "coco_captions", "val"),
    ("tfds:mnist:3.0.1:test[:10%]", "tfds", "mnist:3.0.1", "test[:10%]"),
    ("tfds:imagenet2012/subset:validation[:1000]", "tfds", "imagenet2012/subset",
     "validation[:1000]"),
])
def test_source_strings(text, kind, location, split):
  spec = source_spec.parse(text, default_split="train")
  assert (spec.kind, spec.location, spec.split) == (kind, location, split)


@pytest.mark.parametrize("text, message", [
    ("", "is not a data string"), ("webdataset:x", "unknown source kind 'webdataset'"),
    ("wds:", "names no path"), ("tfds", "names no data set"),
])
def test_bad_source_strings_say_what_to_write(text, message):
  with pytest.raises(ValueError, match=message):
    source_spec.parse(text, default_split="train")
