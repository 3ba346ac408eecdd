"""The CLIP byte-level BPE tokenizer, id for id the same as `open_clip.tokenize`.

Pure Python + numpy (no tensorflow, no torch), so the zero-shot evaluator and the PyTorch export
code can use it too. The vocabulary ships with the package (`assets/`, MIT licence, from OpenAI's
CLIP via open_clip), so nothing is ever downloaded.

The algorithm is OpenAI's `SimpleTokenizer` with open_clip's defaults (clean='lower', truncation
that keeps EOT last, zero padding). It cannot be expressed in TF ops alone: `ftfy.fix_text` repairs
mojibake with heuristics that have no TF equivalent, and any difference there would give ids that
differ from open_clip's. The input pipeline therefore calls it once per batch from a stateless
`tf.numpy_function` (see pipeline.py for why that keeps the pipeline's position saveable).
"""
import functools
import gzip
import html
import importlib.resources

import ftfy
import numpy as np
import regex

from maskclip_jax.models.vocabulary import EOT_ID, SOT_ID, VOCAB_SIZE

CONTEXT_LENGTH = 77
# The special tokens' strings; their ids, SOT_ID and EOT_ID, are models/vocabulary.py's.
SOT_TEXT = "<start_of_text>"
EOT_TEXT = "<end_of_text>"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# The BPE cache is per word; captions of a web-scale data set hold millions of distinct words, so
# it is bounded (open_clip's grows without limit). When full it is cleared: cheap and good enough,
# the common words come back within a few batches.
_MAX_CACHED_WORDS = 500_000


@functools.lru_cache()
def _bytes_to_unicode() -> dict[int, str]:
  """Maps each byte to a printable unicode character (OpenAI's reversible byte encoding)."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
               list(range(ord("®"), ord("ÿ") + 1)))
  byte_values = printable[:]
  chars = printable[:]
  n = 0
  for b in range(256):
    if b not in byte_values:
      byte_values.append(b)
      chars.append(256 + n)
      n += 1
  return dict(zip(byte_values, map(chr, chars)))


def clean_caption(text: str) -> str:
  """CLIP's text cleaning: fix mojibake (ftfy), unescape HTML twice, collapse whitespace, lower."""
  text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  return " ".join(text.split()).strip().lower()


def default_vocab_path():
  return importlib.resources.files("maskclip_jax.data").joinpath("assets", VOCAB_FILE)


class ClipTokenizer:
  """Turns captions into (N, context_length) int32 CLIP token ids."""

  def __init__(self, vocab_path=None, context_length: int = CONTEXT_LENGTH):
    vocab_path = vocab_path or default_vocab_path()
    with vocab_path.open("rb") if hasattr(vocab_path, "open") else open(vocab_path, "rb") as f:
      lines = gzip.decompress(f.read()).decode("utf-8").split("\n")
    # Line 0 is a version header; CLIP uses the first 48894 merges (49408 - 256 - 256 - 2).
    merges = [tuple(line.split()) for line in lines[1:VOCAB_SIZE - 256 - 256 - 2 + 1]]
    self.byte_encoder = _bytes_to_unicode()
    byte_chars = list(self.byte_encoder.values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += [SOT_TEXT, EOT_TEXT]
    if len(vocab) != VOCAB_SIZE:
      raise ValueError(f"{vocab_path} gives a vocabulary of {len(vocab)} tokens, CLIP has "
                       f"{VOCAB_SIZE}: it is not the CLIP BPE file {VOCAB_FILE}.")
    self.encoder = {token: i for i, token in enumerate(vocab)}
    self.decoder = vocab
    self.bpe_ranks = {merge: rank for rank, merge in enumerate(merges)}
    self.context_length = context_length
    self._special = {SOT_TEXT: SOT_TEXT, EOT_TEXT: EOT_TEXT}
    self._cache = dict(self._special)
    # Same pattern and flags as CLIP: the special tokens, English contractions, letter runs,
    # single digits, and runs of other non-space characters.
    self._word_pattern = regex.compile(
        SOT_TEXT + "|" + EOT_TEXT +
        r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)

  def _bpe(self, word: str) -> str:
    """Merges the characters of one byte-encoded word; returns space-separated vocab tokens."""
    cached = self._cache.get(word)
    if cached is not None:
      return cached
    symbols = tuple(word[:-1]) + (word[-1] + "</w>",)
    while len(symbols) > 1:
      pairs = set(zip(symbols[:-1], symbols[1:]))
      best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
      if best not in self.bpe_ranks:
        break
      first, second = best
      merged = []
      i = 0
      while i < len(symbols):
        if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = tuple(merged)
    result = " ".join(symbols)
    if len(self._cache) >= _MAX_CACHED_WORDS:
      self._cache = dict(self._special)
    self._cache[word] = result
    return result

  def encode(self, text: str) -> list[int]:
    """Token ids of one caption, without SOT/EOT and without truncation."""
    ids = []
    for word in self._word_pattern.findall(clean_caption(text)):
      word = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
      ids.extend(self.encoder[token] for token in self._bpe(word).split(" "))
    return ids

  def decode(self, ids) -> str:
    """Inverse of `encode` up to cleaning; SOT, EOT and padding (0 after EOT) are dropped."""
    byte_decoder = {c: b for b, c in self.byte_encoder.items()}
    tokens = []
    for i in ids:
      i = int(i)
      if i == EOT_ID:
        break
      if i != SOT_ID:
        tokens.append(self.decoder[i])
    data = bytearray(byte_decoder[c] for c in "".join(tokens))
    return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()

  def __call__(self, texts, context_length: int | None = None) -> np.ndarray:
    """(N, context_length) int32 ids: SOT, tokens, EOT, zeros; too long -> cut, EOT kept last.

    `texts` is a str, or a sequence of str or utf-8 bytes (what tf.data hands over); bytes that
    are not valid utf-8 are replaced, as a caption must never stop training.
    """
    context_length = context_length or self.context_length
    if isinstance(texts, (str, bytes)):
      texts = [texts]
    texts = list(texts)
    out = np.zeros((len(texts), context_length), np.int32)
    for row, text in enumerate(texts):
      if isinstance(text, (bytes, np.bytes_)):
        text = bytes(text).decode("utf-8", errors="replace")
      ids = [SOT_ID] + self.encode(text) + [EOT_ID]
      if len(ids) > context_length:
        ids = ids[:context_length]
        ids[-1] = EOT_ID
      out[row, :len(ids)] = ids
    return out


@functools.lru_cache(maxsize=None)
def get_tokenizer(context_length: int = CONTEXT_LENGTH) -> ClipTokenizer:
  """The process-wide tokenizer over the shipped vocabulary (built once: ~1 s)."""
  return ClipTokenizer(context_length=context_length)


def tokenize(texts, context_length: int = CONTEXT_LENGTH) -> np.ndarray:
  """Drop-in for `open_clip.tokenize`, returning int32 numpy instead of an int64 torch tensor."""
  return get_tokenizer(context_length)(texts, context_length)
