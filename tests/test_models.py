"""The towers: open_clip's parameter counts, the MAE-style student, compute options."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskclip_jax.config_defaults import base_config
from maskclip_jax.models import maskclip as maskclip_lib
from maskclip_jax.models.sizes import NAMED_SIZES, canonical_size_name
from maskclip_jax.models import vit
from maskclip_jax.models.transformer import VocabularyHead, torch_linear
from maskclip_jax.models.vit import VisionTransformer
from maskclip_jax.train_step import dummy_inputs

# Measured with open_clip 3.3 (`sum(p.numel())` of create_model(name) and of its .visual).
OPEN_CLIP_COUNTS = {
    "ViT-S/16": (62_257_537, 21_813_504),
    "ViT-B/16": (149_620_737, 86_192_640),
    "ViT-L/14": (427_616_513, 303_966_208),
}


def param_counts(size):
  config = base_config()
  config.model.size = size
  model = maskclip_lib.build_model(config.model, config.maskclip)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *dummy_inputs(model, .75, .2)))
  counts = {name: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
            for name, tree in shapes["params"].items()}
  clip = sum(counts[name] for name in maskclip_lib.CLIP_COLLECTIONS)
  return clip, counts


@pytest.mark.parametrize("size", sorted(OPEN_CLIP_COUNTS))
def test_parameter_counts_equal_open_clip(size):
  clip, counts = param_counts(size)
  assert (clip, counts["visual"]) == OPEN_CLIP_COUNTS[size]
  # The distillation parts exist and are counted apart.
  for name in ("image_decoder", "codeword_head", "text_decoder"):
    assert counts[name] > 0


@pytest.mark.parametrize("size", ["ViT-S/16", "ViT-B/16"])
def test_parameter_counts_equal_installed_open_clip(size):
  open_clip = pytest.importorskip("open_clip")
  torch_model = open_clip.create_model(size.replace("/", "-"))
  expected = (sum(p.numel() for p in torch_model.parameters()),
              sum(p.numel() for p in torch_model.visual.parameters()))
  clip, counts = param_counts(size)
  assert (clip, counts["visual"]) == expected


def test_size_names():
  assert canonical_size_name("ViT-B-16") == "ViT-B/16"
  assert canonical_size_name("vit_l14") == "ViT-L/14"
  assert "ViT-Ti/16" in NAMED_SIZES
  with pytest.raises(ValueError, match="config.model.size='ViT-X/9' is unknown"):
    canonical_size_name("ViT-X/9")


def _captured_sequence_lengths(tiny_config, image_size, patch_size, visible):
  config = tiny_config()
  config.model.vision.update(image_size=image_size, patch_size=patch_size)
  model = maskclip_lib.build_model(config.model, config.maskclip)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), *dummy_inputs(model, .75, .2))
  images = jnp.zeros((2, image_size, image_size, 3))
  visible_idx = jnp.tile(jnp.arange(visible)[None], (2, 1)) if visible else None
  (_, tokens), state = jax.jit(lambda p, x, v: model.apply(
      p, x, v, method=maskclip_lib.MaskCLIP.encode_image, capture_intermediates=True))(
          params, images, visible_idx)
  blocks = state["intermediates"]["visual"]["transformer"]
  return tokens.shape, {name: v["__call__"][0].shape for name, v in blocks.items()
                        if name.startswith("resblocks_")}


def test_student_encodes_only_visible_patches(tiny_config):
  # 224 px / 16 = 196 patches; at mask ratio 0.75 the student keeps 49.
  shape, block_outputs = _captured_sequence_lengths(tiny_config, 224, 16, visible=49)
  assert shape[1] == 1 + 49
  assert block_outputs and all(s[1] == 1 + 49 for s in block_outputs.values())
  shape, block_outputs = _captured_sequence_lengths(tiny_config, 224, 16, visible=None)
  assert all(s[1] == 1 + 196 for s in block_outputs.values())


def test_visible_idx_selects_the_same_features_as_the_full_input_embedding():
  # With zero blocks the tower is embed -> ln -> ln: a visible subset must give exactly the
  # full run's tokens at those patches, so the gather uses the right positions.
  tower = VisionTransformer(patch_size=4, width=16, layers=0, heads=2, output_dim=8)
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  params = jax.jit(tower.init)(jax.random.PRNGKey(0), images)
  visible_idx = jnp.array([[0, 5, 9, 15], [2, 3, 7, 11]])
  _, full = jax.jit(tower.apply)(params, images)
  _, part = jax.jit(tower.apply)(params, images, visible_idx)
  np.testing.assert_allclose(part[:, 1:], jnp.take_along_axis(full[:, 1:], visible_idx[..., None], 1),
                             atol=1e-6)
  np.testing.assert_allclose(part[:, 0], full[:, 0], atol=1e-6)


def test_sincos2d_positional_start_is_mae_table_and_still_a_parameter():
  table = vit.sincos2d_posemb(4, 4, 16)
  assert table.shape == (16, 16)
  # Patch (row 0, column 0): sin 0 = 0 and cos 0 = 1 for both axes.
  np.testing.assert_allclose(table[0], [0] * 4 + [1] * 4 + [0] * 4 + [1] * 4)
  # Moving one column changes only the column half; one row, only the row half.
  np.testing.assert_array_equal(table[1, 8:], table[0, 8:])
  np.testing.assert_array_equal(table[4, :8], table[0, :8])
  assert len({tuple(row) for row in table.round(5)}) == 16  # every patch its own code
  tower = VisionTransformer(patch_size=4, width=16, layers=1, heads=2, output_dim=8,
                            posemb_init="sincos2d")
  params = tower.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  np.testing.assert_array_equal(params["positional_embedding"][0], np.zeros(16))
  np.testing.assert_allclose(params["positional_embedding"][1:], table)
  # The default is open_clip's N(0, width^-0.5), so checkpoints and export see one layout.
  normal = VisionTransformer(patch_size=4, width=16, layers=1, heads=2, output_dim=8).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]["positional_embedding"]
  assert normal.shape == params["positional_embedding"].shape
  assert 0.15 < float(jnp.std(normal)) < 0.35  # 16^-0.5 = 0.25
  with pytest.raises(ValueError, match="width divisible by 4"):
    vit.sincos2d_posemb(4, 4, 18)
  # A grid of 2 x 3 patches: the column code repeats down each column.
  wide = vit.sincos2d_posemb(2, 3, 16)
  assert wide.shape == (6, 16)
  np.testing.assert_array_equal(wide[3, :8], wide[0, :8])


def _apply_both(config, images, text):
  model = maskclip_lib.build_model(config.model, config.maskclip)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), *dummy_inputs(model, .75, .2))
  image_embedding, text_embedding = jax.jit(lambda p: (
      model.apply(p, images, method=maskclip_lib.MaskCLIP.encode_image)[0],
      model.apply(p, text, method=maskclip_lib.MaskCLIP.encode_text)[0]))(params)
  return params, image_embedding, text_embedding


def test_compute_options_agree(tiny_config):
  from conftest import random_batch
  batch = random_batch(0, batch_size=2)
  params, image_ref, text_ref = _apply_both(tiny_config(), batch["image"], batch["text"])

  # jax.nn.dot_product_attention gives the einsum attention's result.
  config = tiny_config()
  config.model.attention = "dot_product_attention"
  _, image_dpa, text_dpa = _apply_both(config, batch["image"], batch["text"])
  np.testing.assert_allclose(image_dpa, image_ref, atol=2e-5)
  np.testing.assert_allclose(text_dpa, text_ref, atol=2e-5)

  # remat changes memory, not results; parameters keep their names.
  for policy in ("full", "dots"):
    config = tiny_config()
    config.model.remat = policy
    params_remat, image_remat, text_remat = _apply_both(config, batch["image"], batch["text"])
    assert jax.tree.structure(params_remat) == jax.tree.structure(params)
    np.testing.assert_allclose(image_remat, image_ref, atol=1e-6)
    np.testing.assert_allclose(text_remat, text_ref, atol=1e-6)

  # scan stacks the blocks' parameters on a leading axis; stacking the unrolled ones gives
  # the same function.
  config = tiny_config()
  config.model.scan_layers = True
  model = maskclip_lib.build_model(config.model, config.maskclip)
  scan_params = jax.tree.map(lambda x: x, params)
  for tower in ("visual", "text"):
    blocks = scan_params["params"][tower]["transformer"]
    names = sorted((k for k in blocks if k.startswith("resblocks_")), key=lambda k: int(k[10:]))
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[blocks.pop(k) for k in names])
    blocks["resblocks"] = {"block": stacked}
  image_scan, _ = jax.jit(lambda p: model.apply(
      p, batch["image"], method=maskclip_lib.MaskCLIP.encode_image))(scan_params)
  np.testing.assert_allclose(image_scan, image_ref, atol=1e-5)

  # bf16 compute keeps f32 parameters and stays close.
  config = tiny_config()
  config.model.dtype = "bfloat16"
  params_bf16, image_bf16, _ = _apply_both(config, batch["image"], batch["text"])
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params_bf16))
  cosine = (image_bf16 * image_ref).sum(-1) / (
      jnp.linalg.norm(image_bf16, axis=-1) * jnp.linalg.norm(image_ref, axis=-1))
  assert float(cosine.min()) > 0.98


def test_vocabulary_head_is_torch_linear_with_the_same_values_and_gradients():
  """The MLM head's fast form: nn.Dense's parameters, initialisation, logits and gradients."""
  class Reference(nn.Module):
    @nn.compact
    def __call__(self, x):
      return torch_linear(300, "head", f32_output=True)(x)

  class Fast(nn.Module):
    @nn.compact
    def __call__(self, x):
      return VocabularyHead(300, name="head")(x)

  x = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 16))
  reference = Reference().init(jax.random.PRNGKey(0), x)
  fast = Fast().init(jax.random.PRNGKey(0), x)
  assert jax.tree.structure(reference) == jax.tree.structure(fast)
  for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(fast)):
    np.testing.assert_array_equal(a, b)
  weights = jax.random.normal(jax.random.PRNGKey(2), (4, 3, 300))

  def loss(module, params, x):
    return (module.apply(params, x) * weights).sum()
  np.testing.assert_allclose(Fast().apply(fast, x), Reference().apply(reference, x), rtol=1e-6,
                             atol=1e-6)
  grads = [jax.grad(loss, argnums=(1, 2))(m, reference, x) for m in (Reference(), Fast())]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # bf16 compute still returns f32 logits.
  bf16_logits = VocabularyHead(300, jnp.bfloat16).apply({"params": fast["params"]["head"]}, x)
  assert bf16_logits.dtype == jnp.float32 and bf16_logits.shape == (4, 3, 300)
