"""timm export: the architecture table agrees with the installed timm, the architecture each
size maps to, and a size timm cannot express fails naming the size."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from maskclip_jax import export  # noqa: E402
from maskclip_jax.config_defaults import base_config  # noqa: E402
from maskclip_jax.export import to_timm  # noqa: E402


def _arch(size, **vision):
  config = base_config()
  config.model.size = size
  config.model.vision.update(vision)
  return export.clip_architecture(config)


def test_table_matches_the_installed_timm():
  with torch.device("meta"):  # shapes only: no memory, no init
    for entry in to_timm.TIMM_CLIP_VITS:
      model = timm.create_model(entry.name)
      block = model.blocks[0]
      assert model.patch_embed.patch_size == (entry.patch_size,) * 2, entry.name
      assert model.patch_embed.img_size == (entry.image_size,) * 2, entry.name
      assert (model.embed_dim, len(model.blocks), block.attn.num_heads) == (
          entry.width, entry.depth, entry.heads), entry.name
      assert block.mlp.fc1.out_features == entry.mlp_hidden, entry.name
      # The CLIP structure ours has: pre-norm, no patch bias, exact GELU, LN eps 1e-5.
      assert isinstance(model.norm_pre, torch.nn.LayerNorm), entry.name
      assert model.patch_embed.proj.bias is None, entry.name
      assert type(block.mlp.act) is torch.nn.GELU and block.mlp.act.approximate == "none"
      assert model.norm.eps == block.norm1.eps == 1e-5, entry.name
  exact_gelu_clip_vits = {name for name in timm.list_models("vit_*_clip_*")
                          if "quickgelu" not in name}
  assert exact_gelu_clip_vits == {entry.name for entry in to_timm.TIMM_CLIP_VITS}


@pytest.mark.parametrize("size, vision, name, overrides", [
    ("ViT-B/16", {}, "vit_base_patch16_clip_224", {}),
    ("ViT-B/16", dict(image_size=384), "vit_base_patch16_clip_384", {}),
    ("ViT-B/16", dict(image_size=256), "vit_base_patch16_clip_224", dict(img_size=256)),
    ("ViT-L/14", dict(image_size=336), "vit_large_patch14_clip_336", {}),
    ("ViT-S/16", {}, "vit_base_patch16_clip_224", dict(embed_dim=384, depth=12, num_heads=6)),
    ("ViT-Ti/16", {}, "vit_base_patch16_clip_224", dict(embed_dim=192, depth=12, num_heads=3)),
])
def test_each_size_maps_to_a_timm_clip_architecture(size, vision, name, overrides):
  arch = _arch(size, **vision)
  got_name, model_args = to_timm.timm_architecture(arch)
  assert got_name == name
  assert model_args == dict(num_classes=arch.embed_dim, global_pool="token", **overrides)


@pytest.mark.parametrize("vision, detail", [
    (dict(image_size=32, patch_size=8), "not patch 8"),
    (dict(mlp_ratio=3.0), "MLP ratio 3"),
])
def test_a_size_timm_cannot_express_fails_naming_the_size(vision, detail):
  arch = _arch("ViT-Ti/16", **vision)
  params = {"visual": {}, "text": {}, "logit_scale": np.zeros((), np.float32)}
  with pytest.raises(ValueError) as error:
    export.export_timm(params, arch, "/nonexistent/never-written")
  message = str(error.value)
  assert message.startswith("ViT-Ti/16 (vision: ")
  assert detail in message and "--to open_clip" in message
