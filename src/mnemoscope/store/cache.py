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


@cache
def code_version(*modules: str) -> str:
    """SHA-256 of the source of the named modules (a package counts all its ``.py`` files).

    Part of every cache key, so changing a stage's code invalidates that stage only.
    """
    digest = hashlib.sha256()
    for name in sorted(modules):
        module = importlib.import_module(name)
        path = Path(module.__file__)
        files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
        for file in files:
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()
