"""The embedded default: a tiny MaskCLIP on synthetic captioned shapes at 64 px.

Trains on a 2-core laptop CPU in a few minutes, with no download:
  maskclip-train --config configs/tiny_synthetic.py --workdir /tmp/tiny
Variants: `configs/tiny_synthetic.py:clip` trains the CLIP baseline (no distillation).
"""
from maskclip_jax.config_defaults import base_config
from maskclip_jax.evaluation import eval_config


def get_config(arg=None):
  config = base_config()
  config.seed = 0
  config.batch_size = 64
  config.total_steps = 300

  config.input.train_data = "synthetic"
  config.input.eval_data = "synthetic"
  config.input.image_size = 64
  config.input.context_length = 32  # synthetic captions are short; 77 works too.
  config.input.shuffle_buffer = 2_000
  config.input.synthetic_train_size = 10_000
  config.input.synthetic_test_size = 1_000

  config.model.size = None
  config.model.embed_dim = 96
  config.model.vision.update(image_size=64, patch_size=8, width=96, layers=3, heads=4)
  config.model.text.update(context_length=32, vocab_size=49408, width=96, layers=3, heads=4)
  config.model.text_decoder.layers = 1

  config.maskclip.num_codewords = 512
  # Captions here have ~12 word tokens, so 20% is 2-3; the 49408-way vocabulary head is this
  # model's largest cost, so it runs on 4 slots per caption instead of 6.
  config.maskclip.mlm_max_predictions = 4
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 30
  config.optim.weight_decay = 0.1  # the paper's 0.5 is for 25 epochs of YFCC-15M at batch 4096

  config.checkpoint.every_steps = 100
  # Zero-shot on the 1000 test images (36 classes, chance 1/36) every 100 steps; retrieval,
  # k-NN and a linear probe (on 2000 training images) at the end.
  config.evals.zeroshot = eval_config("zeroshot", data="synthetic:test", classes="synthetic",
                                      every_steps=100)
  config.evals.retrieval = eval_config("retrieval", data="synthetic:test")
  config.evals.knn = eval_config("knn", data="synthetic:test",
                                 train_data="synthetic:train[:2000]")
  config.evals.linear_probe = eval_config("linear_probe", data="synthetic:test",
                                          train_data="synthetic:train[:2000]")
  config.log_every_steps = 25

  if arg == "clip":
    config.maskclip.w_dist = 0.0
    config.maskclip.w_mlm = 0.0
  elif arg:
    raise ValueError(f"configs/tiny_synthetic.py:{arg} is unknown; variants: 'clip'.")
  return config
