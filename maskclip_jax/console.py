"""What a person sees of a training run: a line per log interval, a line per evaluation result,
a summary at the end, and the logging set-up behind them.

    step   25/300  loss 9.408 (clip 4.12 dist 5.01 mlm 8.20)  acc 0.02  118 img/s  ETA 2m31s
    eval zeroshot @ step 100: top1 0.189 top5 0.747 (2.4 s)

Without --verbose (`setup_logging(verbose=False)`): INFO lines are plain messages (WARNING and
ERROR say so), only this package's INFO lines show (the libraries' chatter is dropped), and the
TensorBoard writer has no console part. With it: absl's prefixed lines, clu's LoggingWriter (every
scalar, one line each) and everything the libraries log. TensorBoard gets the same either way.
The tqdm bar shows only on a terminal, and log lines go through it so that it is never torn.
No jax or tensorflow at import: cli/train.py sets logging up before they start.
"""
import contextlib
import importlib.util
import logging
import math
import os
import re
import shlex
import sys
import tempfile
from typing import Iterable, Mapping, Optional

from absl import logging as absl_logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_verbose = False
_bar = None  # the open tqdm bar: log lines are written through it


# ------------------------------------------------------------------ logging set-up
def _own(record: logging.LogRecord) -> bool:
  return os.path.abspath(record.pathname).startswith(_PACKAGE_DIR + os.sep)


# Library warnings that say nothing to a person running the trainer: tfds's own deprecation
# of the API it calls itself, its note that the synthetic builder has a custom config, and
# that a data set about to be built has no dataset_info.json yet.
_QUIET_WARNINGS = (
    re.compile(r"`FeatureConnector.dtype` is deprecated"),
    re.compile(r"^Using custom data configuration"),
    re.compile(r"^Variant folder .* has no dataset_info.json"),
)
# Loggers whose INFO lines `RunConsole` says shorter itself: the evaluation registry's start and
# result lines (its `_progress` logger).
_DETAIL_LOGGERS = ("maskclip_jax.evaluation.registry",)


class _QuietFilter(logging.Filter):
  """Always: orbax's INFO lines (dozens per checkpoint). Without --verbose: every library's
  INFO lines, tfds's deprecation noise and the evaluation registry's progress lines."""

  def filter(self, record):
    if record.levelno < logging.WARNING and "/orbax/" in record.pathname:
      return False
    if _verbose:
      return True
    if record.levelno >= logging.WARNING:
      return _own(record) or not any(p.search(record.getMessage()) for p in _QUIET_WARNINGS)
    if not _own(record):
      return False
    return record.name not in _DETAIL_LOGGERS


class _PlainFormatter(logging.Formatter):
  """The message alone; 'WARNING: ' (or ERROR, CRITICAL) in front of a warning or worse."""

  def format(self, record):
    message = super().format(record)
    if record.levelno >= logging.WARNING:
      return f"{record.levelname}: {message}"
    return message


class _ConsoleHandler(logging.Handler):
  """Writes to the current sys.stderr, through the tqdm bar while one is open."""

  def emit(self, record):
    try:
      message = self.format(record)
      stream = sys.stderr
      if _bar is not None:
        _bar.write(message, file=stream)
      else:
        stream.write(message + "\n")
        stream.flush()
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


def setup_logging(verbose: bool) -> None:
  """Replaces absl's handler of the root logger by the console's (after absl parsed flags)."""
  global _verbose
  _verbose = verbose
  root = logging.getLogger()
  for handler in list(root.handlers):
    if handler is absl_logging.get_absl_handler() or isinstance(handler, _ConsoleHandler):
      root.removeHandler(handler)
  handler = _ConsoleHandler()
  handler.setFormatter(absl_logging.PythonFormatter() if verbose else _PlainFormatter())
  handler.addFilter(_QuietFilter())
  root.addHandler(handler)
  # absl set the root level from --verbosity while its handler was there; keep that level.
  absl_logging.get_absl_logger().setLevel(logging.NOTSET)


def only_warnings() -> None:
  """For the processes other than the lead: they only warn."""
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger().setLevel(logging.WARNING)


# Native (C++) log lines that TF and XLA write straight to file descriptor 2, which
# TF_CPP_MIN_LOG_LEVEL no longer silences: absl's INFO/WARNING lines and its notice about them.
_NATIVE_CHATTER = re.compile(
    r"^(?:[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] |"
    r"WARNING: All log messages before absl::InitializeLog\(\) is called)")


@contextlib.contextmanager
def native_logs_filtered(enabled: bool = True):
  """Holds back what the block writes to file descriptor 2, then passes it on without native
  INFO/WARNING lines. For imports only. A Python exception still shows all of it (it is passed
  on as the block exits); only a process killed inside the block (a native abort) would lose
  its message: --verbose turns this off."""
  if not enabled:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      kept = [line for line in held.read().decode(errors="replace").splitlines(keepends=True)
              if not _NATIVE_CHATTER.match(line)]
      sys.stderr.write("".join(kept))
      sys.stderr.flush()


def library_progress_bars() -> None:
  """tfds's bars (building the synthetic data) only on a terminal: elsewhere their carriage
  returns fill a log with partial lines. After tensorflow_datasets is imported."""
  if not sys.stderr.isatty():
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()


def make_writer(workdir: str, lead: bool):
  """clu's writer: TensorBoard (lead only), plus one log line per scalar with --verbose."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  if not lead or _verbose:  # the other processes: log lines only, at WARNING: nothing shows
    return metric_writers.create_default_writer(workdir, just_logging=not lead)
  return metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(workdir)])


def hparams(config) -> dict:
  """The config as TensorBoard's hparams: flat 'section.field' keys; values that are not a
  number, string or bool as their repr."""
  def flatten(tree, prefix=""):
    for key, value in tree.items():
      if isinstance(value, dict):
        yield from flatten(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}", (value if isinstance(value, (int, float, str, bool))
                                 else str(value))
  return dict(flatten(config.to_dict()))


# ------------------------------------------------------------------ formatting
def format_duration(seconds: float) -> str:
  """'45s', '2m31s', '1h05m', '3d04h'."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds}s"
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f"{minutes}m{seconds:02d}s"
  hours, minutes = divmod(minutes, 60)
  if hours < 24:
    return f"{hours}h{minutes:02d}m"
  days, hours = divmod(hours, 24)
  return f"{days}d{hours:02d}h"


def _number(value: float) -> str:
  """3 significant digits at most: 9.408 -> '9.41', 118.3 -> '118', 0.0213 -> '0.0213'."""
  if not math.isfinite(value):
    return str(value)
  if value == 0 or abs(value) >= 100:
    return f"{value:.0f}"
  return f"{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"


def start_line(start_step: int, total_steps: int, batch_size: int, devices: int, platform: str,
               log_every_steps: int) -> str:
  if start_step >= total_steps:
    return f"Step {start_step} of {total_steps} is done: nothing to train."
  every = "step" if log_every_steps == 1 else f"{log_every_steps} steps"
  return (f"Training steps {start_step + 1}-{total_steps} (batch {batch_size} on {devices} "
          f"{platform} device{'s' if devices > 1 else ''}, a line every {every}); compiling the "
          "train step ...")


# (shown name, the metrics it sums): the loss terms before their weights (w_dist, w_mlm).
LOSS_PARTS = (("clip", ("loss_i2t", "loss_t2i")), ("sigmoid", ("loss_sigmoid",)),
              ("dist", ("loss_dist",)), ("mlm", ("loss_mlm",)))


def step_line(step: int, total_steps: int, metrics: Mapping[str, float],
              eta_seconds: Optional[float]) -> str:
  """One log interval's means: the loss and its terms (unweighted), the in-batch image->text
  accuracy, images/s, and the ETA."""
  width = len(str(total_steps))
  parts = [f"step {step:{width}d}/{total_steps}", f"loss {metrics['loss']:.3f}"]
  terms = [f"{name} {_number(sum(metrics[k] for k in keys))}" for name, keys in LOSS_PARTS
           if all(k in metrics for k in keys)]
  if len(terms) > 1:
    parts[-1] += f" ({' '.join(terms)})"
  if "acc_i2t" in metrics:
    parts.append(f"acc {metrics['acc_i2t']:.2f}")
  if "images_per_second" in metrics:
    parts.append(f"{_number(metrics['images_per_second'])} img/s")
  if metrics.get("nonfinite_skipped_steps"):
    parts.append(f"{int(metrics['nonfinite_skipped_steps'])} non-finite steps skipped")
  if eta_seconds is not None and step < total_steps:
    parts.append(f"ETA {format_duration(eta_seconds)}")
  return "  ".join(parts)


# Not on the eval line: counts, and the linear probe's chosen L2 and its held-out accuracy.
_EVAL_LINE_SKIPS = ("l2", "holdout_top1", "mean_recall")


def eval_line(name: str, step: int, metrics: Mapping[str, float],
              seconds: Optional[float] = None) -> str:
  shown = " ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                   if not k.startswith("num_") and k not in _EVAL_LINE_SKIPS)
  took = f" ({seconds:.1f} s)" if seconds is not None else ""
  return f"eval {name} @ step {step}: {shown}{took}"


# ------------------------------------------------------------------ the loop's console
class RunConsole:
  """The training loop's console: the bar (on a terminal only), the interval and eval lines.

  The ETA is the remaining training steps times the mean step time of this run so far; the
  evaluations (and the final ones) come on top of it.
  """

  def __init__(self, start_step: int, total_steps: int, lead: bool = True):
    global _bar
    self.total_steps = total_steps
    self._train_seconds = 0.0
    self._timed_steps = 0
    self.bar = None
    if lead and sys.stderr.isatty():
      import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", leave=False,
                           dynamic_ncols=True, mininterval=2.0, file=sys.stderr)
      _bar = self.bar

  def step_done(self):
    if self.bar is not None:
      self.bar.update(1)

  def log_interval(self, step: int, metrics: Mapping[str, float], steps: int) -> None:
    """`metrics`: the interval's means, with `step_time` (seconds a step) over `steps` steps."""
    self._train_seconds += metrics["step_time"] * steps
    self._timed_steps += steps
    eta = (self.total_steps - step) * self._train_seconds / self._timed_steps
    absl_logging.info("%s", step_line(step, self.total_steps, metrics, eta))
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", refresh=False)

  def evaluating(self, names: Iterable[str]) -> None:
    if self.bar is not None:
      self.bar.set_description_str(f"eval {','.join(names)}")

  def log_evals(self, step: int, results: Mapping[str, Mapping[str, float]],
                seconds: Mapping[str, Optional[float]]) -> None:
    if self.bar is not None:
      self.bar.set_description_str("")
    for name, metrics in results.items():
      absl_logging.info("%s", eval_line(name, step, metrics, seconds.get(name)))

  def close(self):
    global _bar
    if self.bar is not None:
      self.bar.close()
      if _bar is self.bar:
        _bar = None
      self.bar = None


# ------------------------------------------------------------------ the summary
def _chance(count: Optional[float]) -> str:
  return f"(chance {1 / count:.3f} = 1/{int(count)})" if count else "(chance: unknown)"


def result_lines(evals, results: Mapping[str, Mapping[str, float]],
                 steps: Mapping[str, int], final_step: int) -> list:
  """One line per evaluator: its headline metric(s) against chance."""
  lines = []
  width = max((len(n) for n in results), default=0)
  for name, metrics in results.items():
    kind = evals[name].type if name in evals else ""
    if kind in ("zeroshot", "knn", "linear_probe") and "top1" in metrics:
      text = f"top1 {metrics['top1']:.3f}  {_chance(metrics.get('num_classes'))}"
    elif kind == "retrieval" and "i2t_r1" in metrics:
      text = (f"i2t R@1 {metrics['i2t_r1']:.3f}  t2i R@1 {metrics['t2i_r1']:.3f}  "
              f"{_chance(metrics.get('num_images'))}")
    else:
      text = eval_line(name, steps.get(name, final_step), metrics).partition(": ")[2]
    at = f"  (at step {steps[name]})" if steps.get(name, final_step) != final_step else ""
    lines.append(f"  {name:{width}s}  {text}{at}")
  return lines


def _resume_command(argv) -> str:
  """The command that started this run, without --config.stop_at_step (which would stop it
  again at once)."""
  args, skip = [], False
  for arg in argv[1:]:
    if skip:
      skip = False
      continue
    if arg.startswith("--config.stop_at_step"):
      skip = "=" not in arg
      continue
    args.append(arg)
  return shlex.join(["maskclip-train", *args])


def summary(config, workdir: str, *, step: int, total_steps: int,
            evals: Mapping[str, Mapping[str, float]], eval_steps: Mapping[str, int],
            checkpoint_dir: Optional[str], wall_seconds: float, eval_seconds: float,
            stopped: Optional[str] = None, curves: Optional[str] = None,
            argv=None) -> str:
  """The end of a run: how it ended, its final metrics against chance, where its files are
  and what to run next."""
  argv = sys.argv if argv is None else argv
  took = f"{format_duration(wall_seconds)}"
  if eval_seconds >= 1:
    took += f" (evaluations {format_duration(eval_seconds)})"
  if stopped:
    lines = [f"Stopped at step {step} of {total_steps} ({stopped}) after {took}."]
  else:
    lines = [f"Finished: step {step} of {total_steps} in {took}."]
  if evals:
    lines.append("Results:")
    lines += result_lines(config.get("evals", {}), evals, eval_steps, step)
  lines.append(f"Checkpoint: {checkpoint_dir}" if checkpoint_dir else
               "Checkpoint: none saved.")
  if curves:
    lines.append(f"Curves: {curves}")
  q = shlex.quote(workdir)
  if stopped:
    if any(a.startswith("--config") for a in argv[1:]):
      lines.append(f"Resume (from the latest checkpoint): {_resume_command(argv)}")
    else:
      lines.append(f"Resume: run the trainer again on the workdir {workdir}.")
  prompts = ('"a red circle" "a blue square"' if config.input.train_data == "synthetic"
             else '"a dog" "a cat"')
  out = lambda name: shlex.quote(os.path.join(workdir, name))
  lines += [
      "Next:",
      f"  maskclip-eval --workdir {q}    # the run's evaluators; --evals=NAME, "
      "--config.evals.NAME.FIELD=VALUE",
      f"  maskclip-export --workdir {q} --to open_clip --out {out('open_clip')}"
      + ("" if importlib.util.find_spec("torch") else
         '    # needs PyTorch: pip install -e ".[torch]"'),
      f"  maskclip-heatmap --workdir {q} --image IMAGE.png --text {prompts} "
      f"--out {out('heatmap.png')}",
      f"  maskclip-plot --workdir {q}",
      f"  tensorboard --logdir {q}",
  ]
  return "\n".join(lines)

