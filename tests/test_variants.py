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


def test_image_size_and_context_length_have_one_source():
  """The model's image size and text length are the input's: one override moves both."""
  config = load_config("tiny_synthetic", "")
  assert config.model.vision.image_size == config.input.image_size == 64
  config.input.image_size, config.input.context_length = 96, 24
  assert (config.model.vision.image_size, config.model.text.context_length) == (96, 24)
  scenes = load_config("tiny_synthetic", "scenes")
  assert scenes.model.text.context_length == scenes.input.context_length == 48


def test_the_clip_baseline_is_a_variant_of_the_paper_config():
  paper, clip = (load_config("maskclip_vit_b16_yfcc15m", arg) for arg in ("", "clip"))
  assert (clip.maskclip.w_dist, clip.maskclip.w_mlm) == (0.0, 0.0)
  assert (paper.maskclip.w_dist, paper.maskclip.w_mlm) == (0.05, 0.05)
  without_weights = lambda c: {k: v for k, v in c.to_dict().items() if k != "maskclip"}
  assert without_weights(clip) == without_weights(paper)


def test_runlocal_and_the_tests_train_one_tiny_model():
  import tiny_config  # pylint: disable=g-import-not-at-top
  model = lambda c: {k: v for k, v in c.model.to_dict().items()}
  runlocal = load_config("maskclip_vit_b16_yfcc15m", "runlocal")
  tests = tiny_config.make_tiny_config()
  runlocal.input.context_length = tests.input.context_length  # the only difference
  assert model(runlocal) == model(tests)
  assert runlocal.maskclip.num_codewords == tests.maskclip.num_codewords == 64
