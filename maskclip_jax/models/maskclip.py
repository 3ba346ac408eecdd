"""MaskCLIP: the two CLIP towers, the temperature, and the distillation decoders and heads.

Top-level parameter collections:
  visual, text, logit_scale      the CLIP model (what open_clip export writes);
  logit_bias                     the sigmoid (SigLIP) loss's bias, with contrastive_loss='sigmoid';
  codeword_head                  K soft codewords (image target `codeword`), shared by student
                                 and teacher (the teacher holds an EMA copy);
  image_decoder, image_predictor the student's masked-patch decoder (+ the `feature`/`pixel`
                                 regression head);
  text_decoder, text_mask_embedding  the MLM decoder and the learned [MASK] input embedding.
The distillation parts exist only when their branch is on, so a CLIP baseline has none.
"""
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from maskclip_jax.models.decoders import ImageDistillDecoder, TextMLMDecoder
from maskclip_jax.models.sizes import DecoderSpec, TextSpec, VisionSpec, resolve_specs
from maskclip_jax.models.text import TextTransformer
from maskclip_jax.models.transformer import logits_dense
from maskclip_jax.models.vit import VisionTransformer

DISTILL_TARGETS = ("codeword", "feature", "pixel")
CONTRASTIVE_LOSSES = ("softmax", "sigmoid")
# 'ema': the paper's mean teacher; 'online': a stop-gradient copy of the online tower.
TEACHER_KINDS = ("ema", "online")
# SigLIP's initial temperature and bias (Zhai et al. 2023): t' = log 10, b = -10.
SIGLIP_LOGIT_SCALE_INIT = math.log(10.0)
SIGLIP_LOGIT_BIAS_INIT = -10.0
CLIP_COLLECTIONS = ("visual", "text", "logit_scale")
# What the EMA teacher holds: the image tower, and the codeword head when there is one.
TEACHER_COLLECTIONS = ("visual", "codeword_head")


class MaskCLIP(nn.Module):
  embed_dim: int
  vision: VisionSpec
  text_spec: TextSpec
  image_decoder_spec: DecoderSpec
  text_decoder_spec: DecoderSpec
  image_distill: bool = True
  text_mlm: bool = True
  distill_target: str = "codeword"
  num_codewords: int = 8192
  # FLIP / A-CLIP: the online image tower runs once, on the visible patches, for both the
  # contrastive loss and the decoder (see `encode_image_masked`).
  contrastive_on_visible: bool = False
  contrastive_loss: str = "softmax"
  dtype: Any = jnp.float32
  attention: str = "einsum"
  scan_layers: bool = False
  remat: Any = "none"  # transformer.REMAT_POLICIES

  def setup(self):
    common = dict(dtype=self.dtype, attention=self.attention)
    tower = dict(common, scan=self.scan_layers, remat=self.remat)
    v, t = self.vision, self.text_spec
    self.visual = image_tower(self)
    self.text = TextTransformer(t.vocab_size, t.context_length, t.width, t.layers, t.heads,
                                self.embed_dim, t.mlp_ratio, **tower)
    sigmoid = self.contrastive_loss == "sigmoid"
    # CLIP's init, 1 / 0.07 (SigLIP's: 10), stored as its log.
    self.logit_scale = self.param(
        "logit_scale", nn.initializers.constant(
            SIGLIP_LOGIT_SCALE_INIT if sigmoid else math.log(1 / 0.07)), ())
    if sigmoid:
      self.logit_bias = self.param("logit_bias",
                                   nn.initializers.constant(SIGLIP_LOGIT_BIAS_INIT), ())
    if self.image_distill:
      d = self.image_decoder_spec
      codewords = self.distill_target == "codeword"
      self.image_decoder = ImageDistillDecoder(
          d.width, d.layers, d.heads, v.num_patches, d.mlp_ratio,
          output_width=v.width if codewords else None, **common)
      if codewords:
        self.codeword_head = codeword_head(self)
      else:
        out = v.width if self.distill_target == "feature" else v.patch_size ** 2 * 3
        self.image_predictor = logits_dense(out, d.width, dtype=self.dtype)
    if self.text_mlm:
      d = self.text_decoder_spec
      self.text_decoder = TextMLMDecoder(d.width, d.layers, d.heads, t.vocab_size,
                                         d.mlp_ratio, **common)
      self.text_mask_embedding = self.param("text_mask_embedding",
                                            nn.initializers.normal(0.02), (t.width,))

  def encode_image(self, images, visible_idx=None):
    return self.visual(images, visible_idx)

  def encode_text(self, text):
    return self.text(text)

  def encode_image_masked(self, images, visible_idx, masked_idx):
    """The online image tower once on the visible patches: (embedding of its class token,
    the student's predictions at `masked_idx`, or None without the image branch)."""
    embedding, tokens = self.visual(images, visible_idx)
    if not self.image_distill:
      return embedding, None
    decoded = self.image_decoder(tokens, visible_idx, masked_idx)
    if self.distill_target == "codeword":
      return embedding, self.codeword_head(decoded)
    return embedding, self.image_predictor(decoded)

  def predict_masked_patches(self, images, visible_idx, masked_idx):
    """The student: encode the visible patches, decode, and head at the masked patches.

    Returns codeword logits (B, M, K) for `codeword`, predicted features (B, M, D) for
    `feature`, predicted patch pixels (B, M, p*p*3) for `pixel`.
    """
    return self.encode_image_masked(images, visible_idx, masked_idx)[1]

  def predict_masked_tokens(self, masked_text, replaced, valid, positions):
    """The MLM branch: masked caption -> vocabulary logits (B, P, V) at `positions`."""
    _, tokens = self.text(masked_text, replaced, self.text_mask_embedding)
    return self.text_decoder(tokens, valid, positions)

  def __call__(self, images, text, visible_idx, masked_idx, masked_text, replaced, valid,
               positions):
    """Touches every parameter once: used by `init` only."""
    outputs = [self.encode_image(images)[0], self.encode_text(text)[0], self.logit_scale]
    if self.contrastive_loss == "sigmoid":
      outputs.append(self.logit_bias)
    if self.image_distill:
      outputs.append(self.predict_masked_patches(images, visible_idx, masked_idx))
    if self.text_mlm:
      outputs.append(self.predict_masked_tokens(masked_text, replaced, valid, positions))
    return outputs


# The teacher runs these two alone, on its own parameters (`MaskCLIP.apply` would look for
# every top-level parameter): standalone modules with the same attributes as the model's.
def image_tower(model: MaskCLIP) -> VisionTransformer:
  v = model.vision
  return VisionTransformer(v.patch_size, v.width, v.layers, v.heads, model.embed_dim,
                           v.mlp_ratio, dtype=model.dtype, attention=model.attention,
                           scan=model.scan_layers, remat=model.remat,
                           posemb_init=v.posemb_init)


def codeword_head(model: MaskCLIP) -> nn.Dense:
  """Encoder-width features -> K codeword logits, f32 under any compute dtype (the student's
  decoder output is projected to the encoder's width first)."""
  return logits_dense(model.num_codewords, model.vision.width, dtype=model.dtype)


def build_model(model_config: ml_collections.ConfigDict,
                method_config: ml_collections.ConfigDict) -> MaskCLIP:
  """The model two config sections describe: `config.model` (sizes, compute) and
  `config.maskclip` (the method). A branch whose loss weight is 0 (w_dist, w_mlm) is not built:
  no decoder, no parameters, as in the paper's CLIP baseline. Choices are checked before, by
  config_checks."""
  embed_dim, vision, text, image_decoder, text_decoder = resolve_specs(model_config)
  return MaskCLIP(
      embed_dim=embed_dim, vision=vision, text_spec=text, image_decoder_spec=image_decoder,
      text_decoder_spec=text_decoder,
      image_distill=method_config.w_dist > 0, text_mlm=method_config.w_mlm > 0,
      distill_target=method_config.distill_target,
      num_codewords=method_config.num_codewords,
      # .get: configs saved before these fields existed still load for export and evaluation.
      contrastive_on_visible=method_config.get("contrastive_on_visible", False),
      contrastive_loss=method_config.get("contrastive_loss", "softmax"),
      dtype=jnp.dtype(model_config.dtype), attention=model_config.attention,
      scan_layers=model_config.scan_layers, remat=model_config.remat)
