"""The CLIP tokenizer: ids equal open_clip's on a hard corpus; truncation, padding, the vocab."""
import importlib.util
import json
import random
import subprocess
import sys

import numpy as np
import pytest

from maskclip_jax.data import tokenizer

ASCII = [
    "a photo of a cat", "A Photo Of A Dog.", "two dogs playing in the snow",
    "ALL CAPS HEADLINE: MARKET CRASH!!!", "CamelCaseWordsAndsnake_case_words",
    "It's a dog's life; they're sure we'll go, I'd say you've seen I'M here",
    "price: $19.99 (50% off) -- #deal @store", "3.14159 2024-01-01 1,000,000 0x1F",
    "semi;colons, commas... and!?! punctuation???", "tab\tseparated\tvalues",
    "hello   world", "  leading and trailing  ", "new\nline and\r\nwindows line",
    "e-mail me at someone@example.com", "C++ and C# and F#", "under_score and dash-word",
]
ACCENTED = [
    "Café au lait in Paris", "naïve façade with crème brûlée", "São Paulo à noite",
    "Übermäßig große Straße in München", "Ærøskøbing harbour", "Ελληνικά γράμματα",
    "Русский текст про кошку", "Ñandú en la pampa", "Dvořák's Nové světy", "İstanbul ışıkları",
    "ﬁne ﬂowers (ligatures)", "résumé vs resume", "Zoë and Chloë",
]
CJK = [
    "東京タワーの夜景", "一只猫坐在窗台上", "서울의 밤거리", "ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ　１２３",
    "（括弧）と「引用」", "中文, English, 日本語 mixed", "漢字かなカナ", "北京烤鸭 🦆",
]
EMOJI = [
    "🐶🐱 pets", "family 👨‍👩‍👧‍👦 photo", "flags 🇯🇵🇫🇷🇺🇸", "thumbs up 👍🏽👍🏿",
    "❤️ love ❤", "🎉🎉🎉 party time 🎂", "math ∑∫√∞ and arrows →←", "stars ★☆ and ™ ©",
]
HTML = [
    "Tom &amp; Jerry", "&lt;b&gt;bold&lt;/b&gt; text", "it&#39;s &quot;quoted&quot;",
    "&amp;amp; double escaped", "&nbsp;non breaking&nbsp;space", "&eacute;t&eacute; &agrave; Rome",
    "<p>raw <em>html</em> tags</p>", "5 &lt; 6 &gt; 4", "&#x1F600; numeric emoji",
    # With tags present ftfy leaves entities alone, so only CLIP's double unescape decodes them.
    "<b>&amp;amp; twice escaped</b>", "<i>&amp;lt;tag&amp;gt;</i> &amp;quot;", "<br>caf&amp;eacute;",
]
URLS = [
    "https://example.com/path/to/img_001.jpg?q=1&x=2#frag",
    "www.site.org/images/2019/07/IMG_2034.JPG", "http://sub.domain.co.uk:8080/a/b/c.html",
    "ftp://files.example.net/pub/data.tar.gz", "see https://t.co/AbCdEf12 for more",
]
MOJIBAKE_AND_QUOTES = [
    "cafÃ©", "donâ€™t stop", "Ã¼ber cool", "“curly quotes” and ‘single’", "em—dash and … ellipsis",
    "\u201cnested \u2018quotes\u2019\u201d", "zero\u200bwidth space", "soft\u00adhyphen",
    "bell\x07 and null\x00 chars", "\u00a0nbsp\u00a0", "<start_of_text> hi <end_of_text>",
    "<|endoftext|> old style", "٣٤٥ arabic-indic digits", "½ cup and Ⅻ roman",
]
EMPTY = ["", " ", "\n", "\t \n ", "&nbsp;"]


def _long_captions():
  words = "the quick brown fox jumps over the lazy dog".split()
  return [
      " ".join(words * 12),  # ~108 tokens
      "a " * 200,
      "".join(str(i % 10) for i in range(500)),
      "東京" * 100,
      "https://example.com/" + "/".join(f"segment{i}" for i in range(60)),
      "🐶" * 90,
      " ".join(["supercalifragilisticexpialidocious"] * 40),
      "word, " * 76,  # exactly around the boundary
      "x " * 75, "x " * 76, "x " * 77,  # 75 + SOT/EOT = 77 fits; 76 and 77 need truncation
  ]


def corpus(min_size: int = 520) -> list[str]:
  fixed = ASCII + ACCENTED + CJK + EMOJI + HTML + URLS + MOJIBAKE_AND_QUOTES + EMPTY
  fixed += _long_captions()
  # Mixes of the fragments above, so every kind meets every other (e.g. CJK next to entities).
  rng = random.Random(1234)
  fragments = [f for f in fixed if f.strip()]
  mixed = []
  while len(fixed) + len(mixed) < min_size:
    parts = rng.sample(fragments, rng.randint(1, 4))
    mixed.append(rng.choice([" ", "", "  ", ", ", "\n"]).join(parts))
  return fixed + mixed


def open_clip_ids(captions, tmp_path):
  """open_clip.tokenize(captions), run in a fresh process.

  open_clip imports torchvision, and importing torchvision after tensorflow (which other test
  modules load) crashes the process; a subprocess keeps the import order clean.
  """
  if importlib.util.find_spec("open_clip") is None:
    pytest.skip("open_clip is not installed (pip install -e '.[torch]')")
  (tmp_path / "captions.json").write_text(json.dumps(captions))
  code = ("import json, sys, numpy, open_clip; "
          "captions = json.load(open(sys.argv[1])); "
          "numpy.save(sys.argv[2], open_clip.tokenize(captions).numpy())")
  subprocess.run([sys.executable, "-c", code, str(tmp_path / "captions.json"),
                  str(tmp_path / "ids.npy")], check=True)
  return np.load(tmp_path / "ids.npy")


def test_ids_equal_open_clip_on_hard_corpus(tmp_path):
  captions = corpus()
  assert len(captions) >= 500
  ours = tokenizer.tokenize(captions)
  theirs = open_clip_ids(captions, tmp_path)
  mismatched = [c for c, a, b in zip(captions, ours, theirs) if not np.array_equal(a, b)]
  assert not mismatched, f"{len(mismatched)} captions differ, e.g. {mismatched[:3]!r}"
  # The corpus really does exercise truncation and empty captions.
  assert (ours[:, -1] == tokenizer.EOT_ID).sum() >= 8
  assert ((ours == 0).sum(axis=1) == 75).sum() >= len(EMPTY)


def test_known_ids_without_open_clip():
  ids = tokenizer.tokenize(["a photo of a cat", "A PHOTO OF A CAT!", ""])
  assert ids.dtype == np.int32 and ids.shape == (3, 77)
  np.testing.assert_array_equal(ids[0, :7], [49406, 320, 1125, 539, 320, 2368, 49407])
  assert not ids[0, 7:].any()
  np.testing.assert_array_equal(ids[1, :6], ids[0, :6])  # lower-cased
  assert ids[1, 6] != tokenizer.EOT_ID and ids[1, 7] == tokenizer.EOT_ID  # '!' is a token
  np.testing.assert_array_equal(ids[2, :2], [tokenizer.SOT_ID, tokenizer.EOT_ID])
  assert not ids[2, 2:].any()


@pytest.mark.parametrize("num_words, expect_cut", [(75, False), (76, True), (200, True)])
def test_truncation_keeps_eot_last(num_words, expect_cut):
  ids = tokenizer.tokenize(["x " * num_words])[0]
  assert ids[0] == tokenizer.SOT_ID
  assert ids[-1] == tokenizer.EOT_ID
  assert (ids == tokenizer.EOT_ID).sum() == 1
  body = ids[1:-1]
  assert (body == body[0]).all()  # no padding inside: every slot is an 'x'
  if not expect_cut:
    assert len(tokenizer.get_tokenizer().encode("x " * num_words)) == 75


def test_other_context_length_and_bytes_input():
  tok = tokenizer.get_tokenizer()
  ids = tok([b"a photo of a cat", "caf\xc3\xa9".encode("latin-1"), b"\xff\xfe bad utf8"],
            context_length=5)
  assert ids.shape == (3, 5)
  np.testing.assert_array_equal(ids[0], [49406, 320, 1125, 539, 49407])
  assert (ids[2, 0] == tokenizer.SOT_ID) and (tokenizer.EOT_ID in ids[2])


def test_decode_round_trip():
  tok = tokenizer.get_tokenizer()
  for text in ["a small red triangle at the top left", "café 東京 🐶", "it's 3.14"]:
    decoded = tok.decode(tok([text])[0])
    assert decoded.replace(" ", "") == tokenizer.clean_caption(text).replace(" ", "")


def test_vocab_ships_with_the_package_and_has_clip_size():
  path = tokenizer.default_vocab_path()
  assert path.is_file()
  licence = path.parent.joinpath("README.md").read_text()
  assert "MIT" in licence
  tok = tokenizer.get_tokenizer()
  assert len(tok.encoder) == tokenizer.VOCAB_SIZE
  assert tok.encoder[tokenizer.SOT_TEXT] == tokenizer.SOT_ID
  assert tok.encoder[tokenizer.EOT_TEXT] == tokenizer.EOT_ID == len(tok.decoder) - 1  # largest


def test_wrong_vocab_file_is_refused(tmp_path):
  import gzip
  bad = tmp_path / "vocab.txt.gz"
  bad.write_bytes(gzip.compress(b"#version\na b\n"))
  with pytest.raises(ValueError, match="not the CLIP BPE file"):
    tokenizer.ClipTokenizer(vocab_path=str(bad))
