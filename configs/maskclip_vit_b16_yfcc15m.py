"""MaskCLIP ViT-B/16 on YFCC-15M: the paper's recipe (Dong et al., CVPR 2023, arXiv 2208.12262).

  maskclip-train --config configs/maskclip_vit_b16_yfcc15m.py \
      --config.input.train_data='wds:gs://BUCKET/yfcc15m/{00000..01499}.tar' --workdir W
  ... configs/maskclip_vit_b16_yfcc15m.py:runlocal   a 2-step smoke run on synthetic data.

Variants (comma-separated, e.g. `:ema,runlocal`): the paper's Table 9 rows `clip`, `pixel`,
`feature_online`, `ema`, `maskclip` (= the default), our `efficient` (the contrastive loss on
the student's visible patches), `sigmoid` (SigLIP's loss) and `runlocal`. Rows 3-4 read
"feature targets" as soft codewords; see ABLATION_VARIANTS in maskclip_jax/config_defaults.py.

Values marked "paper" come from the paper; "not in the paper" are our defaults (the full text
was not at hand when they were chosen: see maskclip_jax/config_defaults.py).
Paper's results for this recipe: ImageNet zero-shot 44.5, linear probe 73.7, Flickr30k
zero-shot R@1 I2T/T2I 70.1/45.6; for its CLIP baseline (`:clip`, the masked self-distillation
branches off: w_dist = w_mlm = 0, so no decoders are built) 37.6, 66.5 and 52.9/32.8.
"""
from maskclip_jax.config_defaults import apply_variants, base_config, split_variants

YFCC15M_EXAMPLES = 15_000_000  # approximately; the real count comes from the shards.


def get_config(arg=None):
  variants = split_variants(arg, "configs/maskclip_vit_b16_yfcc15m.py")
  config = base_config()
  config.model.size = "ViT-B/16"          # paper: ViT-B/16 image tower, CLIP text tower.
  config.batch_size = 4096                # paper
  config.total_steps = None
  config.total_epochs = 25.0              # paper: 25 epochs
  config.input.image_size = 224           # paper
  config.input.crop_scale = (0.5, 1.0)    # paper: RandomResizedCrop(224, scale 0.5-1.0)
  config.input.train_data = "wds:/data/yfcc15m/{00000..01499}.tar"  # set to your shards
  config.input.eval_data = "synthetic"
  # 0..255 pixels to the device, normalised in the step: at 224 px from JPEG shards the host
  # pipeline runs ~410 instead of ~260 images/s per core (bench/input_pipeline.py), and the
  # accelerators this recipe targets wait on the host, not the other way round.
  config.input.image_dtype = "uint8"
  # Mixed precision like open_clip's AMP (README "Speed": products in bf16, the rest f32), and
  # attention='auto' (cuDNN's fused kernel on GPUs). `:runlocal` goes back to f32 for CPUs.
  config.model.dtype = "bfloat16"

  config.optim.lr = 5e-4                  # paper
  config.optim.b1, config.optim.b2, config.optim.eps = 0.9, 0.98, 1e-8  # paper
  config.optim.weight_decay = 0.5         # paper
  config.optim.warmup_steps = YFCC15M_EXAMPLES // 4096  # paper: 1 warm-up epoch

  config.maskclip.w_dist = 0.05           # paper
  config.maskclip.w_mlm = 0.05            # paper
  config.maskclip.mask_ratio = 0.75       # paper
  config.maskclip.distill_target = "codeword"  # paper
  config.maskclip.teacher = "ema"         # paper (mean teacher)
  config.maskclip.ema_momentum_start = 0.996  # not in the paper

  config.checkpoint.every_steps = 1000
  config.log_every_steps = 50
  return apply_variants(config, variants)
