"""What ``mnemoscope datasets``, ``archs`` and ``methods`` print, without importing torch.

The built-in datasets, architectures and estimators live in modules that import torch
(several seconds to start). Their names and descriptions are also kept in
``catalog.json`` beside this module, which those commands read instead. The file is
generated from the live registries (``python -m mnemoscope.catalog`` rewrites it), and
a test fails when it no longer equals what the registries say.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

CATALOG = Path(__file__).with_name("catalog.json")


def build_catalog() -> dict[str, list[dict[str, Any]]]:
    """The catalog from the registries themselves (imports every estimator, and torch)."""
    from mnemoscope.config import StudyConfig  # noqa: F401  (registers every estimator)
    from mnemoscope.data import BUILTIN
    from mnemoscope.estimator import REGISTRY
    from mnemoscope.models.registry import ARCHITECTURES

    package = Path(__file__).parent
    datasets = [
        {"name": s.name, "kind": s.kind, "n_classes": s.n_classes, "description": s.description}
        for s in BUILTIN.values()
    ]
    archs = [
        {
            "name": a.name,
            "description": a.description,
            "options": [
                [key, str(field.default)]
                for key, field in (a.options.model_fields if a.options else {}).items()
            ],
        }
        for a in ARCHITECTURES.values()
    ]
    methods = []
    for name, cls in sorted(REGISTRY.items(), key=lambda item: (item[1].family, item[0])):
        methods.append(
            {
                "name": name,
                "family": cls.family,
                "summary": cls.summary,
                "cost": cls.cost,
                "reference": cls.reference,
                "doc": inspect.getdoc(cls) or "",
                "qualname": f"{cls.__module__}.{cls.__qualname__}",
                **_source(cls, package),
            }
        )
    return {"datasets": datasets, "archs": archs, "methods": methods}


def _source(cls: type, package: Path) -> dict[str, Any]:
    """The file (relative to the package) and line of the ``class`` statement of ``cls``;
    an empty source where it has none inside the package."""
    try:
        lines, first = inspect.getsourcelines(cls)  # from its decorators on
        offset = next(i for i, text in enumerate(lines) if text.lstrip().startswith("class "))
        path = Path(inspect.getsourcefile(cls) or "").resolve()
        return {"source": path.relative_to(package.resolve()).as_posix(), "line": first + offset}
    except (OSError, TypeError, StopIteration, ValueError):
        return {"source": "", "line": 0}


def load_catalog() -> dict[str, list[dict[str, Any]]]:
    """The catalog as ``catalog.json`` keeps it (no torch)."""
    return json.loads(CATALOG.read_text(encoding="utf-8"))


def write_catalog() -> Path:
    CATALOG.write_text(
        json.dumps(build_catalog(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return CATALOG


if __name__ == "__main__":
    sys.stdout.write(f"wrote {write_catalog()}\n")
