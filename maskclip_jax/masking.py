"""Random masks for the two distillation branches, with static shapes for jit.

Both draw from the rng they are given (the train step's), so a run is reproducible and the
masks do not depend on how the batch is sharded (JAX's partitionable threefry).
"""
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from maskclip_jax.models.vocabulary import EOT_ID, SOT_ID, VOCAB_SIZE  # padding is 0


class PatchMask(NamedTuple):
  visible_idx: jax.Array  # (B, K) int32, ascending: the patches the student encodes.
  masked_idx: jax.Array   # (B, M) int32, ascending: the patches it must predict.


def num_masked_patches(num_patches: int, mask_ratio: float) -> int:
  return int(round(mask_ratio * num_patches))


def random_patch_mask(rng: jax.Array, batch_size: int, num_patches: int,
                      mask_ratio: float) -> PatchMask:
  """Per-sample uniform random masking of `round(mask_ratio * num_patches)` patches."""
  num_masked = num_masked_patches(num_patches, mask_ratio)
  if not 0 <= num_masked < num_patches:
    raise ValueError(f"mask_ratio={mask_ratio} masks {num_masked} of {num_patches} patches; "
                     "it must leave at least one visible patch (use a ratio in [0, 1)).")
  noise = jax.random.uniform(rng, (batch_size, num_patches))
  order = jnp.argsort(noise, axis=1).astype(jnp.int32)
  visible_idx = jnp.sort(order[:, num_masked:], axis=1)
  masked_idx = jnp.sort(order[:, :num_masked], axis=1)
  return PatchMask(visible_idx, masked_idx)


class TokenMask(NamedTuple):
  masked_text: jax.Array  # (B, L) ids after the 10% random / 10% kept replacements.
  replaced: jax.Array     # (B, L) bool: slots whose input is the learned [MASK] embedding.
  positions: jax.Array    # (B, P) int32: slots to predict (padded with 0 where weight is 0).
  targets: jax.Array      # (B, P) int32: the original ids there.
  weights: jax.Array      # (B, P) float32: 1 for a real prediction, 0 for padding.
  valid: jax.Array        # (B, L) bool: SOT..EOT, the caption's real tokens.


def max_masked_tokens(context_length: int, mask_ratio: float) -> int:
  """The static number of prediction slots: enough for the longest caption."""
  return max(1, math.ceil(mask_ratio * (context_length - 2)))


def random_token_mask(rng: jax.Array, text: jax.Array, mask_ratio: float = 0.2,
                      vocab_size: int = VOCAB_SIZE, max_predictions: Optional[int] = None
                      ) -> TokenMask:
  """BERT-style masking: `round(mask_ratio * n)` of each caption's n word tokens are chosen
  (at least one); of those 80% become [MASK], 10% a random word token, 10% stay.

  SOT, EOT and padding are never chosen. CLIP's vocabulary has no [MASK] id, so [MASK] is
  returned as the `replaced` flags (the model substitutes a learned embedding there).
  `max_predictions` caps the chosen tokens per caption (BERT's max_predictions_per_seq): the
  vocabulary head runs on that many slots per caption, so a cap near the typical caption's
  count saves most of its cost; the default fits the longest possible caption.
  """
  batch, length = text.shape
  num_slots = max_predictions or max_masked_tokens(length, mask_ratio)
  eot_position = jnp.argmax(text, axis=-1)  # EOT is the largest id.
  index = jnp.arange(length)[None, :]
  valid = index <= eot_position[:, None]
  candidate = valid & (text != SOT_ID) & (text != EOT_ID)
  num_candidates = candidate.sum(axis=1)
  num_chosen = jnp.where(
      num_candidates > 0,
      jnp.clip(jnp.round(mask_ratio * num_candidates), 1, num_slots), 0).astype(jnp.int32)

  pick_rng, kind_rng, token_rng = jax.random.split(rng, 3)
  # Candidates get noise in [0, 1), the rest sort after them.
  noise = jnp.where(candidate, jax.random.uniform(pick_rng, (batch, length)), 2.0)
  positions = jnp.argsort(noise, axis=1)[:, :num_slots].astype(jnp.int32)
  weights = (jnp.arange(num_slots)[None, :] < num_chosen[:, None])
  positions = jnp.where(weights, positions, 0)
  targets = jnp.take_along_axis(text, positions, axis=1)

  chosen = jnp.zeros((batch, length), bool).at[jnp.arange(batch)[:, None], positions].max(
      weights)
  kind = jax.random.uniform(kind_rng, (batch, length))
  replaced = chosen & (kind < 0.8)
  randomised = chosen & (kind >= 0.8) & (kind < 0.9)
  # Random replacements are word tokens: never SOT/EOT, which would move the EOT argmax.
  random_ids = jax.random.randint(token_rng, (batch, length), 0, min(vocab_size, SOT_ID))
  masked_text = jnp.where(randomised, random_ids, text).astype(text.dtype)
  return TokenMask(masked_text, replaced, positions, targets.astype(jnp.int32),
                   weights.astype(jnp.float32), valid)
