"""Method details that are easy to get wrong: a narrow image decoder with codeword targets, the
learning rate of skipped non-finite steps, mask_ratio=0 with distillation on, uint8 batches
normalised on the device, open_clip's initialisation; and the optional objectives: the
contrastive loss on the visible patches (FLIP-style) and SigLIP's sigmoid loss."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import random_batch
from maskclip_jax import config_checks, losses, masking, train_step as train_step_lib
from maskclip_jax import normalization
from maskclip_jax.models.maskclip import MaskCLIP, build_model
from maskclip_jax.optimizer import learning_rate_schedule, make_optimizer


def _state_and_step(config):
  model = build_model(config.model, config.maskclip)
  tx = make_optimizer(config)
  state = train_step_lib.init_train_state(model, config, tx, jax.random.PRNGKey(0))
  step = jax.jit(train_step_lib.make_train_step(model, config, tx))
  return model, state, step


def test_narrow_image_decoder_trains_with_codeword_targets(tiny_config):
  """A decoder narrower than the encoder (MAE-style) projects back before the shared head."""
  config = tiny_config()
  config.model.image_decoder.update(width=16, heads=2)
  model, state, step = _state_and_step(config)
  decoder = state["params"]["image_decoder"]
  assert decoder["decoder_embed"]["kernel"].shape == (32, 16)
  assert decoder["decoder_pred"]["kernel"].shape == (16, 32)
  assert state["params"]["codeword_head"]["kernel"].shape == (32, 64)
  state, metrics = step(state, random_batch(0))
  assert np.isfinite(metrics["loss_dist"]) and metrics["loss_dist"] > 0
  assert model.image_decoder_spec.width == 16


def test_skipped_nonfinite_step_keeps_the_learning_rate_on_schedule(tiny_config):
  """A dropped update still advances the schedule's count: the rate logged is the rate used,
  and it is the schedule's value at `step`, while Adam's moments and count are kept."""
  config = tiny_config(w_dist=0.0, w_mlm=0.0)
  config.total_steps, config.optim.warmup_steps = 10, 5
  config.skip_nonfinite_steps = True
  _, state, step = _state_and_step(config)
  schedule = learning_rate_schedule(config)
  good, bad = random_batch(0), random_batch(1)
  bad["image"][:] = np.nan

  state, metrics = step(state, good)
  assert int(metrics["skipped_nonfinite"]) == 0
  before = state
  state, metrics = step(state, bad)
  assert int(metrics["skipped_nonfinite"]) == 1
  assert int(state["step"]) == 2
  assert int(train_step_lib.schedule_count(state["opt_state"])) == 2
  adam_before, adam_after = before["opt_state"][0], state["opt_state"][0]
  assert int(adam_after.count) == int(adam_before.count) == 1
  jax.tree.map(np.testing.assert_array_equal, (adam_after.mu, state["params"]),
               (adam_before.mu, before["params"]))

  # The next update applies the logged rate, schedule(2): redo it with AdamW at that rate.
  model = build_model(config.model, config.maskclip)
  rng = jax.random.fold_in(state["rng"], state["step"])
  grads = jax.grad(lambda p: train_step_lib.make_loss_fn(model, config)(
      p, state["teacher"], state["center"], good, rng)[0])(state["params"])
  after, metrics = step(state, good)
  assert int(metrics["skipped_nonfinite"]) == 0
  np.testing.assert_allclose(metrics["lr"], schedule(2), rtol=1e-6)
  assert float(schedule(2)) != float(schedule(1))
  o = config.optim
  at_logged_rate = optax.adamw(lambda count: metrics["lr"], b1=o.b1, b2=o.b2, eps=o.eps,
                               weight_decay=o.weight_decay, mask=make_optimizer_mask(config))
  updates, _ = at_logged_rate.update(grads, state["opt_state"], state["params"])
  expected = optax.apply_updates(state["params"], updates)
  # Where the gradient is ~0 (the attention's key bias, to which softmax is blind) Adam
  # normalises rounding noise, which differs between the two computations: skip those.
  def same_where_trained(a, b, g):
    trained = np.abs(np.asarray(g)) > 1e-6
    np.testing.assert_allclose(np.asarray(a)[trained], np.asarray(b)[trained], rtol=1e-4,
                               atol=1e-7)
  jax.tree.map(same_where_trained, after["params"], expected, grads)


def make_optimizer_mask(config):
  from maskclip_jax.optimizer import weight_decay_mask
  return lambda params: weight_decay_mask(params, config.optim.no_decay_regex)


def test_mask_ratio_zero_with_distillation_fails_before_compiling(tiny_config):
  """Nothing masked leaves the distillation loss a mean over nothing: rejected, naming it."""
  config = tiny_config(mask_ratio=0.0)
  with pytest.raises(ValueError, match="mask_ratio=0.0 masks none"):
    config_checks.check_config(config, num_devices=1)
  config_checks.check_config(tiny_config(mask_ratio=0.0, w_dist=0.0), num_devices=1)


def test_uint8_batches_are_normalised_on_the_device(tiny_config):
  """The step takes 0..255 uint8 pixels and trains on CLIP-normalised ones: the same loss as
  the host-normalised float batch."""
  config = tiny_config()
  model = build_model(config.model, config.maskclip)
  tx = make_optimizer(config)
  state = train_step_lib.init_train_state(model, config, tx, jax.random.PRNGKey(0))
  loss_fn = jax.jit(train_step_lib.make_loss_fn(model, config))
  batch = random_batch(0)
  pixels = np.random.default_rng(0).integers(0, 256, batch["image"].shape, dtype=np.uint8)
  as_uint8 = dict(batch, image=pixels)
  as_float = dict(batch, image=np.asarray(normalization.normalize(pixels)))
  args = (state["params"], state["teacher"], state["center"])
  rng = jax.random.PRNGKey(3)
  loss_uint8, (metrics_uint8, _) = loss_fn(*args, as_uint8, rng)
  loss_float, (metrics_float, _) = loss_fn(*args, as_float, rng)
  np.testing.assert_allclose(loss_uint8, loss_float, rtol=1e-5)
  np.testing.assert_allclose(metrics_uint8["loss_dist"], metrics_float["loss_dist"], rtol=1e-5)


def _std_tolerance(n):
  # Two independent sample stds of n draws differ by about std / sqrt(n); allow 5 of those.
  return 5.0 / math.sqrt(n) + 0.02


def test_initialisation_matches_open_clip_per_parameter(tiny_config):
  """Every CLIP parameter starts with open_clip's statistics (std, mean, constant values)."""
  torch = pytest.importorskip("torch")
  open_clip = pytest.importorskip("open_clip")
  from maskclip_jax.export.to_open_clip import open_clip_state_dict
  config = tiny_config(w_dist=0.0, w_mlm=0.0)
  config.model.embed_dim = 64
  config.model.vision.update(image_size=32, patch_size=8, width=64, layers=2, heads=2)
  config.model.text.update(context_length=16, width=64, layers=3, heads=2)
  model = build_model(config.model, config.maskclip)
  params = train_step_lib.init_train_state(model, config, make_optimizer(config),
                                           jax.random.PRNGKey(0))["params"]
  ours = open_clip_state_dict(params)
  torch.manual_seed(0)
  reference = open_clip.CLIP(
      embed_dim=64, quick_gelu=False,
      vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
      text_cfg=dict(context_length=16, vocab_size=49408, width=64, heads=2, layers=3))
  theirs = {k: v.detach().numpy() for k, v in reference.state_dict().items()
            if k != "attn_mask" and not k.endswith("attn_mask")}
  assert sorted(ours) == sorted(theirs)
  mismatches = []
  for key, expected in theirs.items():
    got = ours[key]
    assert got.shape == expected.shape, key
    if expected.std() == 0:
      if not np.allclose(got, expected):
        mismatches.append(f"{key}: constant {expected.flat[0]} vs ours {got.flat[:3]}")
      continue
    n = expected.size
    ratio = got.std() / expected.std()
    if abs(ratio - 1) > _std_tolerance(n):
      mismatches.append(f"{key}: std {got.std():.4g} vs open_clip {expected.std():.4g}")
    if abs(got.mean() - expected.mean()) > 6 * expected.std() / math.sqrt(n):
      mismatches.append(f"{key}: mean {got.mean():.4g} vs open_clip {expected.mean():.4g}")
    # Uniform inits have a hard bound; normal ones do not: the shapes of the laws must agree.
    if abs(np.abs(got).max() / expected.std() - np.abs(expected).max() / expected.std()) > (
        0.35 * np.abs(expected).max() / expected.std()):
      mismatches.append(f"{key}: max |x| {np.abs(got).max():.4g} vs open_clip "
                        f"{np.abs(expected).max():.4g}")
  assert not mismatches, "\n".join(mismatches)


def test_contrastive_on_visible_uses_the_visible_patches_class_token(tiny_config):
  """With contrastive_on_visible the contrastive embedding is the tower on the visible patches
  (the same pass the decoder reads); evaluation still encodes full images."""
  config = tiny_config(contrastive_on_visible=True)
  model = build_model(config.model, config.maskclip)
  state = train_step_lib.init_train_state(model, config, make_optimizer(config),
                                          jax.random.PRNGKey(0))
  params = state["params"]
  batch = random_batch(0)
  rng = jax.random.PRNGKey(7)
  _, (metrics, _) = train_step_lib.make_loss_fn(model, config)(
      params, state["teacher"], state["center"], batch, rng)
  patch_rng, _ = jax.random.split(rng)
  mask = masking.random_patch_mask(patch_rng, 8, model.vision.num_patches, 0.75)
  variables = {"params": params}
  visible, _ = model.apply(variables, batch["image"], mask.visible_idx,
                           method=MaskCLIP.encode_image)
  full, _ = model.apply(variables, batch["image"], method=MaskCLIP.encode_image)
  text, _ = model.apply(variables, batch["text"], method=MaskCLIP.encode_text)
  on_visible = losses.contrastive_loss(visible, text, params["logit_scale"])
  on_full = losses.contrastive_loss(full, text, params["logit_scale"])
  np.testing.assert_allclose(metrics["loss_i2t"], on_visible["loss_i2t"], rtol=1e-5)
  assert abs(float(on_full["loss_i2t"]) - float(on_visible["loss_i2t"])) > 1e-4


def test_sigmoid_loss_matches_a_numpy_reference_and_trains_its_bias(tiny_config):
  """SigLIP: -sum log sigmoid(z_ij (t x_i.y_j + b)) / B, with a learned bias (init -10)."""
  rng = np.random.default_rng(0)
  image, text = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
  got = losses.sigmoid_loss(jnp.asarray(image), jnp.asarray(text), jnp.asarray(math.log(10.0)),
                            jnp.asarray(-10.0))
  x = image / np.linalg.norm(image, axis=1, keepdims=True)
  y = text / np.linalg.norm(text, axis=1, keepdims=True)
  logits = 10.0 * x @ y.T - 10.0
  z = 2 * np.eye(6) - 1
  expected = np.sum(np.log1p(np.exp(-z * logits))) / 6
  np.testing.assert_allclose(got["loss_sigmoid"], expected, rtol=1e-5)

  config = tiny_config(w_dist=0.0, w_mlm=0.0, contrastive_loss="sigmoid")
  _, state, step = _state_and_step(config)
  assert float(state["params"]["logit_bias"]) == -10.0
  np.testing.assert_allclose(state["params"]["logit_scale"], math.log(10.0), rtol=1e-6)
  state, metrics = step(state, random_batch(0))
  assert "loss_sigmoid" in metrics and "loss_i2t" not in metrics
  assert float(state["params"]["logit_bias"]) != -10.0


def test_unknown_loss_or_synthetic_kind_fails_before_compiling(tiny_config):
  """An unknown contrastive loss or synthetic set is named with its choices."""
  config = tiny_config(contrastive_loss="hinge")
  with pytest.raises(ValueError, match="contrastive_loss='hinge'.*'softmax', 'sigmoid'"):
    config_checks.check_config(config, num_devices=1)
  config = tiny_config()
  config.input.synthetic_kind = "blobs"
  with pytest.raises(ValueError, match="synthetic_kind='blobs'.*'shapes', 'scenes'"):
    config_checks.check_config(config, num_devices=1)
