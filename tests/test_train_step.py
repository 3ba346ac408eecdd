"""The train step: CLIP equivalence, the teacher, masked-only distillation, overfitting,
sharding invariance, and config errors."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import random_batch
from maskclip_jax import losses, sharding, train_step as train_step_lib
from maskclip_jax.config_checks import check_config
from maskclip_jax.models.maskclip import MaskCLIP, build_model
from maskclip_jax.optimizer import make_optimizer


def build(config, seed=0):
  model = build_model(config.model, config.maskclip)
  tx = make_optimizer(config)
  state = train_step_lib.init_train_state(model, config, tx, jax.random.PRNGKey(seed))
  step = jax.jit(train_step_lib.make_train_step(model, config, tx))
  return model, tx, state, step


def assert_trees_equal(a, b, atol=0.0):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol,
                                                       rtol=0), a, b)


def test_without_auxiliary_losses_the_step_is_a_plain_clip_step(tiny_config):
  config = tiny_config(w_dist=0.0, w_mlm=0.0)
  model, tx, state, step = build(config)
  assert set(state["params"]) == {"visual", "text", "logit_scale"}

  def clip_loss(params, batch):  # written from scratch: two towers and InfoNCE, nothing else
    image, _ = model.apply({"params": params}, batch["image"], method=MaskCLIP.encode_image)
    text, _ = model.apply({"params": params}, batch["text"], method=MaskCLIP.encode_text)
    out = losses.contrastive_loss(image, text, params["logit_scale"])
    return out["loss_i2t"] + out["loss_t2i"]

  @jax.jit
  def clip_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(clip_loss)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    params["logit_scale"] = jnp.clip(params["logit_scale"], 0.0, np.log(100.0))
    return params, opt_state, loss

  params, opt_state = state["params"], state["opt_state"]
  for i in range(3):
    batch = random_batch(i)
    params, opt_state, ref_loss = clip_step(params, opt_state, batch)
    state, metrics = step(state, batch)
    assert float(metrics["loss"]) == float(ref_loss)
  assert_trees_equal(state["params"], params)


@pytest.mark.parametrize("teacher_kind", ["ema", "online"])
def test_teacher_update(tiny_config, teacher_kind):
  config = tiny_config(teacher=teacher_kind)
  model, tx, state, step = build(config)
  batch = random_batch(0)
  old_teacher = jax.tree.map(np.asarray, state["teacher"])
  assert set(old_teacher) == {"visual", "codeword_head"}

  # The teacher gets no gradient from the loss.
  loss_fn = train_step_lib.make_loss_fn(model, config)
  teacher_grads = jax.grad(lambda t: loss_fn(state["params"], t, state["center"], batch,
                                             jax.random.PRNGKey(0))[0])(state["teacher"])
  assert all(not np.asarray(g).any() for g in jax.tree.leaves(teacher_grads))

  # Move the teacher away from the online params so the update rule is visible.
  state["teacher"] = jax.tree.map(lambda x: x + 0.01, state["teacher"])
  old_teacher = jax.tree.map(np.asarray, state["teacher"])
  state, metrics = step(state, batch)
  new_online = train_step_lib.teacher_of(state["params"])
  m = np.float32(metrics["ema_momentum"])
  assert m == np.float32(config.maskclip.ema_momentum_start)
  if teacher_kind == "ema":
    expected = jax.tree.map(lambda old, new: m * old + (1 - m) * np.asarray(new), old_teacher,
                            new_online)
    assert_trees_equal(state["teacher"], expected, atol=1e-7)
  else:
    assert_trees_equal(state["teacher"], new_online)


def test_distillation_uses_masked_patches_only(tiny_config):
  config = tiny_config()
  model, _, state, _ = build(config)
  rng = np.random.default_rng(0)
  batch, num_patches, width = 2, 16, 32
  masked_idx = jnp.array([np.sort(rng.permutation(16)[:12]) for _ in range(batch)])
  student = jnp.asarray(rng.normal(size=(batch, 12, config.maskclip.num_codewords)), jnp.float32)
  teacher_features = jnp.asarray(rng.normal(size=(batch, num_patches, width)), jnp.float32)

  def loss(features):
    return train_step_lib.image_distill_loss(model, config, student, features, masked_idx,
                                             state["teacher"], state["center"], None)[0]

  base = loss(teacher_features)
  grad = np.asarray(jax.grad(loss)(teacher_features))
  is_masked = np.zeros((batch, num_patches), bool)
  is_masked[np.arange(batch)[:, None], np.asarray(masked_idx)] = True
  assert not grad[~is_masked].any()  # visible patches do not enter the loss...
  perturbed = teacher_features + 5.0 * (~is_masked)[..., None]
  assert float(loss(perturbed)) == float(base)
  perturbed = teacher_features.at[0, int(masked_idx[0, 0])].add(5.0)
  assert float(loss(perturbed)) != float(base)  # ...masked ones do.


def test_tiny_model_overfits_one_batch(tiny_config):
  config = tiny_config()
  config.optim.weight_decay = 0.0
  _, _, state, step = build(config)
  batch = random_batch(0)
  history = []
  for _ in range(config.total_steps):
    state, metrics = step(state, batch)
    history.append({k: float(metrics[k]) for k in ("loss", "loss_i2t", "loss_t2i", "loss_dist",
                                                     "loss_mlm", "codeword_perplexity")})
  first, last = history[0], history[-1]
  print("overfit start", first, "end", last)
  assert last["loss"] < 0.5 * first["loss"]
  assert last["loss_i2t"] + last["loss_t2i"] < 0.1
  assert last["loss_dist"] < 0.5 * first["loss_dist"]
  assert last["loss_mlm"] < first["loss_mlm"] - 2.0
  # No collapse onto a few codewords: the teacher's batch-mean distribution keeps using many
  # of the K=64 (perplexity 1 = one codeword), at every step, not only at the start.
  assert config.maskclip.num_codewords == 64
  assert min(h["codeword_perplexity"] for h in history) > 4.0


def run_sharded(config, devices, fsdp, num_steps=3):
  model = build_model(config.model, config.maskclip)
  tx = make_optimizer(config)
  mesh = sharding.make_mesh((("data", -1), ("fsdp", fsdp)), devices)
  rules = sharding.FSDP_RULES if fsdp > 1 else sharding.DEFAULT_RULES
  state, shardings = sharding.create_sharded_state(
      lambda: train_step_lib.init_train_state(model, config, tx, jax.random.PRNGKey(0)),
      mesh, rules)
  step = sharding.compile_train_step(train_step_lib.make_train_step(model, config, tx), mesh,
                                     shardings)
  history = []
  for i in range(num_steps):
    batch = jax.device_put(random_batch(i), sharding.batch_sharding(mesh))
    state, metrics = step(state, batch)
    history.append(jax.tree.map(float, metrics))
  return state, history


def test_eight_devices_with_fsdp_equal_one_device(tiny_config):
  config = tiny_config()
  assert jax.device_count() == 8
  state8, history8 = run_sharded(config, jax.devices(), fsdp=2)
  # fsdp really splits parameters over devices on the 4x2 mesh.
  kernel = state8["params"]["visual"]["transformer"]["resblocks_0"]["mlp"]["c_fc"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", None) or \
      "fsdp" in tuple(kernel.sharding.spec)
  assert len(kernel.addressable_shards) == 8
  assert kernel.addressable_shards[0].data.shape[0] * kernel.addressable_shards[0].data.shape[1] \
      == kernel.size // 2
  state1, history1 = run_sharded(config, jax.devices()[:1], fsdp=1)
  for h8, h1 in zip(history8, history1):
    for key in h1:
      np.testing.assert_allclose(h8[key], h1[key], rtol=1e-5, atol=1e-5, err_msg=key)
  for part in ("params", "teacher", "opt_state", "center"):
    jax.tree_util.tree_map_with_path(
        lambda path, a, b: np.testing.assert_allclose(
            *without_key_bias(path, np.asarray(a), np.asarray(b)), atol=1e-5, rtol=1e-5,
            err_msg=jax.tree_util.keystr(path)),
        state8[part], state1[part])


def without_key_bias(path, a, b):
  """Drops the key third of `attn/in_proj/bias` (and its Adam moments).

  The key bias has an exactly zero true gradient (softmax ignores a constant added to every
  key's logit), so its gradient is float noise that differs between meshes, and Adam turns
  any noise into +-lr steps. Its value changes no output, so it is not compared.
  """
  name = jax.tree_util.keystr(path)
  if "in_proj" in name and "bias" in name:
    width = a.shape[-1] // 3
    return np.delete(a, np.s_[width:2 * width], -1), np.delete(b, np.s_[width:2 * width], -1)
  return a, b


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 30, r"--config.batch_size=30 is not divisible by 8 devices"),
    ("batch_size", 0, r"--config.batch_size=0 must be positive"),
    ("optim.lr", -1e-3, r"--config.optim.lr=-0.001 must be positive: a negative rate climbs"),
    ("optim.lr", 0.0, r"--config.optim.lr=0.0 must be positive"),
    ("maskclip.mask_ratio", 1.0, r"--config.maskclip.mask_ratio=1.0 must be in \[0, 1\)"),
    ("maskclip.mask_ratio", -0.1, r"--config.maskclip.mask_ratio=-0.1 must be in \[0, 1\)"),
    ("model.size", "ViT-Q/16", r"config.model.size='ViT-Q/16' is unknown"),
    ("maskclip.teacher", "swa", r"--config.maskclip.teacher='swa' is unknown"),
    ("maskclip.distill_target", "hog", r"--config.maskclip.distill_target='hog' is unknown"),
    ("model.vision.posemb_init", "rope",
     r"--config.model.vision.posemb_init='rope' is unknown; use one of \('normal', 'sincos2d'\)"),
    ("mesh", (("data", -1), ("fsdp", 3)),
     r"--config.mesh=\(\('data', -1\), \('fsdp', 3\)\): fsdp=3 does not divide the 8 devices"),
    ("mesh", (("data", 2),), r"--config.mesh=\(\('data', 2\),\): 2 devices in the mesh, but "
     r"there are 8"),
])
def test_bad_config_fails_before_compiling(tiny_config, field, value, message):
  config = tiny_config()
  *sections, name = field.split(".")
  node = config
  for section in sections:
    node = node[section]
  node[name] = value
  with pytest.raises(ValueError, match=message):
    check_config(config, num_devices=8)


def test_a_good_config_passes(tiny_config):
  check_config(tiny_config(), num_devices=8)


@pytest.mark.parametrize("config_file", ["configs/tiny_synthetic.py",
                                         "configs/maskclip_vit_b16_yfcc15m.py:runlocal"])
def test_model_size_overrides_a_config_that_set_it_to_none(config_file, tmp_path):
  """The README's example, a named size on a config that set model.size=None, parses; the
  run then stops at the config check (batch_size=0), before anything is built."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
      [sys.executable, "-m", "maskclip_jax.cli.train", f"--config={config_file}",
       "--config.model.size=ViT-S/16", "--config.batch_size=0",
       f"--workdir={tmp_path}"], cwd=root, env=dict(env, MASKCLIP_CPU_DEFAULTS="0"),
      capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "--config.batch_size=0 must be positive" in proc.stderr, proc.stderr[-2000:]
  assert "not supported for overriding" not in proc.stderr
