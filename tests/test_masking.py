"""Patch and token masking: shapes, coverage, special tokens, the 80/10/10 split."""
import jax
import numpy as np
import pytest

from conftest import random_batch
from maskclip_jax import masking
from maskclip_jax.models.vocabulary import SOT_ID


def test_patch_mask_partitions_patches_per_sample():
  mask = masking.random_patch_mask(jax.random.PRNGKey(0), 16, 196, 0.75)
  assert mask.visible_idx.shape == (16, 49) and mask.masked_idx.shape == (16, 147)
  visible, masked = np.asarray(mask.visible_idx), np.asarray(mask.masked_idx)
  for v, m in zip(visible, masked):
    assert sorted(np.concatenate([v, m]).tolist()) == list(range(196))
    assert (np.diff(v) > 0).all() and (np.diff(m) > 0).all()
  # Random per sample, and reproducible from the rng.
  assert len({tuple(v) for v in visible}) == 16
  again = masking.random_patch_mask(jax.random.PRNGKey(0), 16, 196, 0.75)
  np.testing.assert_array_equal(again.visible_idx, visible)


def test_patch_mask_is_uniform_over_positions():
  mask = masking.random_patch_mask(jax.random.PRNGKey(1), 4000, 16, 0.75)
  frequency = np.bincount(np.asarray(mask.masked_idx).ravel(), minlength=16) / 4000
  np.testing.assert_allclose(frequency, 0.75, atol=0.03)


def test_patch_mask_rejects_a_ratio_that_leaves_nothing_visible():
  with pytest.raises(ValueError, match="at least one visible patch"):
    masking.random_patch_mask(jax.random.PRNGKey(0), 2, 4, 0.9)


def test_token_mask_never_touches_special_tokens_and_padding():
  batch = random_batch(0, batch_size=64, context_length=77, caption_length=60)
  text = batch["text"]
  mask = masking.random_token_mask(jax.random.PRNGKey(0), text, 0.2)
  positions, weights = np.asarray(mask.positions), np.asarray(mask.weights)
  eot = text.argmax(1)
  for i in range(len(text)):
    chosen = positions[i][weights[i] > 0]
    num_words = eot[i] - 1
    assert len(chosen) == max(1, round(0.2 * num_words))
    assert len(set(chosen.tolist())) == len(chosen)
    assert ((chosen >= 1) & (chosen < eot[i])).all()  # never SOT, EOT or padding
    np.testing.assert_array_equal(np.asarray(mask.targets)[i][weights[i] > 0], text[i, chosen])
  changed = (np.asarray(mask.masked_text) != text) | np.asarray(mask.replaced)
  chosen_mask = np.zeros_like(changed)
  for i in range(len(text)):
    chosen_mask[i, positions[i][weights[i] > 0]] = True
  assert not (changed & ~chosen_mask).any()  # nothing outside the chosen slots changes
  np.testing.assert_array_equal(np.asarray(mask.valid), np.arange(77)[None] <= eot[:, None])


def test_token_mask_80_10_10():
  batch = random_batch(1, batch_size=512, context_length=77, caption_length=70)
  text = batch["text"]
  mask = masking.random_token_mask(jax.random.PRNGKey(3), text, 0.2)
  rows = np.repeat(np.arange(len(text))[:, None], mask.positions.shape[1], 1)
  sel = np.asarray(mask.weights) > 0
  rows, cols = rows[sel], np.asarray(mask.positions)[sel]
  replaced = np.asarray(mask.replaced)[rows, cols]
  randomised = ~replaced & (np.asarray(mask.masked_text)[rows, cols] != text[rows, cols])
  assert abs(replaced.mean() - 0.8) < 0.02
  assert abs(randomised.mean() - 0.1) < 0.015  # a random id equal to the original is rare
  assert (np.asarray(mask.masked_text) < SOT_ID)[rows, cols].all()
