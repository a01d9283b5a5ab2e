"""Content hashes: cache keys of (config slice, data fingerprint, code version of the stage)."""

from __future__ import annotations

import hashlib
import importlib
import json
from functools import cache
from pathlib import Path
from typing import Any


def content_hash(obj: Any) -> str:
    """SHA-256 of a JSON-able object with sorted keys (stable across runs and machines)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _module_file(module_name: str) -> Path:
    """The file of a module; ``package.__init__`` names a package's own file."""
    if module_name.endswith(".__init__"):
        return Path(importlib.import_module(module_name.removesuffix(".__init__")).__file__)
    return Path(importlib.import_module(module_name).__file__)


def _source_files(module_name: str) -> list[Path]:
    """A module's file; for a package, every file under it (templates included); for
    ``package.__init__``, the package's ``__init__.py`` alone."""
    path = _module_file(module_name)
    if module_name.endswith(".__init__"):
        return [path]
    if path.name != "__init__.py":
        return [path]
    return sorted(
        p
        for p in path.parent.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )


@cache
def _file_digest(path: Path, mtime_ns: int, size: int) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def code_version(*modules: str) -> str:
    """SHA-256 of every file the named modules consist of: a module's source, or for a
    package all its files (``.py``, templates, data), names relative to the package
    (``package.__init__``: that file alone).

    Part of every cache key, so changing a stage's code or a file it reads
    invalidates that stage only. Files are re-read whenever they change on disk.
    """
    digest = hashlib.sha256()
    for name in sorted(set(modules)):
        root = _module_file(name).parent
        for file in _source_files(name):
            stat = file.stat()
            digest.update(str(file.relative_to(root)).encode())
            digest.update(_file_digest(file, stat.st_mtime_ns, stat.st_size))
    return digest.hexdigest()
