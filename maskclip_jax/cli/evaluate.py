"""maskclip-eval: run a run's evaluators (`config.evals`) on one of its saved checkpoints.

  maskclip-eval --workdir W [--step N] [--evals=zeroshot,retrieval] [--image_tower=teacher] \
      [--config.evals.zeroshot.data=folder:/data/imagenet/val --config.evals.zeroshot.classes=imagenet]

The config is the run's own (`W/config.json`), so `--config.FIELD=VALUE` overrides any of its
fields, e.g. an evaluator's data. Metrics are printed and written as JSON, one file per
evaluator, to `--output_dir` (default `W/evals/standalone`), in the trainer's format.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from maskclip_jax.models.image_towers import IMAGE_TOWERS  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run's workdir.")
_STEP = flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).")
_EVALS = flags.DEFINE_list("evals", None, "Evaluators of config.evals to run (default: all).")
_IMAGE_TOWER = flags.DEFINE_enum("image_tower", None, list(IMAGE_TOWERS),
                                 "Overrides every evaluator's image_tower.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None,
                                  "Where the JSON files go (default: WORKDIR/evals/standalone).")
flags.mark_flags_as_required(["workdir"])


def _workdir_from_argv(argv) -> str | None:
  """--workdir's value, read before absl parses flags: the config flag's default needs it."""
  for i, arg in enumerate(argv):
    if arg.startswith("--workdir="):
      return arg.split("=", 1)[1]
    if arg == "--workdir" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def load_params(workdir: str, step, mesh):
  """(params, teacher, step) restored straight onto `mesh`, replicated."""
  from maskclip_jax import checkpoint, sharding  # pylint: disable=g-import-not-at-top
  state, step = checkpoint.load_state(workdir, step, sharding.replicated(mesh))
  return state["params"], state.get("teacher") or {}, step


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # tf.data only: keep TF off the accelerators.
  import jax  # pylint: disable=g-import-not-at-top
  from maskclip_jax import sharding  # pylint: disable=g-import-not-at-top
  from maskclip_jax.config_checks import check_evaluation_config  # pylint: disable=g-import-not-at-top
  from maskclip_jax.evaluation.registry import Evaluations, format_metrics  # pylint: disable=g-import-not-at-top
  from maskclip_jax.models.maskclip import build_model  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  if not config.evals:
    raise app.UsageError(f"{_WORKDIR.value}/config.json has no config.evals entries; add them "
                         "to the run's config (evaluation.eval_config) to evaluate it.")
  if _IMAGE_TOWER.value:
    with config.unlocked():
      for name in config.evals:
        config.evals[name].image_tower = _IMAGE_TOWER.value
  check_evaluation_config(config, jax.device_count())  # before anything is read or compiled
  mesh = sharding.make_mesh(1)  # data parallel over every device; params replicated
  model = build_model(config.model, config.maskclip)
  params, teacher, step = load_params(_WORKDIR.value, _STEP.value, mesh)
  output_dir = _OUTPUT_DIR.value or os.path.join(_WORKDIR.value, "evals", "standalone")
  evaluations = Evaluations(config, model, mesh, _WORKDIR.value, output_dir=output_dir)
  results = evaluations.run(step, params, teacher, names=_EVALS.value)
  for name, metrics in results.items():
    print(f"{name} @ step {step}: "
          + format_metrics(metrics), flush=True)
  logging.info("Wrote %s", output_dir)


_CONFIG = None


def run():
  """Console-script entry point."""
  global _CONFIG
  workdir = _workdir_from_argv(sys.argv)
  if workdir is None:
    from maskclip_jax.config_defaults import base_config  # pylint: disable=g-import-not-at-top
    default = base_config()  # for --help; --workdir is required anyway
  else:
    from maskclip_jax import checkpoint  # pylint: disable=g-import-not-at-top
    try:
      default = checkpoint.read_config(workdir)
    except FileNotFoundError as e:
      sys.exit(f"maskclip-eval: {e}")
  _CONFIG = config_flags.DEFINE_config_dict("config", default, lock_config=True)
  app.run(main)


if __name__ == "__main__":
  run()
