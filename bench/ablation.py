"""The paper's Table 9 build-up (and our efficient variant), several seeds, one data set: a table
and plots that anyone can rerun.

  python bench/ablation.py --out results/ablation \
      --variants clip pixel feature_online ema maskclip efficient --seeds 0 1 2 \
      --steps 600 --eval_every 150 [--data_variant scenes] [--set FIELD=VALUE ...]

Each (variant, seed) trains `configs/tiny_synthetic.py:VARIANT,DATA` with `maskclip-train` in a
subprocess (same model, steps and batch for all; `--set` adds `--config.FIELD=VALUE` to every
run), with every evaluator of that config and a checkpoint every `--eval_every` steps. After a
run the pointing game is measured at each checkpoint. Runs already finished under `--out` are
not trained again, so an interrupted grid continues where it stopped; every finished run
rewrites the table and the plots:

  OUT/results.json, OUT/results.md   mean +- std over seeds at the last step, and every run
  OUT/<metric>.png                   the metric against steps and against wall-clock, one line
                                     (seed mean, shaded +- std) per variant
  OUT/runs/<variant>_s<seed>/        the run's workdir (train.log, evals/, checkpoints/, events)

Wall-clock is seconds since the trainer process started (data build and compilation included),
minus the time spent in evaluations; step time is the median of the logged step times.

The pointing game (Zhang et al. 2016): the share of test images where the heat map's maximum for
the prompt naming the subject ("a photo of a red square.") falls inside the subject's pixels.
The heat map is `maskclip-heatmap`'s default (heatmap.DEFAULT_FEATURES, on the EMA teacher's
image tower when the run has one, else the online tower).

Object zero-shot: the trainer's zero-shot evaluators score the *subject's* labels, but nothing in
an image marks which of its 2-4 objects is the subject, so a model that names another object
in the image is scored wrong. These two metrics score against every object instead (online
image tower, the 36 colour x shape classes with the subject task's prompts):
  objects top-1   the share of test images whose best class is one of the image's objects;
  objects mAP     the mean over images of the average precision of the image's objects' classes
                  in the ranking of all 36 (multi-label zero-shot).
`--rescore` adds the checkpoint-based metrics (these and the pointing game) to runs that were
finished without them, without training.
"""
import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_VARIANTS = ("clip", "pixel", "feature_online", "ema", "maskclip", "efficient")
DONE_FILE = "ablation_run.json"
# Table columns: (name in results, evaluator/metric it is read from, header).
COLUMNS = (
    ("objects_top1", None, "objects top-1"),
    ("objects_map", None, "objects mAP"),
    ("zeroshot_top1", ("zeroshot", "top1"), "zero-shot top-1"),
    ("zeroshot_colour_top1", ("zeroshot_colour", "top1"), "colour"),
    ("zeroshot_shape_top1", ("zeroshot_shape", "top1"), "shape"),
    ("zeroshot_size_top1", ("zeroshot_size", "top1"), "size"),
    ("zeroshot_position_top1", ("zeroshot_position", "top1"), "position"),
    ("zeroshot_texture_top1", ("zeroshot_texture", "top1"), "texture"),
    ("linear_probe_top1", ("linear_probe", "top1"), "linear probe top-1"),
    ("knn_top1", ("knn", "top1"), "k-NN top-1"),
    ("retrieval_i2t_r1", ("retrieval", "i2t_r1"), "I2T R@1"),
    ("retrieval_t2i_r1", ("retrieval", "t2i_r1"), "T2I R@1"),
    ("pointing_game", None, "pointing (default features)"),
    ("pointing_game_tokens", None, "pointing (tokens)"),
    ("pointing_game_values", None, "pointing (values)"),
    ("wall_clock_s", None, "wall-clock (s)"),
    ("step_time_s", None, "step time (s)"),
)


def load_config(config_file: str, arg: str):
  spec = importlib.util.spec_from_file_location("ablation_config", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def run_name(variant: str, seed: int) -> str:
  return f"{variant}_s{seed}"


def train(args, variant: str, seed: int, workdir: str) -> float:
  """Trains one run in a subprocess; returns the process start time (time.time())."""
  arg = ",".join([variant] + ([args.data_variant] if args.data_variant else []))
  config = load_config(args.config, arg)
  flags = [f"--config.seed={seed}", f"--config.total_steps={args.steps}",
           f"--config.checkpoint.every_steps={args.eval_every}",
           f"--config.checkpoint.keep={args.steps // args.eval_every + 2}",
           f"--config.log_every_steps={args.log_every}"]
  flags += [f"--config.evals.{name}.every_steps={args.eval_every}" for name in config.evals]
  flags += [f"--config.{setting}" for setting in args.set]
  command = [sys.executable, "-m", "maskclip_jax.cli.train", f"--config={args.config}:{arg}",
             f"--workdir={workdir}", *flags]
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  with open(os.path.join(workdir, "train.log"), "w") as log:
    log.write(" ".join(command) + "\n")
    log.flush()
    code = subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  if code:
    raise RuntimeError(f"{variant} seed {seed} failed (exit {code}); see "
                       f"{os.path.join(workdir, 'train.log')}")
  return start


def read_evals(workdir: str) -> dict:
  """({step: {'evaluator/metric': value}}, {step: seconds spent evaluating there})."""
  metrics, seconds = {}, {}
  folder = os.path.join(workdir, "evals")
  for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name)) as f:
      record = json.load(f)
    step = int(record["step"])
    for key, value in record["metrics"].items():
      metrics.setdefault(step, {})[f"{record['name']}/{key}"] = value
    seconds[step] = seconds.get(step, 0.0) + record["seconds"]
  return metrics, seconds


def read_step_times(workdir: str) -> dict:
  """{step: (event wall time, logged step_time)} from the run's TensorBoard events."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from tensorboard.backend.event_processing import event_accumulator
  # pylint: enable=g-import-not-at-top
  accumulator = event_accumulator.EventAccumulator(
      workdir, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0})
  accumulator.Reload()
  tags = accumulator.Tags()
  events = {}
  for kind, read in (("tensors", accumulator.Tensors), ("scalars", accumulator.Scalars)):
    if "step_time" in tags.get(kind, []):
      for event in read("step_time"):
        value = (float(tf.make_ndarray(event.tensor_proto)) if kind == "tensors"
                 else float(event.value))
        events[int(event.step)] = (event.wall_time, value)
  return events


def checkpoint_metrics(workdir: str, steps, num_images: int, batch: int = 100) -> dict:
  """{'pointing_game': [...], 'objects_top1': [...], 'objects_map': [...]}, one per step, from
  the run's checkpoints and freshly generated scene test images."""
  # pylint: disable=g-import-not-at-top
  import jax
  from maskclip_jax import checkpoint, heatmap
  from maskclip_jax import normalization
  from maskclip_jax.data import captioned_scenes
  from maskclip_jax.models.maskclip import MaskCLIP, build_model
  # pylint: enable=g-import-not-at-top
  config = checkpoint.read_config(workdir)
  model = build_model(config.model, config.maskclip)
  size = model.vision.image_size
  examples = [captioned_scenes.make_example("test", i, size) for i in range(num_images)]
  crops = np.stack([e["image"] for e in examples])
  present = np.zeros((num_images, len(captioned_scenes.CLASS_NAMES)), bool)
  for i, e in enumerate(examples):
    present[i, e["object_labels"]] = True
  prompts = [t.format(n) for n in captioned_scenes.CLASS_NAMES
             for t in captioned_scenes.ZERO_SHOT_TEMPLATES]
  encode = jax.jit(lambda p, x: model.apply({"params": p}, normalization.normalize(x),
                                            method=MaskCLIP.encode_image)[0])
  out = {"objects_top1": [], "objects_map": []}
  for step in steps:
    _, params, teacher, _ = checkpoint.load_for_export(workdir, step)
    texts = heatmap.text_features(model, params, prompts).reshape(
        len(captioned_scenes.CLASS_NAMES), len(captioned_scenes.ZERO_SHOT_TEMPLATES), -1)
    classes = texts.mean(axis=1)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    images = np.concatenate([np.asarray(encode(params, crops[i:i + batch]))
                             for i in range(0, num_images, batch)])
    scores = images @ classes.T  # cosine up to a per-image scale: rankings are what count
    out["objects_top1"].append(float(present[np.arange(num_images),
                                             scores.argmax(axis=1)].mean()))
    out["objects_map"].append(float(np.mean([_average_precision(s, p)
                                             for s, p in zip(scores, present)])))
    # The pointing game on maskclip-heatmap's default tower, with its default features and, to
    # compare, with each of the others.
    visual = heatmap.select_visual(params, teacher,
                                   heatmap.resolve_image_tower(teacher, None))
    subject = texts[[e["label"] for e in examples], 0]  # the first template, as the CLI's prompt
    for features in heatmap.FEATURES:
      hits = []
      for start in range(0, num_images, batch):
        chunk = slice(start, min(start + batch, num_images))
        patches = heatmap.patch_features(model, visual, crops[chunk], features)
        maps = heatmap.upsample(np.einsum("bhwd,bd->bhw", patches, subject[chunk]), size)
        for heat, example in zip(maps, examples[chunk]):
          row, col = np.unravel_index(np.argmax(heat), heat.shape)
          hits.append(bool(example["subject_mask"][row, col]))
      name = ("pointing_game" if features == heatmap.DEFAULT_FEATURES
              else f"pointing_game_{features}")
      out.setdefault(name, []).append(float(np.mean(hits)))
  return out


def _average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
  """Average precision of the `relevant` items in the ranking by `scores` (descending)."""
  order = np.argsort(-scores)
  hits = relevant[order]
  ranks = np.flatnonzero(hits) + 1
  return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def summarise_run(args, workdir: str, start: float) -> dict:
  """The run's curves: {'steps': [...], metric: [...] per step, 'step_time_s': median}."""
  evals, eval_seconds = read_evals(workdir)
  step_events = read_step_times(workdir)
  steps = sorted(evals)
  curves = {"steps": steps}
  for column, source, _ in COLUMNS:
    if source is not None:
      curves[column] = [evals[s].get("/".join(source)) for s in steps]
  curves.update(checkpoint_metrics(workdir, steps, args.pointing_images))
  wall = []
  for s in steps:
    logged = [t for t in step_events if t <= s]
    wall_time = step_events[max(logged)][0] if logged else start
    spent_evaluating = sum(sec for t, sec in eval_seconds.items() if t < s)
    wall.append(wall_time - start - spent_evaluating)
  curves["wall_clock_s"] = wall
  times = [value for step, (_, value) in sorted(step_events.items()) if step > args.log_every]
  curves["step_time_s"] = [statistics.median(times) if times else float("nan")] * len(steps)
  return curves


def chance_levels(meta: dict, num_images: int) -> dict:
  """What guessing scores: 1 / classes for each zero-shot task and probe, 1 / captions for
  retrieval R@1, for the pointing game the subject's mean share of the image, and for the
  object metrics a random ranking of the 36 classes."""
  from maskclip_jax.data import captioned_scenes  # pylint: disable=g-import-not-at-top
  names = {task: names for task, (names, _) in captioned_scenes.ATTRIBUTE_TASKS.items()}
  out = {"zeroshot_top1": 1 / len(captioned_scenes.CLASS_NAMES),
         "linear_probe_top1": 1 / len(captioned_scenes.CLASS_NAMES),
         "knn_top1": 1 / len(captioned_scenes.CLASS_NAMES)}
  for task, classes in names.items():
    out[f"zeroshot_{task}_top1"] = 1 / len(classes)
  test_size = meta.get("test_size")
  if test_size:
    out["retrieval_i2t_r1"] = out["retrieval_t2i_r1"] = 1 / test_size
  size = meta.get("image_size", 64)
  examples = [captioned_scenes.make_example("test", i, size) for i in range(num_images)]
  out["pointing_game"] = float(np.mean([e["subject_mask"].mean() for e in examples]))
  out["pointing_game_tokens"] = out["pointing_game_values"] = out["pointing_game"]
  num_classes = len(captioned_scenes.CLASS_NAMES)
  out["objects_top1"] = float(np.mean([len(e["object_labels"]) for e in examples])) / num_classes
  rng = np.random.default_rng(0)  # a random ranking's AP, averaged over a few draws
  present = np.zeros(num_classes, bool)
  precisions = []
  for e in examples:
    present[:] = False
    present[e["object_labels"]] = True
    precisions += [_average_precision(rng.random(num_classes), present) for _ in range(10)]
  out["objects_map"] = float(np.mean(precisions))
  return out


def aggregate(runs: dict) -> dict:
  """{variant: {column: (mean, std, n)}} at the last step, over the variant's seeds."""
  table = {}
  for variant, by_seed in runs.items():
    row = {}
    for column, _, _ in COLUMNS:
      values = [c[column][-1] for c in by_seed.values() if c.get(column)
                and c[column][-1] is not None]
      if values:
        row[column] = (float(np.mean(values)), float(np.std(values, ddof=1))
                       if len(values) > 1 else 0.0, len(values))
    table[variant] = row
  return table


def markdown(table: dict, chance: dict, args) -> str:
  present = [c for c in COLUMNS if any(c[0] in row for row in table.values())]
  lines = [f"{args.steps} steps, batch {args.batch_note}, mean +- std over seeds "
           f"{' '.join(map(str, args.seeds))}; `{args.config}:VARIANT"
           f"{',' + args.data_variant if args.data_variant else ''}`.", "",
           "| variant | " + " | ".join(c[2] for c in present) + " |",
           "|---|" + "---|" * len(present)]
  for variant, row in table.items():
    cells = []
    for column, _, _ in present:
      if column not in row:
        cells.append("-")
        continue
      mean, std, _ = row[column]
      digits = 1 if column == "wall_clock_s" else 3
      cells.append(f"{mean:.{digits}f} +- {std:.{digits}f}")
    lines.append(f"| {variant} | " + " | ".join(cells) + " |")
  lines.append("| *chance* | " + " | ".join(
      f"{chance[c]:.3f}" if c in chance else "" for c, _, _ in present) + " |")
  if "clip" in table and len(table) > 1:
    lines += ["", "Against `clip`: the difference of the means, and in brackets that difference "
              "over its standard error sqrt(s1^2/n1 + s2^2/n2) (Welch's t). With 3 seeds a side, "
              "|t| >= 2.8 is p < 0.05 (4 degrees of freedom); smaller is within seed noise.", "",
              "| variant | " + " | ".join(c[2] for c in present) + " |",
              "|---|" + "---|" * len(present)]
    base = table["clip"]
    for variant, row in table.items():
      if variant == "clip":
        continue
      cells = []
      for column, _, _ in present:
        if column not in row or column not in base:
          cells.append("-")
          continue
        (m1, s1, n1), (m0, s0, n0) = row[column], base[column]
        error = math.sqrt(s1 ** 2 / n1 + s0 ** 2 / n0)
        digits = 1 if column == "wall_clock_s" else 3
        t = f" ({(m1 - m0) / error:+.1f})" if error > 0 else ""
        cells.append(f"{m1 - m0:+.{digits}f}{t}")
      lines.append(f"| {variant} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(runs: dict, out: str) -> list:
  """One PNG per metric: against steps (left) and wall-clock (right), a line per variant."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  written = []
  for column, _, header in COLUMNS:
    if column in ("wall_clock_s", "step_time_s"):
      continue
    if not any(c.get(column) and None not in c[column] for r in runs.values()
               for c in r.values()):
      continue
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for variant, by_seed in runs.items():
      curves = [c for c in by_seed.values() if c.get(column) and None not in c[column]]
      if not curves:
        continue
      length = min(len(c["steps"]) for c in curves)
      values = np.array([c[column][:length] for c in curves])
      mean, std = values.mean(axis=0), values.std(axis=0)
      for axis, x in ((axes[0], np.array(curves[0]["steps"][:length])),
                      (axes[1], np.mean([c["wall_clock_s"][:length] for c in curves], axis=0))):
        axis.plot(x, mean, marker="o", label=variant)
        axis.fill_between(x, mean - std, mean + std, alpha=0.2)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("wall-clock (s, evaluations excluded)")
    for axis in axes:
      axis.set_ylabel(header)
      axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(header)
    fig.tight_layout()
    path = os.path.join(out, f"{column}.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(path)
  return written


def write_results(args, runs: dict, meta: dict) -> None:
  table = aggregate(runs)
  chance = chance_levels(meta, args.pointing_images)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(dict(steps=args.steps, seeds=args.seeds, config=args.config,
                   data_variant=args.data_variant, settings=args.set, table=table,
                   chance=chance, runs=runs), f, indent=1)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(markdown(table, chance, args))
  plot(runs, args.out)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--config", default=os.path.join(REPO, "configs", "tiny_synthetic.py"))
  parser.add_argument("--data_variant", default="scenes",
                      help="a data variant of the config added to every run ('' for none)")
  parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--eval_every", type=int, default=150)
  parser.add_argument("--log_every", type=int, default=25)
  parser.add_argument("--pointing_images", type=int, default=500)
  parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                      help="config overrides for every run, e.g. batch_size=32")
  parser.add_argument("--report_only", action="store_true",
                      help="train nothing: tabulate and plot the runs already finished")
  parser.add_argument("--rescore", action="store_true",
                      help="add the checkpoint-based metrics to finished runs that lack them")
  args = parser.parse_args(argv)
  if args.steps % args.eval_every or args.eval_every % args.log_every:
    parser.error("--steps must be a multiple of --eval_every, and that of --log_every")
  config = load_config(args.config, ",".join([args.variants[0]] + (
      [args.data_variant] if args.data_variant else [])))
  args.batch_note = next((s.split("=", 1)[1] for s in args.set if s.startswith("batch_size=")),
                         str(config.batch_size))
  meta = {"test_size": config.input.synthetic_test_size,
          "image_size": config.input.image_size}
  os.makedirs(args.out, exist_ok=True)

  runs = {}
  # Seeds outermost: after each seed the table has every variant.
  for seed in args.seeds:
    for variant in args.variants:
      workdir = os.path.join(args.out, "runs", run_name(variant, seed))
      done = os.path.join(workdir, DONE_FILE)
      if os.path.exists(done):
        with open(done) as f:
          curves = json.load(f)
        if args.rescore and "pointing_game_tokens" not in curves:
          curves.update(checkpoint_metrics(workdir, curves["steps"], args.pointing_images))
          with open(done, "w") as f:
            json.dump(curves, f, indent=1)
      elif args.report_only:
        continue
      else:
        print(f"[{time.strftime('%H:%M:%S')}] training {variant} seed {seed}", flush=True)
        start = train(args, variant, seed, workdir)
        curves = summarise_run(args, workdir, start)
        with open(done, "w") as f:
          json.dump(curves, f, indent=1)
      runs.setdefault(variant, {})[str(seed)] = curves
      write_results(args, runs, meta)
      last = {k: v[-1] for k, v in curves.items() if k != "steps" and v}
      print(f"[{time.strftime('%H:%M:%S')}] {variant} seed {seed}: " + ", ".join(
          f"{k}={v:.3f}" for k, v in last.items() if v is not None), flush=True)
  if not runs:
    raise SystemExit(f"No finished runs under {args.out}.")
  write_results(args, runs, meta)
  with open(os.path.join(args.out, "results.md")) as f:
    print(f.read())


if __name__ == "__main__":
  main()
