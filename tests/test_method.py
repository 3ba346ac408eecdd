"""The method's behaviours, pinned through public functions: decoder slots and attention, what
the MLM branch and the student may see, where the teacher's targets come from, the centre,
the schedules, the weight-decay mask, the logit-scale clamp and the MLM prediction cap."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import make_tiny_config, random_batch
from maskclip_jax import losses, masking, optimizer, train_step as train_step_lib
from maskclip_jax.models.decoders import ImageDistillDecoder, TextMLMDecoder
from maskclip_jax.models.maskclip import MaskCLIP, build_model
from maskclip_jax.models.vocabulary import EOT_ID, SOT_ID
from maskclip_jax.pytree_paths import path_name

PATCH = 8  # tiny config: 32 px images, 8 px patches, a 4 x 4 grid.
GRID = 4


@pytest.fixture(scope="module")
def tiny():
  """One tiny MaskCLIP (codeword target, both branches) and its fresh train state."""
  config = make_tiny_config()
  config.model.vision.layers = config.model.text.layers = 1  # compiles in half the time
  model = build_model(config.model, config.maskclip)
  tx = optimizer.make_optimizer(config)
  state = jax.jit(lambda key: train_step_lib.init_train_state(model, config, tx, key))(
      jax.random.PRNGKey(0))
  loss_fn = jax.jit(train_step_lib.make_loss_fn(model, config))
  return dict(config=config, model=model, tx=tx, state=state, loss_fn=loss_fn)


def perturb(tree, seed, scale=0.05):
  """Every leaf plus `scale` times Gaussian noise (a different key per leaf)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return treedef.unflatten([x + scale * jax.random.normal(k, x.shape, x.dtype)
                            for x, k in zip(leaves, keys)])


def patch_pixels(patch_indices):
  """(H, W) bool: the pixels of the given patches of a 32 px image."""
  out = np.zeros((GRID * PATCH, GRID * PATCH), bool)
  for p in patch_indices:
    row, col = divmod(int(p), GRID)
    out[row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH] = True
  return out


def layer_norm_np(x, scale, bias, eps=1e-5):
  x = np.asarray(x, np.float64)
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * np.asarray(scale) + np.asarray(bias)


# 1-2. The decoders.


def test_image_decoder_fills_masked_slot_with_mask_token_plus_its_position():
  """0-layer decoder: output at masked patch i is ln_post(mask_token + pos_embedding[1 + i])."""
  width, num_patches = 16, 16
  decoder = ImageDistillDecoder(width=width, layers=0, heads=2, num_patches=num_patches)
  visible_idx = jnp.array([[0, 5, 9, 15], [2, 3, 7, 11]], jnp.int32)
  masked_idx = jnp.array([sorted(set(range(16)) - set(np.asarray(v).tolist()))
                          for v in visible_idx], jnp.int32)
  tokens = jax.random.normal(jax.random.PRNGKey(1), (2, 1 + 4, width))
  variables = decoder.init(jax.random.PRNGKey(0), tokens, visible_idx, masked_idx)
  params = jax.tree.map(np.asarray, variables["params"])
  # A non-trivial LN affine so the check sees the module's own ln_post parameters.
  rng = np.random.default_rng(0)
  params["ln_post"] = dict(scale=rng.normal(size=width).astype(np.float32),
                           bias=rng.normal(size=width).astype(np.float32))
  out = np.asarray(decoder.apply({"params": params}, tokens, visible_idx, masked_idx))
  assert out.shape == (2, 12, width)
  pos = params["positional_embedding"]
  for b in range(2):
    for j, i in enumerate(np.asarray(masked_idx[b])):
      expected = layer_norm_np(params["mask_token"] + pos[1 + i], params["ln_post"]["scale"],
                               params["ln_post"]["bias"])
      np.testing.assert_allclose(out[b, j], expected, atol=1e-5, err_msg=f"sample {b} patch {i}")


def test_image_decoder_is_bidirectional():
  """An earlier masked slot's output depends on a visible token at a later patch."""
  decoder = ImageDistillDecoder(width=16, layers=1, heads=2, num_patches=16)
  visible_idx = jnp.array([[0, 5, 9, 15]], jnp.int32)
  masked_idx = jnp.array([sorted(set(range(16)) - {0, 5, 9, 15})], jnp.int32)  # 1, 2, 3, ...
  tokens = jax.random.normal(jax.random.PRNGKey(1), (1, 1 + 4, 16))
  params = decoder.init(jax.random.PRNGKey(0), tokens, visible_idx, masked_idx)
  apply = jax.jit(decoder.apply)
  base = np.asarray(apply(params, tokens, visible_idx, masked_idx))
  # tokens[:, 4] is the visible patch 15, after masked patch 1 (output slot 0). (Not a constant
  # shift: the blocks' pre-LN would remove it.)
  shift = 3.0 * jax.random.normal(jax.random.PRNGKey(2), (16,))
  later = np.asarray(apply(params, tokens.at[:, 4].add(shift), visible_idx, masked_idx))
  assert np.abs(later[0, 0] - base[0, 0]).max() > 1e-3


def test_text_decoder_ignores_padding_keys_and_is_bidirectional():
  """Tokens where valid=False change no logit at valid positions; later tokens do."""
  length, width = 10, 16
  decoder = TextMLMDecoder(width=width, layers=1, heads=2, vocab_size=50)
  tokens = jax.random.normal(jax.random.PRNGKey(1), (2, length, width))
  valid = jnp.arange(length)[None, :] < jnp.array([[6], [4]])
  positions = jnp.array([[0, 1, 5], [0, 2, 3]], jnp.int32)
  params = decoder.init(jax.random.PRNGKey(0), tokens, valid, positions)
  apply = jax.jit(decoder.apply)
  base = np.asarray(apply(params, tokens, valid, positions))
  noise = 10.0 * jax.random.normal(jax.random.PRNGKey(2), tokens.shape)
  padded = tokens + jnp.where(valid[..., None], 0.0, noise)
  np.testing.assert_allclose(apply(params, padded, valid, positions), base, atol=1e-6)
  # Position 0 attends to the last valid token of each caption (5 and 3).
  shift = 3.0 * jax.random.normal(jax.random.PRNGKey(3), (width,))
  later = tokens.at[0, 5].add(shift).at[1, 3].add(shift)
  changed = np.abs(np.asarray(apply(params, later, valid, positions)) - base)
  assert (changed[:, 0].max(axis=-1) > 1e-3).all()


def test_mlm_branch_ignores_padding_ids(tiny):
  """Through the model: changing padding ids after EOT changes no MLM logit."""
  model, params = tiny["model"], tiny["state"]["params"]
  text = random_batch(3, batch_size=4)["text"]
  mask = masking.random_token_mask(jax.random.PRNGKey(0), text, 0.3)
  predict = jax.jit(lambda p, t: model.apply({"params": p}, t, mask.replaced, mask.valid,
                                             mask.positions,
                                             method=MaskCLIP.predict_masked_tokens))
  masked_text = np.asarray(mask.masked_text)
  garbage = np.where(np.asarray(mask.valid), masked_text,
                     np.random.default_rng(0).integers(1, SOT_ID, size=text.shape))
  assert (garbage != masked_text).any()
  np.testing.assert_allclose(predict(params, garbage), predict(params, masked_text), atol=1e-6)


# 3. The MLM branch never sees the original ids at [MASK] slots.


def test_mlm_logits_do_not_depend_on_original_ids_at_replaced_slots(tiny):
  """Changing a caption's id at a `replaced` slot, or masked_text there, changes no logit."""
  model, params = tiny["model"], tiny["state"]["params"]
  text = random_batch(4, batch_size=4)["text"]
  rng = jax.random.PRNGKey(0)
  mask = masking.random_token_mask(rng, text, 0.4)
  replaced = np.asarray(mask.replaced)
  assert replaced.any()

  @jax.jit
  def predict(p, m):
    return model.apply({"params": p}, m.masked_text, m.replaced, m.valid, m.positions,
                       method=MaskCLIP.predict_masked_tokens)

  base = np.asarray(predict(params, mask))
  b, j = map(int, np.argwhere(replaced)[0])
  other = text.copy()
  other[b, j] = text[b, j] % 49405 + 1  # another word id
  assert other[b, j] != text[b, j]
  mask2 = masking.random_token_mask(rng, other, 0.4)
  np.testing.assert_array_equal(mask2.replaced, mask.replaced)
  np.testing.assert_array_equal(mask2.positions, mask.positions)
  np.testing.assert_array_equal(predict(params, mask2), base)

  # Whatever masked_text holds at replaced slots is unused...
  junk = np.where(replaced, np.random.default_rng(1).integers(1, SOT_ID, size=text.shape),
                  np.asarray(mask.masked_text))
  np.testing.assert_array_equal(predict(params, mask._replace(masked_text=junk)), base)
  # ...while an id at a word slot that is not replaced, and the learned embedding, are used.
  masked_text = np.asarray(mask.masked_text)
  words = np.asarray(mask.valid) & ~replaced & (masked_text < SOT_ID)
  kb, kj = map(int, np.argwhere(words)[0])
  seen = masked_text.copy()
  seen[kb, kj] = masked_text[kb, kj] % 49405 + 1
  assert np.abs(np.asarray(predict(params, mask._replace(masked_text=seen))) - base).max() > 1e-4
  params2 = dict(params, text_mask_embedding=perturb(params["text_mask_embedding"], 0, 0.5))
  assert np.abs(np.asarray(predict(params2, mask)) - base).max() > 1e-4


# 4-7. The loss function: contrastive terms, the student, the teacher, the centre.


def test_contrastive_terms_equal_plain_clip_with_auxiliary_losses_on(tiny):
  """loss_i2t/loss_t2i of the MaskCLIP loss are CLIP's on the full image and clean caption."""
  config, model, state = tiny["config"], tiny["model"], tiny["state"]
  assert config.maskclip.w_dist > 0 and config.maskclip.w_mlm > 0
  batch = random_batch(0, batch_size=4)

  @jax.jit
  def clip_terms(params):
    image, _ = model.apply({"params": params}, batch["image"], method=MaskCLIP.encode_image)
    text, _ = model.apply({"params": params}, batch["text"], method=MaskCLIP.encode_text)
    return losses.contrastive_loss(image, text, params["logit_scale"])

  params = perturb(state["params"], 7, 0.02)  # not the init: a generic point
  expected = clip_terms(params)
  for seed in (0, 1):  # whatever the masks
    loss, (metrics, _) = tiny["loss_fn"](params, state["teacher"], state["center"], batch,
                                         jax.random.PRNGKey(seed))
    for key in ("loss_i2t", "loss_t2i"):
      np.testing.assert_allclose(metrics[key], expected[key], rtol=1e-5, err_msg=key)
    total = (metrics["loss_i2t"] + metrics["loss_t2i"] + config.maskclip.w_dist
             * metrics["loss_dist"] + config.maskclip.w_mlm * metrics["loss_mlm"])
    np.testing.assert_allclose(loss, total, rtol=1e-5)
    assert metrics["loss_dist"] > 0 and metrics["loss_mlm"] > 0


def test_student_predictions_ignore_pixels_of_masked_patches(tiny):
  """predict_masked_patches is unchanged when masked patches' pixels change; not otherwise."""
  model, params = tiny["model"], tiny["state"]["params"]
  images = random_batch(1, batch_size=2)["image"]
  mask = masking.random_patch_mask(jax.random.PRNGKey(3), 2, GRID * GRID, 0.75)
  predict = jax.jit(lambda x: model.apply({"params": params}, x, mask.visible_idx,
                                          mask.masked_idx,
                                          method=MaskCLIP.predict_masked_patches))
  base = np.asarray(predict(images))
  noise = 5.0 * np.random.default_rng(0).normal(size=images.shape).astype(np.float32)
  in_masked = np.stack([patch_pixels(m) for m in np.asarray(mask.masked_idx)])[..., None]
  np.testing.assert_allclose(predict(images + noise * in_masked), base, atol=1e-6)
  in_visible = np.stack([patch_pixels(v[:1]) for v in np.asarray(mask.visible_idx)])[..., None]
  assert np.abs(np.asarray(predict(images + noise * in_visible)) - base).max() > 1e-3


def test_teacher_targets_come_from_the_teacher_weights(tiny):
  """Teacher params move the targets (centre update, perplexity, loss); online ones do not."""
  state, loss_fn = tiny["state"], tiny["loss_fn"]
  batch = random_batch(2, batch_size=4)
  rng = jax.random.PRNGKey(5)
  params, teacher = state["params"], state["teacher"]
  center = 0.1 * jax.random.normal(jax.random.PRNGKey(9), state["center"].shape)

  def run(p, t):
    _, (metrics, new_center) = loss_fn(p, t, center, batch, rng)
    return jax.tree.map(np.asarray, metrics), np.asarray(new_center)

  base, base_center = run(params, teacher)
  for part in ("visual", "codeword_head"):
    metrics, new_center = run(params, dict(teacher, **{part: perturb(teacher[part], 1)}))
    assert np.abs(new_center - base_center).max() > 1e-5, part
    assert metrics["loss_dist"] != base["loss_dist"], part
    assert metrics["codeword_perplexity"] != base["codeword_perplexity"], part
    for key in ("loss_i2t", "loss_t2i", "loss_mlm"):  # the online model's terms
      assert metrics[key] == base[key], (part, key)

  online = dict(params, visual=perturb(params["visual"], 2),
                codeword_head=perturb(params["codeword_head"], 3))
  metrics, new_center = run(online, teacher)
  assert metrics["loss_dist"] != base["loss_dist"]  # the student moved...
  np.testing.assert_array_equal(new_center, base_center)  # ...the targets did not.
  np.testing.assert_array_equal(metrics["codeword_perplexity"], base["codeword_perplexity"])


def test_center_update_and_the_loss_uses_the_old_center(tiny):
  """new = m * old + (1 - m) * mean teacher logits; that step's loss is centred on `old`."""
  config, model, state = tiny["config"], tiny["model"], tiny["state"]
  m, num_codewords = config.maskclip.center_momentum, config.maskclip.num_codewords
  rng = np.random.default_rng(0)
  batch, num_patches, width, num_masked = 2, GRID * GRID, 32, 12
  masked_idx = np.stack([np.sort(rng.permutation(num_patches)[:num_masked])
                         for _ in range(batch)]).astype(np.int32)
  student = rng.normal(size=(batch, num_masked, num_codewords)).astype(np.float32)
  features = rng.normal(size=(batch, num_patches, width)).astype(np.float32)
  old_center = rng.normal(size=(num_codewords,)).astype(np.float32)
  loss, _, new_center = train_step_lib.image_distill_loss(
      model, config, student, features, masked_idx, state["teacher"], old_center, None)

  head = state["teacher"]["codeword_head"]
  gathered = np.take_along_axis(features, masked_idx[..., None], axis=1)
  teacher_logits = gathered @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
  expected_center = m * old_center + (1 - m) * teacher_logits.reshape(-1, num_codewords).mean(0)
  np.testing.assert_allclose(new_center, expected_center, rtol=1e-5, atol=1e-5)

  def reference(center):
    return float(losses.codeword_distill_loss(student, teacher_logits, center,
                                              config.maskclip.teacher_temp,
                                              config.maskclip.student_temp)[0])

  np.testing.assert_allclose(loss, reference(old_center), rtol=1e-5)
  assert abs(reference(np.asarray(new_center)) - reference(old_center)) > 1e-3  # discriminates

  # Through the loss function: the old centre enters the new one with weight m exactly.
  data = random_batch(0, batch_size=4)
  c1, c2 = old_center, rng.normal(size=(num_codewords,)).astype(np.float32)
  out1 = tiny["loss_fn"](state["params"], state["teacher"], c1, data, jax.random.PRNGKey(0))
  out2 = tiny["loss_fn"](state["params"], state["teacher"], c2, data, jax.random.PRNGKey(0))
  np.testing.assert_allclose(np.asarray(out1[1][1]) - np.asarray(out2[1][1]), m * (c1 - c2),
                             atol=1e-5)
  assert out1[1][0]["loss_dist"] != out2[1][0]["loss_dist"]


# 8-9. The optimizer: schedules and the weight-decay mask.


def test_ema_momentum_schedule_end_points():
  """ema_momentum is `start` at step 0, `end` at total_steps and after, in between midway."""
  start, end, total = 0.996, 1.0, 1000
  assert float(optimizer.ema_momentum(0, total, start, end)) == pytest.approx(start, abs=1e-7)
  assert float(optimizer.ema_momentum(total, total, start, end)) == pytest.approx(end, abs=1e-7)
  for past in (total + 1, 3 * total // 2, 2 * total):  # clipped, not the cosine's next period
    assert float(optimizer.ema_momentum(past, total, start, end)) == pytest.approx(end, abs=1e-7)
  mid = float(optimizer.ema_momentum(total // 2, total, start, end))
  assert mid == pytest.approx((start + end) / 2, abs=1e-6)
  values = np.asarray([optimizer.ema_momentum(s, total, start, end) for s in range(0, total, 50)])
  assert (np.diff(values) >= 0).all()
  # Also with a jnp step, as the train step passes it.
  assert float(optimizer.ema_momentum(jnp.int32(0), 10, 0.5, 1.0)) == pytest.approx(0.5)


def test_learning_rate_schedule_end_points():
  """LR is 0 at step 0, the peak at warmup_steps, ~0 at total_steps; rises then falls."""
  config = make_tiny_config()
  config.total_steps, config.optim.warmup_steps, config.optim.lr = 100, 10, 1e-3
  schedule = optimizer.learning_rate_schedule(config)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(1e-3, rel=1e-6)
  assert abs(float(schedule(100))) < 1e-9
  values = np.asarray([schedule(s) for s in range(101)])
  assert values.max() == pytest.approx(1e-3, rel=1e-6)
  assert (np.diff(values[:11]) > 0).all() and (np.diff(values[10:]) <= 1e-12).all()


def decays_by_rule(name, leaf):
  """Independent of NO_DECAY_REGEX: matrices (and the conv kernel) decay, except position
  embeddings; vectors and scalars (biases, LN, class embedding, mask tokens, logit scale) do
  not."""
  return len(np.shape(leaf)) >= 2 and name.split("/")[-1] != "positional_embedding"


def test_weight_decay_mask_leaf_by_leaf(tiny):
  """weight_decay_mask on the real tiny MaskCLIP params matches an independent rule per leaf."""
  params = tiny["state"]["params"]
  assert {"image_decoder", "codeword_head", "text_decoder", "text_mask_embedding"} <= set(params)
  mask = optimizer.weight_decay_mask(params)
  flat_mask = {path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  flat_params = {path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert set(flat_mask) == set(flat_params)
  wrong = sorted(name for name, leaf in flat_params.items()
                 if bool(flat_mask[name]) != decays_by_rule(name, leaf))
  assert not wrong, f"decay mask disagrees with the rule at {wrong}"
  expected = {
      "visual/conv1/kernel": True,
      "visual/proj": True,
      "visual/transformer/resblocks_0/attn/in_proj/kernel": True,
      "visual/transformer/resblocks_0/mlp/c_fc/kernel": True,
      "text/token_embedding/embedding": True,
      "text/text_projection": True,
      "codeword_head/kernel": True,
      "text_decoder/head/kernel": True,
      "image_decoder/transformer/resblocks_0/attn/out_proj/kernel": True,
      "visual/transformer/resblocks_0/attn/in_proj/bias": False,
      "visual/transformer/resblocks_0/ln_1/scale": False,
      "visual/ln_pre/bias": False,
      "text/ln_final/scale": False,
      "codeword_head/bias": False,
      "visual/class_embedding": False,
      "visual/positional_embedding": False,
      "text/positional_embedding": False,
      "image_decoder/positional_embedding": False,
      "image_decoder/mask_token": False,
      "text_mask_embedding": False,
      "logit_scale": False,
  }
  for name, decays in expected.items():
    assert bool(flat_mask[name]) == decays, name


def test_weight_decay_mask_with_the_sigmoid_loss():
  """With contrastive_loss='sigmoid' every leaf follows the same rule: logit_bias does not decay."""
  config = make_tiny_config(contrastive_loss="sigmoid")
  config.model.vision.layers = config.model.text.layers = 1
  model = build_model(config.model, config.maskclip)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), *train_step_lib.dummy_inputs(model, 0.75, 0.2))["params"])
  assert "logit_bias" in shapes
  mask = optimizer.weight_decay_mask(shapes)
  flat_mask = {path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  flat_params = {path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(shapes)[0]}
  wrong = sorted(name for name, leaf in flat_params.items()
                 if bool(flat_mask[name]) != decays_by_rule(name, leaf))
  assert not wrong, f"decay mask disagrees with the rule at {wrong}"


def test_optimizer_applies_decay_only_where_the_mask_says(tiny):
  """With zero gradients, one AdamW update moves exactly the decayed leaves."""
  params, tx = tiny["state"]["params"], tiny["tx"]
  assert float(optimizer.learning_rate_schedule(tiny["config"])(0)) > 0  # no warm-up
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  flat_params = {path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  checked = 0
  for path, update in jax.tree_util.tree_flatten_with_path(updates)[0]:
    name = path_name(path)
    leaf = np.asarray(flat_params[name])
    if not leaf.any():  # zero-initialised (biases): decay cannot move them either way
      continue
    moved = bool(np.abs(np.asarray(update)).max() > 0)
    assert moved == decays_by_rule(name, leaf), name
    checked += 1
  assert checked > 20


# 10. The logit-scale clamp.


def test_logit_scale_clamp_binds_in_the_train_step():
  """A step from logit_scale above log(100) (or below 0) leaves it at log(100) (or 0)."""
  # The clamp is the step's, whatever the branches: a CLIP-only model compiles fastest.
  config = make_tiny_config(w_dist=0.0, w_mlm=0.0)
  config.model.vision.layers = config.model.text.layers = 1
  model = build_model(config.model, config.maskclip)
  tx = optimizer.make_optimizer(config)
  state = train_step_lib.init_train_state(model, config, tx, jax.random.PRNGKey(0))
  step = jax.jit(train_step_lib.make_train_step(model, config, tx))
  batch = random_batch(0, batch_size=4)
  for start, bound in ((math.log(100.0) + 1.0, math.log(100.0)), (-1.0, 0.0)):
    params = dict(state["params"], logit_scale=jnp.float32(start))
    new_state, _ = step(dict(state, params=params), batch, jax.random.PRNGKey(0))
    assert float(new_state["params"]["logit_scale"]) == np.float32(bound), start
  # In range, the step moves it freely.
  new_state, _ = step(state, batch, jax.random.PRNGKey(0))
  assert float(new_state["params"]["logit_scale"]) != float(state["params"]["logit_scale"])
  assert 0.0 < float(new_state["params"]["logit_scale"]) < math.log(100.0)


def test_contrastive_loss_caps_the_scale_at_100():
  """Above log(100) the loss is the loss at 100 and the scale gets no gradient."""
  rng = np.random.default_rng(0)
  image, text = rng.normal(size=(2, 6, 8)).astype(np.float32)
  capped = losses.contrastive_loss(image, text, jnp.float32(math.log(100.0)))
  for log_scale in (math.log(100.0) + 0.5, math.log(1e4)):
    out = losses.contrastive_loss(image, text, jnp.float32(log_scale))
    assert float(out["logit_scale"]) == pytest.approx(100.0, rel=1e-6)
    np.testing.assert_allclose(out["loss_i2t"], capped["loss_i2t"], rtol=1e-6)
    np.testing.assert_allclose(out["loss_t2i"], capped["loss_t2i"], rtol=1e-6)
    grad = jax.grad(lambda s: sum(losses.contrastive_loss(image, text, s)[k]
                                  for k in ("loss_i2t", "loss_t2i")))(jnp.float32(log_scale))
    assert float(grad) == 0.0
  below = losses.contrastive_loss(image, text, jnp.float32(math.log(50.0)))
  assert float(below["logit_scale"]) == pytest.approx(50.0, rel=1e-6)


# 11. The MLM prediction cap.


@pytest.mark.parametrize("cap", [1, 3])
def test_token_mask_respects_max_predictions(cap):
  """At most `cap` distinct word tokens per caption; weights sum to min(cap, round(r*n) or 1)."""
  ratio = 0.2
  text = random_batch(5, batch_size=8, context_length=77, caption_length=60)["text"]
  text[-2:] = 0
  text[-2, :4] = (SOT_ID, 17, 42, EOT_ID)  # round(0.2 * 2) = 0: one
  text[-1, :2] = (SOT_ID, EOT_ID)  # an empty caption: nothing to choose
  mask = masking.random_token_mask(jax.random.PRNGKey(cap), text, ratio, max_predictions=cap)
  positions, weights = np.asarray(mask.positions), np.asarray(mask.weights)
  assert positions.shape == weights.shape == (8, cap)
  assert set(np.unique(weights).tolist()) <= {0.0, 1.0}
  eot = text.argmax(1)
  assert max(eot - 1) > 5 * cap  # some captions would choose more than the cap
  for i in range(len(text)):
    num_words = int(eot[i]) - 1
    expected = min(cap, max(1, round(ratio * num_words))) if num_words else 0
    assert weights[i].sum() == expected, i
    chosen = positions[i][weights[i] > 0]
    assert len(set(chosen.tolist())) == len(chosen)
    assert ((chosen >= 1) & (chosen < eot[i])).all()
    assert not np.isin(text[i, chosen], (0, SOT_ID, EOT_ID)).any()
    np.testing.assert_array_equal(np.asarray(mask.targets)[i][weights[i] > 0], text[i, chosen])
    # Nothing outside the chosen slots is masked or replaced.
    changed = (np.asarray(mask.masked_text)[i] != text[i]) | np.asarray(mask.replaced)[i]
    assert set(np.flatnonzero(changed).tolist()) <= set(chosen.tolist())
