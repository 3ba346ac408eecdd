"""Input pipelines: sources, tf.data preprocessing, the CLIP tokenizer, host -> device batches.

Nothing is imported here on purpose: `config`, `tokenizer` and `device_put`
must stay importable without tensorflow (export and evaluation code use them next to torch, and
importing tensorflow before torch crashes), so import the module you need, e.g.
`from maskclip_jax.data import pipeline`.
"""
