"""The code a stage depends on: every module of the package that its code imports, directly
or not, found by reading the import statements of the source files (imports inside
functions and under ``TYPE_CHECKING`` included: more code in a key never makes a cache
stale, less would).

The unit is one source file: a module (``mnemoscope.influence.base``) or a package's
``__init__`` (``mnemoscope.influence.__init__``: what importing the package itself runs),
as :func:`~mnemoscope.store.code_version` hashes them. Importing ``a.b.c`` runs the
``__init__`` of ``a`` and ``a.b`` too, but those only re-export names: they count when
an import names the package itself.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from mnemoscope.estimator import Estimator

PACKAGE = "mnemoscope"
_ROOT = Path(importlib.util.find_spec(PACKAGE).origin).parent  # type: ignore[arg-type, union-attr]


def _unit(module: str) -> str | None:
    """The source file of ``module`` as a unit name (a package: its ``__init__``); an
    imported attribute (``mnemoscope.train.EnsembleSpec``) is its module's; None outside
    the package."""
    parts = module.split(".")
    while parts and parts[0] == PACKAGE:
        path = _ROOT.joinpath(*parts[1:])
        if path.is_dir() and (path / "__init__.py").is_file():
            return ".".join([*parts, "__init__"])
        if path.with_suffix(".py").is_file() and len(parts) > 1:
            return ".".join(parts)
        parts = parts[:-1]
    return None


def _file(unit: str) -> Path:
    return _ROOT.joinpath(*unit.split(".")[1:]).with_suffix(".py")


@cache
def _imported(path: Path, mtime_ns: int, size: int, package: str) -> frozenset[str]:
    """Absolute names of the modules (or their attributes) ``path`` imports; ``package``:
    the package a relative import starts from."""
    tree = ast.parse(path.read_bytes(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(names)


def _imports_of(path: Path, package: str) -> frozenset[str]:
    stat = path.stat()
    return _imported(path, stat.st_mtime_ns, stat.st_size, package)


def _package_of(unit: str) -> str:
    """The dotted package a unit's relative imports start from."""
    parts = unit.split(".")
    return ".".join(parts[:-1])


def code_units(modules: Iterable[str]) -> tuple[str, ...]:
    """``modules`` and every unit of the package they import, directly or not, sorted.

    A module outside the package (a user's estimator) is kept as it is and its imports of
    the package are followed; its imports of other modules of its own are not."""
    found: set[str] = set()
    todo: list[str] = []
    for module in modules:
        unit = _unit(module)
        if unit is None:
            found.add(module)
            spec = importlib.util.find_spec(module)
            if spec is not None and spec.origin and spec.origin.endswith(".py"):
                todo.extend(_imports_of(Path(spec.origin), module.rpartition(".")[0]))
        else:
            todo.append(unit)
    while todo:
        unit = _unit(todo.pop())
        if unit is None or unit in found:
            continue
        found.add(unit)
        todo.extend(_imports_of(_file(unit), _package_of(unit)))
    return tuple(sorted(found))


def estimator_code(estimator: Estimator) -> tuple[str, ...]:
    """Modules an estimator's stages run: its class's modules, the estimator contract and
    the task, and every module of the package these import, directly or not
    (:func:`~mnemoscope.runner.dependencies.code_units`), so no edit of a helper they use
    leaves a stale score. A class defined outside a file (a notebook cell) is keyed by its
    source instead (:func:`estimator_source`)."""
    modules = {"mnemoscope.estimator", "mnemoscope.task", "mnemoscope.train"}
    for base in type(estimator).__mro__:
        module = sys.modules.get(base.__module__)
        if getattr(module, "__file__", None) is None:
            continue
        if base.__module__.startswith("mnemoscope.") or base is type(estimator):
            modules.add(base.__module__)
    for part in vars(estimator).values():  # an estimator built on another (an attributor)
        if isinstance(part, Estimator):
            modules.update(estimator_code(part))
    return code_units(modules)


def estimator_source(estimator: Estimator) -> str:
    """SHA-256 of the estimator class's source where it can be read, else its name."""
    cls = type(estimator)
    try:
        text = inspect.getsource(cls)
    except (OSError, TypeError):
        text = f"{cls.__module__}.{cls.__qualname__}"
    return hashlib.sha256(text.encode()).hexdigest()
