"""maskclip-plot: a training run at a glance, one PNG of curves from its TensorBoard events.

  maskclip-plot --workdir /tmp/tiny                  # writes /tmp/tiny/curves.png
  maskclip-plot --workdir /tmp/tiny --out tiny.png
  python -m maskclip_jax.cli.plot --workdir /tmp/tiny

One panel per group of metrics, each drawn only when the run logged it:
  loss            loss and its terms (loss_i2t, loss_t2i or loss_sigmoid, loss_dist, loss_mlm)
  train accuracy  the batch's contrastive accuracies (acc_i2t, acc_t2i) and mlm_accuracy
  optimisation    lr, grad_norm, logit_scale, logit_bias, ema_momentum, codeword_perplexity,
                  each scaled to its own range (the legend gives the range)
  throughput      images_per_second, and MFU on its own axis (a second scale of the same
                  curve where MFU is images/s times a constant, as train.py logs it)
  skipped         skipped_samples, bad_shards, nonfinite_skipped_steps, when any is non-zero
  other           any other training scalar, scaled to its own range
  eval/NAME       one per evaluator, its metrics without the counts (num_*), with chance
                  (1/num_classes, or 1/num_images for retrieval) dashed where it is logged
Reads the event files itself (tensorboard's protos, no tensorflow); where a resumed run logged a
step twice, the later value is drawn.
"""
import io
import math
import os
import struct
from typing import Dict, List, Optional, Tuple

from absl import logging
import numpy as np

EVENT_FILES = "events.out.tfevents.*"
DEFAULT_NAME = "curves.png"

LOSS = "loss"
TRAIN_ACCURACY = "train accuracy"
OPTIMISATION = "optimisation"
THROUGHPUT = "throughput"
SKIPPED = "skipped"
OTHER = "other"

OPTIMISATION_TERMS = ("lr", "grad_norm", "logit_scale", "logit_bias", "ema_momentum",
                      "codeword_perplexity")
THROUGHPUT_TERMS = ("images_per_second", "mfu")
SKIPPED_TERMS = ("skipped_samples", "bad_shards", "nonfinite_skipped_steps")
# Drawn already in another form (step_time and steps_per_sec are images_per_second over the
# batch size; per_core is it over the device count) or not a measurement of the run (uptime).
NOT_DRAWN = ("step_time", "steps_per_sec", "uptime", "images_per_second_per_core")
# An evaluator's metrics that are not results: counts (num_examples, num_classes, num_images,
# num_captions, num_train, num_test) and the linear probe's chosen L2 (a setting).
EVAL_NOT_DRAWN = ("l2",)

# {tag: (steps, values)}, steps increasing.
Scalars = Dict[str, Tuple[np.ndarray, np.ndarray]]


# ------------------------------------------------------------------ reading


def _records(data: bytes):
  """The records of a TFRecord file's bytes: [length u64][crc u32][payload][crc u32] each. A
  truncated last record (a run still writing, or killed mid-write) ends the file."""
  offset = 0
  while offset + 12 <= len(data):
    (length,) = struct.unpack_from("<Q", data, offset)
    start, end = offset + 12, offset + 12 + length
    if end + 4 > len(data):
      return
    yield data[start:end]
    offset = end + 4


def event_files(workdir: str) -> List:
  """The workdir's TensorBoard event files (clu's writer puts them at its top level)."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  root = epath.Path(workdir)
  if not root.exists():
    raise FileNotFoundError(f"{workdir} does not exist; run maskclip-train "
                            f"--workdir {workdir} first.")
  files = sorted(root.glob(EVENT_FILES))
  if not files:
    raise FileNotFoundError(f"No TensorBoard event files ({EVENT_FILES}) in {workdir}; run "
                            f"maskclip-train --workdir {workdir} first.")
  return files


def read_scalars(workdir: str) -> Scalars:
  """Every scalar summary in the workdir's event files: {tag: (steps, values)}.

  Both forms: tf.summary's (a rank-0 tensor under the 'scalars' plugin, what clu writes) and
  the legacy simple_value. Where a step was written more than once (a resumed run repeats the
  steps since its last checkpoint), the value written last (by wall time) is kept.
  """
  from google.protobuf import message  # pylint: disable=g-import-not-at-top
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top

  latest: Dict[str, Dict[int, Tuple[float, float]]] = {}
  for path in event_files(workdir):
    plugins = {}  # tf.summary puts a tag's metadata on its first value in each file only
    for record in _records(path.read_bytes()):
      event = event_pb2.Event()
      try:
        event.ParseFromString(record)
      except message.DecodeError:
        break  # a damaged file: keep what came before
      for value in event.summary.value:
        if value.HasField("metadata") and value.metadata.plugin_data.plugin_name:
          plugins[value.tag] = value.metadata.plugin_data.plugin_name
        kind = value.WhichOneof("value")
        if kind == "simple_value":
          number = float(value.simple_value)
        elif kind == "tensor" and plugins.get(value.tag) == "scalars":
          array = tensor_util.make_ndarray(value.tensor)
          if array.size != 1 or not np.issubdtype(array.dtype, np.number):
            continue
          number = float(array.reshape(()))
        else:
          continue  # hparams, images, text, histograms
        steps = latest.setdefault(value.tag, {})
        previous = steps.get(event.step)
        if previous is None or event.wall_time >= previous[0]:
          steps[event.step] = (event.wall_time, number)
  scalars = {}
  for tag, steps in latest.items():
    order = sorted(steps)
    scalars[tag] = (np.asarray(order, np.int64),
                    np.asarray([steps[s][1] for s in order], np.float64))
  return scalars


# ------------------------------------------------------------------ grouping


def _evaluator(tag: str) -> Optional[Tuple[str, str]]:
  """'eval/zeroshot/top1' -> ('zeroshot', 'top1'); None for a training scalar."""
  if not tag.startswith("eval/") or tag.count("/") < 2:
    return None
  name, metric = tag[len("eval/"):].rsplit("/", 1)
  return name, metric


def metric_groups(scalars: Scalars) -> Dict[str, List[str]]:
  """{panel title: the tags drawn in it}, in drawing order; groups without data left out.

  `scalars` as read_scalars returns them, in the order the run first logged each tag.

  Training panels first (LOSS, TRAIN_ACCURACY, OPTIMISATION, THROUGHPUT, SKIPPED, OTHER), then
  'eval/NAME' for each evaluator by name.
  """
  training = [t for t in scalars if _evaluator(t) is None and not t.startswith("_")]
  groups: Dict[str, List[str]] = {
      LOSS: sorted((t for t in training if t == "loss" or t.startswith("loss_")),
                   key=lambda t: (t != "loss", t)),
      TRAIN_ACCURACY: sorted(t for t in training
                             if t.startswith("acc_") or t.endswith("accuracy")),
      OPTIMISATION: [t for t in OPTIMISATION_TERMS if t in scalars],
      THROUGHPUT: [t for t in THROUGHPUT_TERMS if t in scalars],
      # Drawn only when something was skipped: a flat zero says nothing.
      SKIPPED: [t for t in SKIPPED_TERMS
                if t in scalars and np.any(np.nan_to_num(scalars[t][1]) != 0)],
  }
  placed = {t for tags in groups.values() for t in tags}
  groups[OTHER] = sorted(t for t in training if t not in placed and t not in NOT_DRAWN
                         and t not in SKIPPED_TERMS)
  evaluators: Dict[str, List[str]] = {}
  for tag in scalars:
    parsed = _evaluator(tag)
    if parsed and not parsed[1].startswith("num_") and parsed[1] not in EVAL_NOT_DRAWN:
      evaluators.setdefault(f"eval/{parsed[0]}", []).append(tag)
  # An evaluator's metrics in the order it logs them (i2t_r1, r5, r10, t2i_r1, ...).
  groups.update({name: evaluators[name] for name in sorted(evaluators)})
  return {name: tags for name, tags in groups.items() if tags}


def chance_level(scalars: Scalars, panel: str) -> Optional[Tuple[float, str]]:
  """(level, label) of an 'eval/NAME' panel's top-1 chance: 1/num_classes (zero-shot, k-NN,
  linear probe), else 1/num_images (retrieval's R@1 both ways); None when neither is logged."""
  for count in ("num_classes", "num_images"):
    tag = f"{panel}/{count}"
    if tag in scalars:
      n = scalars[tag][1][-1]
      if np.isfinite(n) and n >= 1:
        return 1.0 / n, f"chance 1/{int(n)} (top-1)"
  return None


# ------------------------------------------------------------------ drawing


def _layout(num_panels: int) -> Tuple[int, int]:
  """(rows, columns): 3 columns up to 9 panels, 4 up to 16, then 5."""
  if num_panels <= 2:
    columns = num_panels
  elif num_panels <= 4:
    columns = 2
  elif num_panels <= 9:
    columns = 3
  elif num_panels <= 16:
    columns = 4
  else:
    columns = 5
  return math.ceil(num_panels / columns), columns


def _range(lo: float, hi: float) -> str:
  """'[0.0005, 0.001]': the fewest significant digits (3 to 6) that tell the ends apart."""
  if lo == hi:
    return f"= {lo:.4g}"
  for digits in range(3, 7):
    low, high = f"{lo:.{digits}g}", f"{hi:.{digits}g}"
    if low != high:
      break
  return f"[{low}, {high}]"


def _short(tag: str) -> str:
  return tag.rsplit("/", 1)[-1]


def _finite(values: np.ndarray) -> np.ndarray:
  return np.where(np.isfinite(values), values, np.nan)  # inf would break the autoscale


def _draw(ax, steps, values, label, **kwargs):
  # Markers where points are few: a one-point evaluation (at the end only) is a marker alone.
  marker = "o" if len(steps) <= 30 else None
  style = dict(marker=marker, markersize=3.5, linewidth=1.4, clip_on=False)
  ax.plot(steps, _finite(values), label=label, **dict(style, **kwargs))


def _legend(ax, *more_axes, **kwargs):
  handles, labels = [], []
  for a in (ax,) + more_axes:
    h, l = a.get_legend_handles_labels()
    handles += h
    labels += l
  if handles:
    ax.legend(handles, labels, **dict(dict(fontsize=7, loc="best", framealpha=0.8), **kwargs))


def _scaled_panel(ax, scalars: Scalars, tags: List[str]):
  """Each curve mapped to [0, 1] over its own range, which its legend entry gives."""
  for tag in tags:
    steps, values = scalars[tag]
    values = _finite(values)
    if not np.any(np.isfinite(values)):
      continue
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    # A change of under 5% of the value's size fills only its share of the height: stretched
    # over the whole of it, a logit scale moving 14.29 -> 14.27 would look like a collapse.
    span = max(hi - lo, 0.05 * max(abs(lo), abs(hi)))
    if span > 0:
      scaled = 0.5 + (values - (lo + hi) / 2) / span
    else:
      scaled = np.full_like(values, 0.5)
    _draw(ax, steps, scaled, f"{tag} {_range(lo, hi)}")
  # The curves fill [0, 1]; the legend (each curve's range) goes in the room above.
  ax.set_ylim(-0.05, 1.05 + 0.12 * math.ceil(len(tags) / 2))
  ax.set_yticks([0, 0.5, 1])
  ax.set_ylabel("scaled to own range", fontsize=8)
  _legend(ax, loc="upper center", ncol=2, columnspacing=1.0)


def _loss_panel(ax, scalars: Scalars, tags: List[str]):
  for tag in tags:
    steps, values = scalars[tag]
    _draw(ax, steps, values, f"{tag} {values[-1]:.3g}", linewidth=2.2 if tag == "loss" else 1.4)
  finite = np.concatenate([_finite(scalars[t][1]) for t in tags])
  finite = finite[np.isfinite(finite)]
  # Terms an order of magnitude apart (a 49408-way MLM beside a batch-way contrastive loss).
  if finite.size and finite.min() > 0 and finite.max() / finite.min() > 30:
    ax.set_yscale("log")
  _legend(ax)


def _plain_panel(ax, scalars: Scalars, tags: List[str], fmt: str = "{:.3f}"):
  for tag in tags:
    steps, values = scalars[tag]
    _draw(ax, steps, values, f"{_short(tag)} {fmt.format(values[-1])}")
  ax.set_ylim(bottom=0)


def _mfu_per_image_rate(scalars: Scalars) -> Optional[float]:
  """MFU / images_per_second when it is one constant (train.py computes both from the same
  step time, so MFU is images/s on another scale); None when it varies or either is missing."""
  if "mfu" not in scalars or "images_per_second" not in scalars:
    return None
  (mfu_steps, mfu), (steps, ips) = scalars["mfu"], scalars["images_per_second"]
  if not np.array_equal(mfu_steps, steps):
    return None
  ok = np.isfinite(mfu) & np.isfinite(ips) & (ips > 0)
  if not ok.any():
    return None
  ratio = mfu[ok] / ips[ok]
  rate = float(np.median(ratio))
  return rate if rate > 0 and np.allclose(ratio, rate, rtol=1e-3) else None


def _throughput_panel(ax, scalars: Scalars, tags: List[str]):
  axes = [ax]
  rate = _mfu_per_image_rate(scalars)
  if "images_per_second" in tags:
    steps, values = scalars["images_per_second"]
    label = f"images/s {values[-1]:.4g}"
    if rate is not None:
      label += f" (MFU {100 * rate * values[-1]:.3g}%)"
    _draw(ax, steps, values, label)
    ax.set_ylabel("images / s", fontsize=8)
    ax.set_ylim(bottom=0)
  if rate is not None:  # one curve, MFU read off the right-hand scale
    mfu_axis = ax.secondary_yaxis("right", functions=(lambda x: 100 * rate * x,
                                                      lambda y: y / (100 * rate)))
    mfu_axis.set_ylabel("MFU %", fontsize=8)
    mfu_axis.tick_params(labelsize=7)
  elif "mfu" in tags:
    mfu_ax = ax.twinx() if "images_per_second" in tags else ax
    steps, values = scalars["mfu"]
    _draw(mfu_ax, steps, 100 * values, f"MFU {100 * values[-1]:.3g}%", color="tab:red",
          linestyle="--")
    mfu_ax.set_ylabel("MFU %", fontsize=8)
    mfu_ax.set_ylim(bottom=0)
    mfu_ax.tick_params(labelsize=7)
    if mfu_ax is not ax:
      axes.append(mfu_ax)
  _legend(*axes, loc="lower right")  # the curves sit high above a zero baseline


def write_curves(workdir: str, path: Optional[str] = None) -> str:
  """Draws the run's scalars (see the module docstring) into a PNG; returns its path.

  path: the PNG to write (default WORKDIR/curves.png). Raises FileNotFoundError for a workdir
  without event files, ValueError when they hold no scalar yet.
  """
  try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
    from matplotlib import ticker  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"maskclip-plot needs matplotlib ({e}): pip install matplotlib") from e

  scalars = read_scalars(workdir)
  groups = metric_groups(scalars)
  if not groups:
    raise ValueError(f"The event files in {workdir} hold no scalars yet; training scalars are "
                     "written every --config.log_every_steps steps.")
  path = path or os.path.join(workdir, DEFAULT_NAME)
  last_step = max(int(scalars[t][0][-1]) for tags in groups.values() for t in tags)

  rows, columns = _layout(len(groups))
  # ~1400 px wide up to 4 columns, ~300 px a row, at 100 dpi.
  figure = Figure(figsize=(max(14.0, 3.6 * columns), 3.0 * rows + 0.5), dpi=100,
                  layout="constrained")
  FigureCanvasAgg(figure)  # Agg, without pyplot's process-wide backend
  axes = figure.subplots(rows, columns, squeeze=False).ravel()
  for ax, (panel, tags) in zip(axes, groups.items()):
    if panel == LOSS:
      _loss_panel(ax, scalars, tags)
    elif panel in (OPTIMISATION, OTHER):
      _scaled_panel(ax, scalars, tags)
    elif panel == THROUGHPUT:
      _throughput_panel(ax, scalars, tags)
    elif panel == SKIPPED:
      _plain_panel(ax, scalars, tags, fmt="{:.0f}")
      _legend(ax)
    else:  # TRAIN_ACCURACY and the evaluators
      _plain_panel(ax, scalars, tags)
      chance = chance_level(scalars, panel) if panel.startswith("eval/") else None
      if chance is not None:
        ax.axhline(chance[0], color="gray", linestyle="--", linewidth=1.0, label=chance[1])
      _legend(ax)
    steps = sorted({int(s) for t in tags for s in scalars[t][0]})
    title = panel if len(steps) > 1 or not panel.startswith("eval/") else (
        f"{panel} (step {steps[0]})")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, max(last_step, 1) * 1.03)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("step", fontsize=8)
  for ax in axes[len(groups):]:
    ax.set_visible(False)
  name = os.path.basename(os.path.normpath(workdir)) or workdir
  figure.suptitle(f"{name}: step {last_step}", fontsize=12)

  buffer = io.BytesIO()
  figure.savefig(buffer, format="png")
  from etils import epath  # pylint: disable=g-import-not-at-top
  out = epath.Path(path)
  # Written beside and renamed over: a viewer (or a trainer rewriting it) never sees half a file.
  partial = out.parent / f".{out.name}.partial"
  partial.write_bytes(buffer.getvalue())
  partial.replace(out)
  return str(path)


def write_curves_or_warn(workdir: str) -> Optional[str]:
  """The trainer's call at the end of a run: WORKDIR/curves.png, or None and a warning (a plot
  that fails must not fail a run that trained)."""
  try:
    return write_curves(workdir)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("Could not write %s/%s (%s: %s); the run is not affected.", workdir,
                    DEFAULT_NAME, type(e).__name__, e)
    return None
