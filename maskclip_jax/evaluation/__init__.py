"""Evaluators: zero-shot classification, image-text retrieval, linear probe and k-NN.

Configured in `config.evals` (see `config.eval_config`), run by the trainer every N steps and
at the end (`registry.Evaluations`), and on a saved checkpoint by `maskclip-eval`.
"""
from maskclip_jax.evaluation.config import eval_config  # noqa: F401 (config files use it)
