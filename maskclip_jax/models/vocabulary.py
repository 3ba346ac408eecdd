"""CLIP's BPE vocabulary: its size and the ids of its two special tokens, defined once.

Imports nothing, so every layer can use it: the text tower and the masking of the pure train
step (which import nothing of the data layer, and so not tensorflow), the tokenizer (data/),
the exporters and the tests. The tokens' strings are the tokenizer's (data/tokenizer.py).

SOT and EOT are the last two ids: EOT is the largest id, so the text tower and the masking find
a caption's EOT as the argmax of its ids, and word tokens are exactly the ids below SOT_ID.
"""
VOCAB_SIZE = 49408
SOT_ID = 49406  # <start_of_text>
EOT_ID = 49407  # <end_of_text>; padding after it is 0.
