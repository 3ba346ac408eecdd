"""The package's layering, read from the sources' imports with `ast` (nothing is imported).

  (a) the models, the pure train step, the losses and the masking import nothing of the
      evaluation, export, data, heat-map, trainer (train, restore), CLI, config-check or
      checkpoint layers, nor tensorflow;
  (b) export imports nothing of the evaluation, heat-map, trainer or CLI layers, nor tensorflow
      (torch users import it, and importing tensorflow before torch crashes);
  (c) the models import, of this package, only the models;
and no file of (a) or (b) reaches tensorflow through a chain of this package's modules either.

Every import counts, also one inside a function: `import x`, `from x import y` (as x and x.y, so
`from maskclip_jax import evaluation` is maskclip_jax.evaluation) and relative imports.
"""
import ast
import collections
import pathlib

import pytest

PACKAGE = "maskclip_jax"
PACKAGE_DIR = pathlib.Path(__file__).resolve().parent.parent / PACKAGE
TENSORFLOW = ("tensorflow", "tensorflow_datasets")

TRAINER = ("maskclip_jax.train", "maskclip_jax.restore", "maskclip_jax.cli")
PURE = ("maskclip_jax.evaluation", "maskclip_jax.export", "maskclip_jax.data",
        "maskclip_jax.heatmap", "maskclip_jax.config_checks",
        "maskclip_jax.checkpoint") + TRAINER + TENSORFLOW
EXPORT = ("maskclip_jax.evaluation", "maskclip_jax.heatmap") + TRAINER + TENSORFLOW
# (files: a folder ending in '/' or one file, relative to the repository; banned modules, each
# with its submodules: 'maskclip_jax.train' bans maskclip_jax.train.x, not maskclip_jax.train_step).
BANNED = (
    ("maskclip_jax/models/", PURE),
    ("maskclip_jax/train_step.py", PURE),
    ("maskclip_jax/losses.py", PURE),
    ("maskclip_jax/masking.py", PURE),
    ("maskclip_jax/export/", EXPORT),
)
# (files, the only modules of this package they may import).
ONLY_FROM = (("maskclip_jax/models/", ("maskclip_jax.models",)),)


def module_name(relative_path: str) -> str:
  """'maskclip_jax/models/vit.py' -> 'maskclip_jax.models.vit'; a package's __init__ -> it."""
  parts = list(pathlib.PurePosixPath(relative_path).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def imported_modules(source: str, relative_path: str) -> set:
  """Every module name `source` (the file at `relative_path`) imports, with each `from x import
  y` as both x and x.y (y may be a module or a name in x)."""
  here = module_name(relative_path)
  package = here if relative_path.endswith("__init__.py") else here.rpartition(".")[0]
  names = set()
  for node in ast.walk(ast.parse(source, filename=relative_path)):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      module = node.module or ""
      if node.level:  # relative: `from . import x`, `from ..y import z`
        base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
        module = ".".join(base + ([module] if module else []))
      names.add(module)
      names.update(f"{module}.{alias.name}" for alias in node.names if alias.name != "*")
  return names


def _within(module: str, prefixes) -> bool:
  return any(module == p or module.startswith(p + ".") for p in prefixes)


def _applies(relative_path: str, files: str) -> bool:
  return relative_path.startswith(files) if files.endswith("/") else relative_path == files


def violations(sources) -> list:
  """'file imports module' for each broken rule; `sources` maps repository-relative paths
  ('maskclip_jax/...py') to their source text."""
  found = []
  for path, source in sources.items():
    modules = imported_modules(source, path)
    bad = set()
    for files, banned in BANNED:
      if _applies(path, files):
        bad.update(m for m in modules if _within(m, banned))
    for files, allowed in ONLY_FROM:
      if _applies(path, files):
        bad.update(m for m in modules
                   if _within(m, (PACKAGE,)) and m != PACKAGE and not _within(m, allowed))
    # `from x.y import z` is reported as x.y alone, not again as x.y.z.
    found.extend(f"{path} imports {m}" for m in bad if not _within(m.rpartition(".")[0], bad))
  return sorted(found)


def package_sources() -> dict:
  return {path.relative_to(PACKAGE_DIR.parent).as_posix(): path.read_text(encoding="utf-8")
          for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def test_the_package_keeps_its_layering():
  sources = package_sources()
  # The rules must see the files they are about (a moved or renamed folder would pass silently).
  for files, _ in BANNED + ONLY_FROM:
    assert any(_applies(path, files) for path in sources), f"no file matches {files}"
  found = violations(sources)
  assert not found, ("imports that break the layering (module docstring):\n  " +
                     "\n  ".join(found))


def tensorflow_chains(sources) -> list:
  """For each file under BANNED's rules from which imports through this package reach
  tensorflow, the shortest such chain, 'a -> b -> tensorflow' (a package's __init__ runs on any
  import of one of its modules, so it is a link too)."""
  imports = {module_name(path): imported_modules(source, path)
             for path, source in sources.items()}
  found = []
  for path in sorted(sources):
    if not any(_applies(path, files) for files, _ in BANNED):
      continue
    start = module_name(path)
    chain = {start: [start]}  # module -> the shortest import chain that reaches it
    todo = collections.deque([start])
    while todo:
      module = todo.popleft()
      hits = sorted(name for name in imports[module] if _within(name, TENSORFLOW))
      if hits:
        found.append(" -> ".join(chain[module] + hits[:1]))
        break
      parts = module.split(".")
      parents = {".".join(parts[:i]) for i in range(1, len(parts))}
      for m in sorted(m for m in parents | imports[module] if m in imports and m not in chain):
        chain[m] = chain[module] + [m]
        todo.append(m)
  return found


def test_tensorflow_is_not_reached_through_the_package_either():
  """(a) and (b) hold for each file's own imports; neither may reach tensorflow through another
  module of this package either."""
  found = tensorflow_chains(package_sources())
  assert not found, "tensorflow reached through the package:\n  " + "\n  ".join(found)


def test_a_chain_to_tensorflow_is_reported():
  sources = {"maskclip_jax/__init__.py": "", "maskclip_jax/helper.py": "import tensorflow as tf",
             "maskclip_jax/losses.py": "from maskclip_jax import helper"}
  assert tensorflow_chains(sources) == [
      "maskclip_jax.losses -> maskclip_jax.helper -> tensorflow"]
  sources["maskclip_jax/helper.py"] = "def f():\n  import numpy"
  assert tensorflow_chains(sources) == []


@pytest.mark.parametrize("source, expected", [
    ("import tensorflow as tf", "tensorflow"),
    ("from maskclip_jax import evaluation", "maskclip_jax.evaluation"),
    ("def f():\n  from maskclip_jax.data.tokenizer import EOT_ID", "maskclip_jax.data.tokenizer"),
    ("import maskclip_jax.train", "maskclip_jax.train"),
    ("from ..export import clip_params", "maskclip_jax.export"),
    ("from maskclip_jax import sharding", "maskclip_jax.sharding"),  # (c): not the models
])
def test_a_violation_is_reported(source, expected):
  assert f"maskclip_jax/models/new.py imports {expected}" in violations(
      {"maskclip_jax/models/new.py": source})


@pytest.mark.parametrize("path, source", [
    ("maskclip_jax/models/new.py", "import jax\nfrom maskclip_jax.models import vocabulary"),
    ("maskclip_jax/models/new.py", "from maskclip_jax.models.vocabulary import EOT_ID"),
    ("maskclip_jax/models/new.py", "from . import vocabulary"),
    ("maskclip_jax/train_step.py", "from maskclip_jax import losses, masking, normalization"),
    ("maskclip_jax/losses.py", "import maskclip_jax.train_step"),  # not maskclip_jax.train
    ("maskclip_jax/export/new.py", "from maskclip_jax.data import tokenizer"),
    ("maskclip_jax/export/new.py", "from maskclip_jax.export import from_workdir"),
    ("maskclip_jax/export/new.py", "import maskclip_jax.client"),  # not maskclip_jax.cli
    ("maskclip_jax/evaluation/new.py", "import tensorflow"),  # no rule for evaluation
])
def test_allowed_imports_are_not_reported(path, source):
  assert violations({path: source}) == []
