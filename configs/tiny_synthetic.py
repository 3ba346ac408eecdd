"""The embedded default: a tiny MaskCLIP on synthetic captioned shapes at 64 px, 16-px patches.

Trains on a 2-core laptop CPU in a few minutes, with no download:
  maskclip-train --config configs/tiny_synthetic.py --workdir /tmp/tiny

Variants, comma-separated (`configs/tiny_synthetic.py:ema,scenes`):
  clip, pixel, feature_online, ema, maskclip   the paper's Table 9 rows, CLIP up to MaskCLIP
                                               (maskclip = the default); rows 3-4 read "feature
                                               targets" as soft codewords (config_defaults.py)
  efficient    MaskCLIP with the contrastive loss on the student's visible patches (FLIP-style)
  sigmoid      SigLIP's loss instead of CLIP's softmax
  scenes       the harder data set: 2-4 objects an image, captions with relations, zero-shot
               over single attributes (colour, shape, size, position, texture); what
               bench/ablation.py runs
  runlocal     a 2-step smoke run
"""
from maskclip_jax.config_defaults import apply_variants, base_config, split_variants
from maskclip_jax.evaluation import eval_config
from maskclip_jax.models.vocabulary import VOCAB_SIZE

SCENE_ATTRIBUTES = ("colour", "shape", "size", "position", "texture")


def get_config(arg=None):
  variants = split_variants(arg, "configs/tiny_synthetic.py", extra=("scenes",))
  config = base_config()
  config.seed = 0
  config.batch_size = 64
  config.total_steps = 1100  # under 5 minutes on 2 CPU cores, the data build included

  config.input.train_data = "synthetic"
  config.input.eval_data = "synthetic"
  config.input.image_size = 64
  # The shapes' captions are at most 15 tokens with SOT and EOT (the scenes' longer ones set
  # 48 below); 16 halves the text towers' cost against 32.
  config.input.context_length = 16
  config.input.shuffle_buffer = 2_000
  config.input.synthetic_train_size = 10_000
  config.input.synthetic_test_size = 1_000
  # No random crop: the captions name each shape's place and size, which a crop would move and
  # scale away from what the caption says.
  config.input.crop_scale = (1.0, 1.0)
  config.input.crop_ratio = (1.0, 1.0)

  config.model.size = None
  config.model.embed_dim = 96
  # 16 patches of 16 px: half the MaskCLIP step time of 8-px patches (the text side stays), and
  # a ViT trained on shape labels learned shape as fast with them (0.62 vs 0.56 at 300 steps).
  # The sine-cosine start gives the class token the shape's place from the first step; from
  # N(0, 0.1), 900-step CLIP runs here learned colour, size and shape but hardly where the
  # shape is (retrieval R@1 0.10, against 0.21-0.23 from the table).
  config.model.vision.update(patch_size=16, width=96, layers=3, heads=4,
                             posemb_init="sincos2d")
  config.model.text.update(vocab_size=VOCAB_SIZE, width=96, layers=3, heads=4)
  config.model.text_decoder.layers = 1

  config.maskclip.num_codewords = 512
  # The EMA teacher averages over ~1 / (1 - m) steps. The paper-scale 0.996 (~250 steps, a
  # fraction of a percent of a 25-epoch run) would be a quarter of this 1100-step run, the
  # teacher lagging far behind; 0.98 averages over ~50 steps and still rises to 1.0 by the end.
  config.maskclip.ema_momentum_start = 0.98
  # Captions here have 4-13 word tokens, so 20% is 1-3; the 49408-way vocabulary head is this
  # model's largest cost (a third of the step's FLOPs at 3 slots), so it runs on 2 a caption.
  config.maskclip.mlm_max_predictions = 2
  config.optim.lr = 1e-3
  # 100 warm-up steps: after 30, one seed in three learned shape some 250 steps late (seed 1:
  # zero-shot 0.616 and R@1 0.27 / 0.22 at step 1100; with 100 warm-up steps 0.758, 0.56 / 0.48).
  config.optim.warmup_steps = 100
  config.optim.weight_decay = 0.1  # the paper's 0.5 is for 25 epochs of YFCC-15M at batch 4096

  config.checkpoint.every_steps = 275
  # Zero-shot on the 1000 test images (36 classes, chance 1/36) every 275 steps; retrieval,
  # k-NN and a linear probe (on 2000 training images) at the end.
  config.evals.zeroshot = eval_config("zeroshot", data="synthetic:test", classes="synthetic",
                                      every_steps=275)
  config.evals.retrieval = eval_config("retrieval", data="synthetic:test")
  config.evals.knn = eval_config("knn", data="synthetic:test",
                                 train_data="synthetic:train[:2000]")
  config.evals.linear_probe = eval_config("linear_probe", data="synthetic:test",
                                          train_data="synthetic:train[:2000]")
  config.log_every_steps = 25

  if "scenes" in variants:
    config.input.synthetic_kind = "scenes"
    # The settings bench/ablation.py's scenes grid was measured with: 2-4 smaller objects an
    # image want 8-px patches; the random crop and the N(0, 0.1) positional start are kept.
    config.input.crop_scale = (0.5, 1.0)
    config.input.crop_ratio = (3 / 4, 4 / 3)
    config.model.vision.update(patch_size=8, posemb_init="normal")
    config.total_steps = 450
    config.optim.warmup_steps = 30
    config.checkpoint.every_steps = 100
    # Captions name 2-4 objects and their relations: longer than the shapes' captions.
    config.input.context_length = 48
    config.maskclip.mlm_max_predictions = 6
    # Zero-shot over the subject's colour x shape (36 classes), and over each attribute alone.
    config.evals.zeroshot.classes = "scenes"
    for attribute in SCENE_ATTRIBUTES:
      config.evals[f"zeroshot_{attribute}"] = eval_config(
          "zeroshot", data="synthetic:test", classes=f"scenes:{attribute}",
          label_key=attribute, every_steps=100)
    config.evals.zeroshot.every_steps = 100
  return apply_variants(config, variants)
