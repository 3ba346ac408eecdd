"""The text tower: CLIP's causal text transformer, laid out like open_clip's."""
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskclip_jax.models.transformer import Transformer, layer_norm, text_block_init


class TextTransformer(nn.Module):
  """token_embedding + positional_embedding -> causal blocks -> ln_final -> EOT @ projection.

  The pooled token is the EOT token, found as the argmax of the ids (EOT, vocabulary.EOT_ID, is
  the largest id in CLIP's vocabulary), as in CLIP and open_clip.
  """
  vocab_size: int
  context_length: int
  width: int
  layers: int
  heads: int
  output_dim: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  attention: str = "einsum"
  scan: bool = False
  remat: Any = "none"  # transformer.REMAT_POLICIES

  @nn.compact
  def __call__(self, text: jax.Array, replace_with_embedding: Optional[jax.Array] = None,
               replacement_embedding: Optional[jax.Array] = None
               ) -> Tuple[jax.Array, jax.Array]:
    """text (B, L) int ids -> (embedding (B, output_dim), tokens (B, L, width)).

    The MLM branch passes `replace_with_embedding` (B, L) bool and `replacement_embedding`
    (width,): CLIP's vocabulary has no [MASK] token, so masked slots get a learned embedding
    (kept outside this tower) instead of a token id, and the tower stays open_clip-shaped.
    """
    batch, length = text.shape
    if length > self.context_length:
      raise ValueError(f"text length {length} exceeds context_length {self.context_length}")
    token_embedding = nn.Embed(self.vocab_size, self.width,
                               embedding_init=nn.initializers.normal(0.02),
                               name="token_embedding")
    positional_embedding = self.param("positional_embedding", nn.initializers.normal(0.01),
                                      (self.context_length, self.width))
    x = token_embedding(text)
    if replace_with_embedding is not None:
      x = jnp.where(replace_with_embedding[..., None], replacement_embedding, x)
    x = x + positional_embedding[:length]
    x = Transformer(self.layers, self.heads, self.mlp_ratio, self.dtype, self.attention,
                    is_causal=True, scan=self.scan, remat=self.remat,
                    block_init=text_block_init(self.width, self.layers),
                    name="transformer")(x)
    tokens = layer_norm("ln_final", self.dtype)(x)
    pooled = tokens[jnp.arange(batch), jnp.argmax(text, axis=-1)]
    text_projection = self.param("text_projection", nn.initializers.normal(self.width ** -0.5),
                                 (self.width, self.output_dim))
    return pooled @ text_projection, tokens
