"""Every Table 9 row and our efficient variant train from their config variants: a 2-step
`:runlocal` of each, on the paper config and on the tiny default's harder data set."""
import pytest

from conftest import load_module
from maskclip_jax import checkpoint, train
from maskclip_jax.config_defaults import ABLATION_VARIANTS

# What each row trains beyond the contrastive loss.
EXPECTED_TERMS = {
    "clip": (), "pixel": ("loss_dist",), "feature_online": ("loss_dist", "codeword_perplexity"),
    "ema": ("loss_dist", "codeword_perplexity"),
    "maskclip": ("loss_dist", "codeword_perplexity", "loss_mlm"),
    "efficient": ("loss_dist", "codeword_perplexity", "loss_mlm"),
}


def load_config(name, arg):
  return load_module(f"configs/{name}.py", name).get_config(arg)


def test_every_ablation_row_has_expected_terms():
  assert sorted(EXPECTED_TERMS) == sorted(ABLATION_VARIANTS)


@pytest.mark.parametrize("config_name,data", [("maskclip_vit_b16_yfcc15m", ""),
                                              ("tiny_synthetic", ",scenes")])
@pytest.mark.parametrize("variant", sorted(ABLATION_VARIANTS))
def test_runlocal_of_each_variant_trains_two_steps(config_name, data, variant, tfds_dir,
                                                   tmp_path):
  config = load_config(config_name, f"{variant}{data},runlocal")
  config.input.tfds_data_dir = tfds_dir
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert checkpoint.latest_step(str(tmp_path)) == 2
  for term in ("loss",) + EXPECTED_TERMS[variant]:
    assert term in metrics, (variant, sorted(metrics))
  if variant == "clip":
    assert "loss_dist" not in metrics and "loss_mlm" not in metrics
  if config.evals:  # the tiny default's runlocal keeps one zero-shot evaluator
    assert any(key.startswith("eval/zeroshot") for key in metrics), sorted(metrics)


def test_sigmoid_variant_trains(tfds_dir, tmp_path):
  config = load_config("tiny_synthetic", "efficient,sigmoid,runlocal")
  config.input.tfds_data_dir = tfds_dir
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert "loss_sigmoid" in metrics and "loss_i2t" not in metrics


def test_variant_errors_name_the_choices():
  with pytest.raises(ValueError, match="unknown variant"):
    load_config("tiny_synthetic", "maskclp")
  with pytest.raises(ValueError, match="one ablation row"):
    load_config("maskclip_vit_b16_yfcc15m", "clip,ema")
