"""Webdataset tar shards read with TF ops only, so a pipeline over them can save its position.

TF has no tar reader, and `from_generator` / `py_function` readers make a tf.data iterator
unsaveable. A tar file is simple enough to parse with vectorised string ops: members are 512-byte
header blocks followed by their data, padded to 512 bytes. We read the whole shard, find header
blocks (ustar magic + a valid checksum) and keep those that a previous header's size chains to,
so bytes inside a JPEG that happen to look like a header are not taken for one. The result is one
row per sample, grouped like webdataset: consecutive members that share a key (the path up to the
first dot of the file name) form one sample, the rest of the name is the extension.

A file that is empty or no tar at all gives one marker row instead of samples, and a warning
naming it (see `shard_dataset`); the pipeline counts these bad shards.

A shard is held in memory while it is read (shards of img2dataset are 0.1-1 GB); shards must be
below 2 GiB, the limit of TF's string length.

A sample is returned with `ok` = False, to be skipped and counted, when its image or caption
member is missing, empty or cut off by the end of the file. Samples that lie wholly after the
point where a shard was cut cannot be seen, and so cannot be counted.
"""
import sys

import tensorflow as tf

_BLOCK = 512
_NOT_FOUND = tf.int64.max
# webdataset's `base_plus_ext`: key = directories + file name up to its first dot.
_KEY_AND_EXT = r"^((?:.*/|)[^.]+)\.([^/]*)$"


def _parse_octal(fields: tf.Tensor) -> tf.Tensor:
  """(N, W) uint8 tar number fields (octal digits, NUL/space padded) -> (N,) int64."""
  fields = tf.cast(fields, tf.int64)
  is_digit = (fields >= ord("0")) & (fields <= ord("7"))
  digits = tf.where(is_digit, fields - ord("0"), 0)
  # Each digit's weight is 8 ** (number of digits to its right).
  digits_after = tf.cumsum(tf.cast(is_digit, tf.int64), axis=1, reverse=True, exclusive=True)
  weights = tf.bitwise.left_shift(tf.ones_like(digits_after), 3 * digits_after)
  return tf.reduce_sum(digits * weights, axis=1)


def _keep(mask: tf.Tensor, *tensors: tf.Tensor):
  """The rows of each tensor where `mask` is true (one index computation for all of them).

  (tf.boolean_mask does the same but is several times slower to build into a graph, which
  happens at every pipeline build.)
  """
  index = tf.reshape(tf.where(mask), [-1])
  kept = tuple(tf.gather(t, index) for t in tensors)
  return kept[0] if len(kept) == 1 else kept


def _strip_nul(strings: tf.Tensor) -> tf.Tensor:
  return tf.strings.regex_replace(strings, "(?s)\x00.*", "")


def _members(data: tf.Tensor):
  """Regular-file members of a tar held in `data` -> (names, data offsets, sizes, truncated)."""
  length = tf.cast(tf.strings.length(data), tf.int64)
  block_offsets = tf.range(length // _BLOCK, dtype=tf.int64) * _BLOCK
  magic = tf.strings.substr(data, block_offsets + 257, tf.fill(tf.shape(block_offsets),
                                                               tf.constant(5, tf.int64)))
  offsets = _keep(tf.equal(magic, b"ustar"), block_offsets)
  headers = tf.strings.substr(data, offsets, tf.fill(tf.shape(offsets), tf.constant(_BLOCK,
                                                                                     tf.int64)))
  raw = tf.reshape(tf.io.decode_raw(headers, tf.uint8), [-1, _BLOCK])
  # The checksum is the byte sum of the header with its own 8-byte field read as spaces.
  computed = (tf.reduce_sum(tf.cast(raw, tf.int64), axis=1) -
              tf.reduce_sum(tf.cast(raw[:, 148:156], tf.int64), axis=1) + 8 * ord(" "))
  is_header = tf.equal(_parse_octal(raw[:, 148:156]), computed)
  offsets, headers, raw = _keep(is_header, offsets, headers, raw)

  sizes = _parse_octal(raw[:, 124:136])
  data_offsets = offsets + _BLOCK
  next_offsets = data_offsets + (sizes + _BLOCK - 1) // _BLOCK * _BLOCK
  # Keep the headers that the archive's chain of sizes reaches: the first one at offset 0, and
  # any that some header's padded data ends at.
  # (A final int64.max keeps every searchsorted position a valid index.)
  sorted_next = tf.concat([tf.sort(next_offsets), [tf.int64.max]], axis=0)
  position = tf.searchsorted(sorted_next, offsets)
  chained = tf.equal(tf.gather(sorted_next, position), offsets) | tf.equal(offsets, 0)
  headers, data_offsets, sizes = _keep(chained, headers, data_offsets, sizes)

  type_flags = tf.strings.substr(headers, 156, 1)
  names = _strip_nul(tf.strings.substr(headers, 0, 100))
  # POSIX ustar splits long paths into prefix (345..500) + name; GNU tar uses those bytes for
  # other fields, so the prefix is only read under the POSIX magic.
  is_posix = tf.equal(tf.strings.substr(headers, 257, 8), b"ustar\x0000")
  prefixes = _strip_nul(tf.strings.substr(headers, 345, 155))
  names = tf.where(is_posix & (tf.strings.length(prefixes) > 0),
                   tf.strings.join([prefixes, names], separator="/"), names)
  truncated = data_offsets + sizes > length
  # Long names: a GNU 'L' member or a PAX 'x' header with a `path=` record names the next member.
  # (Only those records are read: scanning every member's data would cost more than the rest.)
  is_name_record = (tf.equal(type_flags, b"L") | tf.equal(type_flags, b"x")) & ~truncated
  contents = tf.strings.substr(data, tf.where(is_name_record, data_offsets, 0),
                               tf.where(is_name_record, sizes, 0))
  gnu_names = _strip_nul(contents)
  pax_has_path = tf.strings.regex_full_match(contents, r"(?s)(?:.*\n)?\d+ path=[^\n]*\n.*")
  pax_names = tf.strings.regex_replace(contents, r"(?s)^(?:.*\n)?\d+ path=([^\n]*)\n.*$", r"\1")
  long_names = tf.where(tf.equal(type_flags, b"L"), gnu_names,
                        tf.where(tf.equal(type_flags, b"x") & pax_has_path, pax_names, b""))
  long_names = tf.concat([[b""], long_names[:-1]], axis=0)
  names = tf.where(tf.strings.length(long_names) > 0, long_names, names)

  is_file = (tf.equal(type_flags, b"0") | tf.equal(type_flags, b"\x00") |
             tf.equal(type_flags, b"7"))
  return _keep(is_file, names, data_offsets, sizes, truncated)


def _first_in_segment(member_matches, segment_ids, num_segments):
  """Index of the first member of each sample with `member_matches`, or _NOT_FOUND."""
  index = tf.range(tf.size(member_matches, out_type=tf.int64), dtype=tf.int64)
  return tf.math.unsorted_segment_min(tf.where(member_matches, index, _NOT_FOUND),
                                      segment_ids, num_segments)


def read_samples(data: tf.Tensor, image_exts: tuple[str, ...], caption_ext: str):
  """One tar shard's bytes -> dict of per-sample tensors: key, image, caption (bytes), ok (bool).

  `image_exts` are tried as extensions of the sample's members (first member in the tar that
  has any of them); `caption_ext` names the caption member (utf-8 text).
  """
  names, offsets, sizes, truncated = _members(data)
  has_key = tf.strings.regex_full_match(names, _KEY_AND_EXT)
  names, offsets, sizes, truncated = _keep(has_key, names, offsets, sizes, truncated)
  keys = tf.strings.regex_replace(names, _KEY_AND_EXT, r"\1")
  exts = tf.strings.lower(tf.strings.regex_replace(names, _KEY_AND_EXT, r"\2"))

  starts_sample = tf.concat([tf.ones_like(keys[:1], tf.bool),
                             tf.not_equal(keys[1:], keys[:-1])], axis=0)
  segment_ids = tf.cumsum(tf.cast(starts_sample, tf.int64)) - 1
  num_samples = tf.reduce_sum(tf.cast(starts_sample, tf.int64))
  is_image = tf.reduce_any(tf.equal(exts[:, None], tf.constant(list(image_exts))[None, :]), axis=1)
  image_index = _first_in_segment(is_image, segment_ids, num_samples)
  caption_index = _first_in_segment(tf.equal(exts, caption_ext), segment_ids, num_samples)

  def member_bytes(index):
    found = index != _NOT_FOUND
    safe = tf.where(found, index, 0)
    readable = found & ~tf.gather(truncated, safe) & (tf.gather(sizes, safe) > 0)
    content = tf.strings.substr(data, tf.where(readable, tf.gather(offsets, safe), 0),
                                tf.where(readable, tf.gather(sizes, safe), 0))
    return content, readable

  image, image_ok = member_bytes(image_index)
  caption, caption_ok = member_bytes(caption_index)
  sample_keys = _keep(starts_sample, keys)
  return {"key": sample_keys, "image": image, "caption": caption, "ok": image_ok & caption_ok}


def shard_problem(data: tf.Tensor) -> tf.Tensor:
  """'' for a shard's bytes that start as a tar does, else why not (a tf.string scalar).

  A tar starts with a member's header (ustar magic and a valid checksum) or, when it holds
  nothing, the end-of-archive zero block. Anything else (an empty file, a compressed tar, an
  HTML error page saved as a shard...) gives no samples at all, and is a bad shard.
  """
  length = tf.strings.length(data)
  first = tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, _BLOCK),
                                             b"\0" * _BLOCK]), 0, _BLOCK)
  raw = tf.cast(tf.io.decode_raw(first, tf.uint8), tf.int64)
  computed = tf.reduce_sum(raw) - tf.reduce_sum(raw[148:156]) + 8 * ord(" ")
  is_header = (tf.equal(tf.strings.substr(first, 257, 5), b"ustar") &
               tf.equal(_parse_octal(raw[None, 148:156])[0], computed))
  is_end = tf.reduce_all(tf.equal(raw, 0))
  return tf.where(tf.equal(length, 0), "empty file",
                  tf.where((length >= _BLOCK) & (is_header | is_end), "",
                           "not an uncompressed tar file"))


def shard_dataset(path: tf.Tensor, image_exts: tuple[str, ...], caption_ext: str):
  """A tf.data.Dataset over the samples of the tar shard at `path` (any tf.io.gfile path).

  Rows are `read_samples`' plus `bad_shard` (bool). A shard that is no tar (`shard_problem`),
  or that is gone since the files were listed, gives one row instead, with `bad_shard` True,
  `ok` False and `key` = 'PATH: why', and a warning on stderr saying the same; the pipeline
  counts such rows as bad shards.
  (The bytes are read inside this function, not as a dataset element, so that a saved position
  holds the path and an index, not the shard.)
  """
  # matching_files is the graph op that can tell a missing file without failing (a name with
  # glob characters is taken as it is).
  is_literal = ~tf.strings.regex_full_match(path, r"(?s).*[*?\[].*")
  found = tf.cond(is_literal, lambda: tf.size(tf.io.matching_files(path)) > 0,
                  lambda: tf.constant(True))
  data = tf.cond(found, lambda: tf.io.read_file(path), lambda: tf.constant(b""))
  problem = tf.where(found, shard_problem(data), "missing, deleted since the files were listed")
  is_bad = tf.strings.length(problem) > 0
  description = tf.strings.join([path, problem], separator=": ")
  # A warning on stderr each time a bad shard is read (once an epoch), naming it: TF ops only,
  # so the pipeline stays saveable. The pipeline counts the marker row.
  warned = tf.cond(is_bad, lambda: _warn(description), tf.no_op)
  samples = read_samples(data, image_exts, caption_ext)
  samples["bad_shard"] = tf.zeros_like(samples["ok"])
  marker = {"key": description[None], "image": tf.constant([b""]),
            "caption": tf.constant([b""]), "ok": tf.constant([False]),
            "bad_shard": tf.constant([True])}
  num_markers = tf.cast(is_bad, tf.int32)
  with tf.control_dependencies([warned]):
    rows = {name: tf.concat([samples[name], marker[name][:num_markers]], axis=0)
            for name in samples}
  return tf.data.Dataset.from_tensor_slices(rows)


def _warn(description: tf.Tensor) -> tf.Operation:
  return tf.print("WARNING: bad shard", description, "- it gives no samples; it is skipped "
                  "and counted (bad shards).", output_stream=sys.stderr)
