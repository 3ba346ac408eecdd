"""AdamW with CLIP's weight-decay exclusions, the LR schedule, and the EMA momentum schedule."""
import re

import jax
import jax.numpy as jnp
import ml_collections
import optax

from maskclip_jax.pytree_paths import path_name

# No decay on biases, norm gains/biases, position/class embeddings, the logit scale (and
# SigLIP's logit bias), and the learned mask token/embedding (DESIGN.md). The token embedding
# decays, as in CLIP/open_clip.
NO_DECAY_REGEX = (r"(^|/)(bias|scale|logit_scale|logit_bias|class_embedding|positional_embedding|"
                  r"mask_token|text_mask_embedding)$")


def optimizer_config_defaults() -> ml_collections.ConfigDict:
  """The `config.optim` section, with the paper's AdamW values."""
  return ml_collections.ConfigDict(dict(
      lr=5e-4, warmup_steps=0, b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.5,
      grad_clip_norm=ml_collections.config_dict.placeholder(float),  # None: no clipping.
      no_decay_regex=NO_DECAY_REGEX,
  ))


def weight_decay_mask(params, no_decay_regex: str = NO_DECAY_REGEX):
  """True for the parameters that decay."""
  pattern = re.compile(no_decay_regex)
  return jax.tree_util.tree_map_with_path(lambda p, _: not pattern.search(path_name(p)), params)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up from 0, then cosine decay to 0 at `config.total_steps`."""
  warmup = config.optim.warmup_steps
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.optim.lr, warmup_steps=warmup,
      decay_steps=max(config.total_steps, warmup + 1), end_value=0.0)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  optim = config.optim
  adamw = optax.adamw(
      learning_rate_schedule(config), b1=optim.b1, b2=optim.b2, eps=optim.eps,
      weight_decay=optim.weight_decay,
      mask=lambda params: weight_decay_mask(params, optim.no_decay_regex))
  if optim.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), adamw)
  return adamw


def ema_momentum(step: jax.Array, total_steps: int, start: float, end: float = 1.0
                 ) -> jax.Array:
  """Cosine schedule of the teacher's momentum: `start` at step 0, `end` at `total_steps`."""
  progress = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
  return end - (end - start) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0
