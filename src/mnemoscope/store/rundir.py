"""The run directory: where every stage's output lives, and which stages are finished.

Layout::

    manifest.json                  config, versions, data fingerprints, stages with keys and timings
    examples.parquet scores.parquet correlations.parquet detection.parquet
    data/<dataset>.safetensors     the dataset's tensors, as every later stage reads them
    models/<dataset>__<arch>__<ensemble>.safetensors   trained ensembles and checkpoints
    parts/scores/<dataset>__<arch>__<method>.parquet   one estimator's scores
    report.html  figures/*.png

A stage counts as finished when the manifest holds its cache key and its outputs
exist. The manifest is rewritten atomically after every stage, so a run killed
mid-way resumes from the last finished stage.
"""

from __future__ import annotations

import json
import platform
import re
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from mnemoscope.errors import UserError
from mnemoscope.store.atomic import write_json

_PACKAGES = (
    "mnemoscope",
    "torch",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "pyarrow",
    "duckdb",
    "pydantic",
    "safetensors",
    "mnist1d",
)
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def safe_name(*parts: str) -> str:
    """A file name from parts: ``a__b__c`` with anything but ``[A-Za-z0-9_.-]`` replaced."""
    return "__".join(_SAFE.sub("_", part) for part in parts)


class RunDir:
    """A run directory and its manifest."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.manifest: dict[str, Any] = self._read_manifest()

    def _read_manifest(self) -> dict[str, Any]:
        path = self.root / "manifest.json"
        if not path.exists():
            return {"stages": {}, "datasets": {}}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise UserError(f"{path}: not a valid manifest (JSON could not be read)") from None

    @classmethod
    def existing(cls, root: Path) -> RunDir:
        """Open a finished or partial run; a missing manifest is a one-line user error."""
        if not (Path(root) / "manifest.json").is_file():
            raise UserError(f"{root}: not a mnemoscope run directory (no manifest.json)")
        return cls(root)

    def path(self, relative: str) -> Path:
        return self.root / relative

    def data_file(self, dataset: str) -> str:
        return f"data/{safe_name(dataset)}.safetensors"

    def model_file(self, dataset: str, arch: str, ensemble: str) -> str:
        return f"models/{safe_name(dataset, arch, ensemble)}.safetensors"

    def score_file(self, dataset: str, arch: str, method: str) -> str:
        return f"parts/scores/{safe_name(dataset, arch, method)}.parquet"

    def is_finished(self, stage: str, key: str) -> bool:
        record = self.manifest["stages"].get(stage)
        return (
            record is not None
            and record.get("key") == key
            and all(self.path(p).exists() for p in record.get("outputs", []))
        )

    def start(self, name: str, config: dict[str, Any]) -> None:
        """Record the config and versions of the run about to execute."""
        self.manifest.update(
            name=name,
            config=config,
            versions=package_versions(),
            started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        self.save()

    def keep_only(self, stages: list[str], datasets: list[str]) -> None:
        """Forget stages and datasets of earlier configs run into this directory, so the
        manifest (and the report drawn from it) describes the current run alone."""
        self.manifest["stages"] = {k: v for k, v in self.manifest["stages"].items() if k in stages}
        self.manifest["datasets"] = {
            k: v for k, v in self.manifest["datasets"].items() if k in datasets
        }
        self.save()

    def finish(self, stage: str, key: str, seconds: float, outputs: list[str]) -> None:
        self.manifest["stages"][stage] = {
            "key": key,
            "seconds": round(seconds, 3),
            "outputs": outputs,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.save()

    def save(self) -> None:
        write_json(self.root / "manifest.json", self.manifest)
