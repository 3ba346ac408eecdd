"""A model trained with configs/tiny_synthetic.py, exported to open_clip, classifies the
synthetic test split zero-shot in PyTorch as well as the JAX evaluator says."""
import io
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from PIL import Image  # noqa: E402

from maskclip_jax import train  # noqa: E402
from maskclip_jax.data import captioned_shapes  # noqa: E402
from maskclip_jax.evaluation import eval_config  # noqa: E402
from maskclip_jax.cli.export import run as export_run  # noqa: E402
from open_clip_zeroshot import open_clip_zeroshot  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import tiny_synthetic  # noqa: E402

# open_clip's initialisation sits on the contrastive loss's plateau (log batch) for the first ~50
# steps of this tiny model; 120 leaves it clearly trained.
STEPS = 120


def test_open_clip_export_gives_the_jax_zero_shot_accuracy(tmp_path):
  # The CLIP variant: the exported towers are the same, and it trains ~3x faster per step.
  config = tiny_synthetic.get_config("clip")
  config.input.tfds_data_dir = str(tmp_path / "tfds")
  config.input.synthetic_train_size = 1500
  config.input.synthetic_test_size = 400
  config.input.shuffle_buffer = 500
  config.total_steps = STEPS
  config.optim.warmup_steps = 4
  config.checkpoint.every_steps = STEPS
  config.log_every_steps = 8
  config.evals = {"zeroshot": eval_config("zeroshot", data="synthetic:test", batch_size=64)}
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  jax_top1 = json.load(open(os.path.join(workdir, "evals", f"zeroshot_step{STEPS}.json")))[
      "metrics"]["top1"]

  out = str(tmp_path / "open_clip")
  export_run([f"--workdir={workdir}", "--to=open_clip", f"--out={out}"])

  builder = captioned_shapes.prepared_builder(image_size=64, num_train=1500, num_test=400,
                                              data_dir=config.input.tfds_data_dir)
  import tensorflow_datasets as tfds  # after torch (conftest): the other order segfaults
  images, labels = [], []
  for example in builder.as_dataset(split="test", decoders={"image": tfds.decode.SkipDecoding()}
                                    ).as_numpy_iterator():
    images.append(Image.open(io.BytesIO(example["image"])).convert("RGB"))
    labels.append(int(example["label"]))
  torch_metrics = open_clip_zeroshot(out, images, labels, captioned_shapes.CLASS_NAMES,
                                     captioned_shapes.ZERO_SHOT_TEMPLATES)
  assert len(labels) == 400
  assert abs(torch_metrics["top1"] - jax_top1) <= 0.005, (torch_metrics, jax_top1)
  # Trained: clearly above chance (1/36), so agreement is not two models at chance.
  assert jax_top1 > 3 / 36, jax_top1
