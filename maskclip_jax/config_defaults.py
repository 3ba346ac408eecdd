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

from maskclip_jax.models.sizes import model_config_defaults
from maskclip_jax.optimizer import optimizer_config_defaults


def maskclip_config_defaults() -> ml_collections.ConfigDict:
  """The `config.maskclip` section: the distillation branches and the teacher."""
  return ml_collections.ConfigDict(dict(
      w_dist=0.05,             # paper; 0 turns the image branch off (CLIP baseline).
      w_mlm=0.05,              # paper; 0 turns the text branch off.
      mask_ratio=0.75,         # paper: 75% of patches dropped for the student.
      text_mask_ratio=0.2,     # not in the paper: 20% of caption tokens, 80/10/10.
      distill_target="codeword",  # paper's; 'feature' / 'pixel' for the Table 9 ablation.
      feature_loss="smooth_l1",   # for distill_target='feature': 'smooth_l1' or 'cosine'.
      num_codewords=8192,      # not in the paper.
      teacher="ema",           # paper's mean teacher; 'online' = stop-gradient online tower.
      teacher_temp=0.04,       # not in the paper (iBOT).
      student_temp=0.1,        # not in the paper (iBOT).
      center_momentum=0.9,     # not in the paper (DINO/iBOT centring).
      ema_momentum_start=0.996,  # not in the paper: m is unpublished.
      ema_momentum_end=1.0,
  ))


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.batch_size = 4096       # global, over all devices and processes.
  config.total_steps = 1000
  config.model = model_config_defaults()
  config.maskclip = maskclip_config_defaults()
  config.optim = optimizer_config_defaults()
  config.mesh = ml_collections.ConfigDict(dict(fsdp=1))
  # (regex over train-state paths, 'replicate' | 'fsdp' | spec tuple); see sharding.py.
  config.sharding_rules = (("params/.*|teacher/.*|opt_state/.*", "replicate"),)
  return config
