"""The TF-ops tar reader against tar files written by Python's tarfile."""
import io
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from maskclip_jax.data import tar_reader

EXTS = ("jpg", "png", "webp")


def tar_bytes(members, fmt=tarfile.PAX_FORMAT) -> bytes:
  out = io.BytesIO()
  with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      if data is None:  # a directory
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        continue
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return out.getvalue()


def read(data: bytes):
  out = tar_reader.read_samples(tf.constant(data), EXTS, "txt")
  return {k: v.numpy() for k, v in out.items()}


LONG_DIR = "some/deep/" + "directory_" * 12  # > 100 characters: needs a long-name record


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_groups_members_into_samples_like_webdataset(fmt):
  long_dir = LONG_DIR[:90] if fmt == tarfile.USTAR_FORMAT else LONG_DIR  # ustar: prefix field
  members = [
      ("a/0001.jpg", b"J" * 1300), ("a/0001.txt", "first é".encode()), ("a/0001.json", b"{}"),
      ("a/0002.txt", b"no image"),
      ("dir", None),
      (f"{long_dir}/0003.PNG", b"P" * 10), (f"{long_dir}/0003.txt", b"long name"),
      ("0004.jpg", b""), ("0004.txt", b"empty image"),
      ("0005.webp", b"W" * 511), ("0005.seg.png", b"S"), ("0005.txt", b"webp"),
      ("noextension", b"ignored"),
  ]
  out = read(tar_bytes(members, fmt))
  # 'noextension' has no key.ext form: webdataset skips it, and so do we.
  assert [k.decode() for k in out["key"]] == ["a/0001", "a/0002", f"{long_dir}/0003", "0004",
                                              "0005"]
  assert out["ok"].tolist() == [True, False, True, False, True]
  assert out["image"][0] == b"J" * 1300 and out["caption"][0] == "first é".encode()
  assert out["image"][2] == b"P" * 10  # extensions are case-insensitive
  assert out["image"][4] == b"W" * 511 and out["caption"][4] == b"webp"


def test_cut_shard_marks_the_cut_sample_and_loses_what_follows():
  members = [(f"{i:04d}.jpg", bytes([i]) * 700) for i in range(3)]
  members = [m for i in range(3) for m in (members[i], (f"{i:04d}.txt", b"caption"))]
  data = tar_bytes(members)
  full = read(data)
  assert full["ok"].tolist() == [True, True, True]
  cut = data.index(bytes([1]) * 700) + 300  # inside sample 1's image
  out = read(data[:cut])
  assert [k.decode() for k in out["key"]] == ["0000", "0001"]
  assert out["ok"].tolist() == [True, False]
  # A cut inside a header block: the partial header is not read.
  header_start = data.index(b"0002.jpg")
  out = read(data[:header_start + 100])
  assert out["ok"].tolist() == [True, True]


def test_a_header_lookalike_inside_file_data_is_not_a_member():
  fake = tarfile.TarInfo("9999.jpg")
  fake.size = 100
  lookalike = fake.tobuf(format=tarfile.USTAR_FORMAT)
  assert len(lookalike) == 512
  content = b"A" * 512 + lookalike + b"B" * 1000  # the lookalike sits on a 512-byte boundary
  data = tar_bytes([("0001.jpg", content), ("0001.txt", b"one"), ("0002.jpg", b"x"),
                    ("0002.txt", b"two")])
  out = read(data)
  assert [k.decode() for k in out["key"]] == ["0001", "0002"]
  assert out["image"][0] == content and out["ok"].all()


@pytest.mark.parametrize("data", [b"", b"not a tar file" * 100, b"\x00" * 10240])
def test_empty_or_foreign_files_give_no_samples(data):
  out = read(data)
  assert out["key"].shape == (0,) and out["ok"].shape == (0,)


def test_shard_dataset_reads_a_file(tmp_path):
  path = tmp_path / "s.tar"
  path.write_bytes(tar_bytes([("k.jpg", b"img"), ("k.txt", b"cap")]))
  rows = list(tar_reader.shard_dataset(tf.constant(str(path)), EXTS, "txt").as_numpy_iterator())
  assert len(rows) == 1 and rows[0]["image"] == b"img" and rows[0]["caption"] == b"cap"
  assert rows[0]["ok"] == np.True_
