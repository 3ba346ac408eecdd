"""The complete config every config file starts from; files override what they change.

What is the paper's and what is ours (the full text was not at hand when these were set):
  paper (arXiv 2208.12262): w_dist = w_mlm = 0.05 (weight 1.0 ruins the gain), mask ratio
    0.75, EMA ("mean") teacher, soft codeword targets, BERT-style text masking, a small
    image decoder, AdamW b1 0.9 / b2 0.98 / eps 1e-8, lr 5e-4, weight decay 0.5.
  not in the paper (our defaults): the codeword count K=8192 and the teacher/student
    temperatures (iBOT's 0.04 / 0.1), logit centring with momentum 0.9, the EMA momentum
    schedule 0.996 -> 1.0 (cosine), the decoder widths (= encoder widths), 4 text decoder
    blocks, the 20% text mask ratio.
"""
import ml_collections
from ml_collections import config_dict

from maskclip_jax.data.config import input_config_defaults
from maskclip_jax.models.sizes import model_config_defaults
from maskclip_jax.models.vocabulary import VOCAB_SIZE
from maskclip_jax.optimizer import optimizer_config_defaults


def maskclip_config_defaults() -> ml_collections.ConfigDict:
  """The `config.maskclip` section: the distillation branches and the teacher."""
  return ml_collections.ConfigDict(dict(
      w_dist=0.05,             # paper; 0 turns the image branch off (CLIP baseline).
      w_mlm=0.05,              # paper; 0 turns the text branch off.
      mask_ratio=0.75,         # paper: 75% of patches dropped for the student.
      text_mask_ratio=0.2,     # not in the paper: 20% of caption tokens, 80/10/10.
      # Most masked tokens per caption (BERT's max_predictions_per_seq); None fits a caption
      # of context_length tokens. The vocabulary head's cost is proportional to it.
      mlm_max_predictions=config_dict.placeholder(int),
      distill_target="codeword",  # paper's; 'feature' / 'pixel' for the Table 9 ablation.
      feature_loss="smooth_l1",   # for distill_target='feature': 'smooth_l1' or 'cosine'.
      num_codewords=8192,      # not in the paper.
      teacher="ema",           # paper's mean teacher; 'online' = stop-gradient online tower.
      teacher_temp=0.04,       # not in the paper (iBOT).
      student_temp=0.1,        # not in the paper (iBOT).
      center_momentum=0.9,     # not in the paper (DINO/iBOT centring).
      ema_momentum_start=0.996,  # not in the paper: m is unpublished.
      ema_momentum_end=1.0,
      # Beyond the paper, off by default (DESIGN.md): run the online image tower once, on the
      # visible patches only, for the contrastive loss (class token) and the decoder (patch
      # tokens), as FLIP and A-CLIP do: a MaskCLIP step then costs less than a CLIP step. The
      # teacher still sees the full image; evaluation and export use full images as usual.
      contrastive_on_visible=False,
      # 'softmax': CLIP's InfoNCE over the global batch (the paper's). 'sigmoid': SigLIP's
      # pairwise loss with a learned bias (a `logit_bias` parameter; temperature init 10).
      contrastive_loss="softmax",
  ))


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 4096       # global, over all devices and processes.
  # Training length: total_steps, or total_epochs over the training data (then total_steps is
  # derived from the data set size); exactly one of them.
  config.total_steps = 1000
  config.total_epochs = config_dict.placeholder(float)
  config.input = input_config_defaults()
  config.model = model_config_defaults()
  # One source each: the model's image size and text length are the input's (references, so
  # --config.input.image_size=N resizes the images and the model together).
  config.model.vision.image_size = config.input.get_ref("image_size")
  config.model.text.context_length = config.input.get_ref("context_length")
  config.maskclip = maskclip_config_defaults()
  config.optim = optimizer_config_defaults()
  # The device mesh, (name, size) pairs over ('data', 'fsdp'); -1 is the devices left over. The
  # batch is split over both axes; 'fsdp' splits parameters too (with the 'fsdp' rule below).
  config.mesh = (("data", -1), ("fsdp", 1))
  # (regex over train-state paths, 'replicate' | 'fsdp' | spec tuple); see sharding.py.
  config.sharding_rules = (("params/.*|teacher/.*|opt_state/.*", "replicate"),)

  # Warm start: another run's workdir (its latest params), or 'openclip:PATH' (a state dict).
  config.init_from = ""
  # Resume from this step of WORKDIR's checkpoints (None: the newest that passes verification).
  # Newer checkpoints are moved to WORKDIR/checkpoints_set_aside/ (kept, out of the run's way).
  config.resume_step = config_dict.placeholder(int)
  config.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000,        # and at the end, and on SIGTERM/SIGINT.
      keep=3,                  # the last K checkpoints.
      async_save=True,
      # Refuse to start when the workdir's disk has less free space than this many checkpoints
      # (their size is computed from the train state).
      min_free_checkpoints=2.0,
  ))
  # Evaluators run in training (every N steps and at the end) and by maskclip-eval:
  # config.evals.NAME = evaluation.eval_config('zeroshot'|'retrieval'|'linear_probe'|'knn', ...)
  config.evals = ml_collections.ConfigDict()
  config.log_every_steps = 50
  # Save and exit cleanly at this step (None: run to total_steps), e.g. to split a long run into
  # jobs that fit a scheduler's time limit; the next job resumes from the checkpoint.
  config.stop_at_step = config_dict.placeholder(int)
  # A non-finite loss term or gradient norm stops the run (keeping the last good checkpoint);
  # with skip_nonfinite_steps the update is dropped instead and the steps are counted.
  config.skip_nonfinite_steps = False
  # MFU's denominator: peak FLOP/s of one device; None uses the built-in table (flops.py).
  config.peak_flops_per_device = config_dict.placeholder(float)
  return config


# The paper's Table 9 builds MaskCLIP up from CLIP one change a row; each row is a config
# variant (`configs/X.py:ROW`), and `efficient` is ours (DESIGN.md, beyond the paper).
# Rows 3 and 4, "feature targets", are read as the paper's own target, soft codewords over the
# teacher's features (not a regression onto them): then rows 3 -> 4 -> 5 each change exactly
# one thing (online -> EMA teacher, + text MLM) and row 5 is the full method. The regression
# reading stays available as --config.maskclip.distill_target=feature.
ABLATION_VARIANTS = {
    "clip": dict(w_dist=0.0, w_mlm=0.0),                                  # row 1
    "pixel": dict(w_dist=0.05, w_mlm=0.0, distill_target="pixel"),        # row 2: MAE pixels
    "feature_online": dict(w_dist=0.05, w_mlm=0.0, distill_target="codeword",
                           teacher="online"),                             # row 3
    "ema": dict(w_dist=0.05, w_mlm=0.0, distill_target="codeword", teacher="ema"),  # row 4
    "maskclip": dict(w_dist=0.05, w_mlm=0.05, distill_target="codeword",
                     teacher="ema"),                                      # row 5: MaskCLIP
    "efficient": dict(w_dist=0.05, w_mlm=0.05, distill_target="codeword", teacher="ema",
                      contrastive_on_visible=True),                       # FLIP/A-CLIP style
}
# Variants that combine with a row: SigLIP's loss, and the 2-step smoke run.
MODIFIER_VARIANTS = ("sigmoid", "runlocal")


def split_variants(arg, config_file: str, extra=()) -> list:
  """'ema,runlocal' -> ['ema', 'runlocal'], at most one ablation row; unknown names fail."""
  names = [name.strip() for name in (arg or "").split(",") if name.strip()]
  known = tuple(ABLATION_VARIANTS) + MODIFIER_VARIANTS + tuple(extra)
  unknown = [name for name in names if name not in known]
  if unknown:
    raise ValueError(f"{config_file}:{arg}: unknown variant(s) {unknown}; variants are "
                     f"{', '.join(known)}, comma-separated (e.g. ':ema,runlocal').")
  rows = [name for name in names if name in ABLATION_VARIANTS]
  if len(rows) > 1:
    raise ValueError(f"{config_file}:{arg}: choose one ablation row of {rows}.")
  return names


def apply_variants(config: ml_collections.ConfigDict, names) -> ml_collections.ConfigDict:
  """Applies the ablation row and the modifiers among `names` (see split_variants)."""
  for name in names:
    if name in ABLATION_VARIANTS:
      config.maskclip.update(ABLATION_VARIANTS[name])
  if "sigmoid" in names:
    config.maskclip.contrastive_loss = "sigmoid"
  if "runlocal" in names:
    shrink_for_local_run(config)
  return config


def tiny_model(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The smallest MaskCLIP that exercises every branch: 32 px, patch 8 (16 patches), width 32,
  2 blocks a tower, 1 text decoder block, 64 codewords, f32 (bf16 is slower than f32 on CPUs
  without AMX). `:runlocal` and the tests train it."""
  config.input.image_size = 32
  config.model.size = None
  config.model.dtype = "float32"
  config.model.embed_dim = 32
  config.model.vision.update(patch_size=8, width=32, layers=2, heads=2)
  config.model.text.update(vocab_size=VOCAB_SIZE, width=32, layers=2, heads=2)
  config.model.text_decoder.layers = 1
  config.maskclip.num_codewords = 64
  return config


def shrink_for_local_run(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`:runlocal`: any config shrunk to a smoke run that builds and trains 2 steps on a CPU."""
  config.batch_size = 8
  config.total_steps = 2
  config.total_epochs = None
  config.optim.warmup_steps = 0
  config.input.train_data = "synthetic"
  config.input.eval_data = "synthetic"
  config.input.shuffle_buffer = 64
  config.input.synthetic_train_size = 256
  config.input.synthetic_test_size = 64
  tiny_model(config)
  config.checkpoint.every_steps = 1
  config.log_every_steps = 1
  # One cheap evaluator exercises the evaluation path; the others cost more than the run.
  zeroshot = {name: entry for name, entry in config.evals.items() if entry.type == "zeroshot"}
  config.evals = ml_collections.ConfigDict()
  for name, entry in list(zeroshot.items())[:1]:
    entry.batch_size = 32
    config.evals[name] = entry
  return config
