"""The two distillation decoders: masked image patches and masked caption tokens."""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskclip_jax.models.transformer import (Transformer, VocabularyHead, layer_norm,
                                               torch_linear)


class ImageDistillDecoder(nn.Module):
  """Student tokens of the visible patches -> features at the masked patches.

  The visible tokens go back to their slots, a learned `mask_token` fills the masked slots,
  decoder position embeddings tell the blocks where each slot is (MAE's decoder).
  With `output_width` set and different from `width` (a narrow MAE-style decoder), a linear
  `decoder_pred` maps the output back to that width: the codeword head is shared with the
  teacher, which applies it to encoder-width features.
  """
  width: int
  layers: int
  heads: int
  num_patches: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention: str = "einsum"
  output_width: Optional[int] = None

  @nn.compact
  def __call__(self, tokens: jax.Array, visible_idx: jax.Array, masked_idx: jax.Array
               ) -> jax.Array:
    """tokens (B, 1 + K, D_enc), visible_idx (B, K), masked_idx (B, M) -> (B, M, D_out),
    D_out = output_width or width."""
    batch = tokens.shape[0]
    if tokens.shape[-1] != self.width:
      tokens = torch_linear(self.width, "decoder_embed", self.dtype)(tokens)
    mask_token = self.param("mask_token", nn.initializers.normal(0.02), (self.width,))
    patches = jnp.broadcast_to(mask_token.astype(tokens.dtype),
                               (batch, self.num_patches, self.width))
    patches = patches.at[jnp.arange(batch)[:, None], visible_idx].set(tokens[:, 1:])
    x = jnp.concatenate([tokens[:, :1], patches], axis=1)
    positional_embedding = self.param("positional_embedding", nn.initializers.normal(0.02),
                                      (self.num_patches + 1, self.width))
    x = x.astype(jnp.float32) + positional_embedding  # the residual stream stays f32
    x = Transformer(self.layers, self.heads, self.mlp_ratio, self.dtype, self.attention,
                    name="transformer")(x)
    x = layer_norm("ln_post", self.dtype)(x)
    x = jnp.take_along_axis(x[:, 1:], masked_idx[:, :, None], axis=1)
    if self.output_width and self.output_width != self.width:
      x = torch_linear(self.output_width, "decoder_pred", self.dtype)(x)
    return x


class TextMLMDecoder(nn.Module):
  """Text tower tokens of the masked caption -> vocabulary logits at the chosen positions.

  Bidirectional blocks (the tower itself is causal) over the real tokens of each caption;
  logits only at the `positions` to predict, so the (B, L, vocab) tensor is never formed.
  """
  width: int
  layers: int
  heads: int
  vocab_size: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention: str = "einsum"

  @nn.compact
  def __call__(self, tokens: jax.Array, valid: jax.Array, positions: jax.Array) -> jax.Array:
    """tokens (B, L, D_text), valid (B, L) bool, positions (B, P) -> logits (B, P, vocab)."""
    if tokens.shape[-1] != self.width:
      tokens = torch_linear(self.width, "decoder_embed", self.dtype)(tokens)
    # Attend to real tokens only: `valid` is a prefix (SOT..EOT), so it is a length per caption
    # (the padding form the fused kernels take).
    lengths = valid.sum(axis=-1).astype(jnp.int32)
    x = Transformer(self.layers, self.heads, self.mlp_ratio, self.dtype, self.attention,
                    name="transformer")(tokens.astype(jnp.float32), lengths)
    x = layer_norm("ln_final", self.dtype)(x)
    x = jnp.take_along_axis(x, positions[:, :, None], axis=1)
    return VocabularyHead(self.vocab_size, self.dtype, name="head")(x)
