"""The run directory: where every stage's output lives, and which stages are finished.

Layout::

    manifest.json                  config, versions, data fingerprints, stages with keys and timings
    examples.parquet scores.parquet correlations.parquet detection.parquet
    influence.parquet              train×target influence (when the config names targets)
    data/<dataset>.safetensors     the dataset's tensors, as every later stage reads them
    specs/<dataset>__<ensemble>.safetensors            masks an ensemble is trained on
    models/<dataset>__<arch>__<ensemble>[.part-j].safetensors   trained ensembles
    fits/<dataset>__<arch>__<method>.safetensors       an estimator's cached fit
    parts/scores/<dataset>__<arch>__<method>.parquet   one estimator's scores
    parts/influence/<dataset>__<arch>__<method>.parquet  its train×target influence
    report.html  figures/*.png

A stage counts as finished when the manifest holds its cache key and its outputs
exist. The manifest is rewritten atomically after every stage, so a run killed
mid-way resumes from the last finished stage. Everything that reads a run (the
report, the summary, ``query``) reads it through :class:`RunDir`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from mnemoscope.errors import UserError
from mnemoscope.store.atomic import write_json
from mnemoscope.store.manifest import FileDigest, Manifest, StageRecord
from mnemoscope.store.tables import TABLES

LOCK = ".mnemoscope.lock"

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


def file_digest(path: Path) -> FileDigest:
    """Size and SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return FileDigest(size=path.stat().st_size, sha256=digest.hexdigest())


def safe_name(*parts: str) -> str:
    """A file name from parts: ``a__b__c`` with anything but ``[A-Za-z0-9_.-]`` replaced."""
    return "__".join(_SAFE.sub("_", part) for part in parts)


class RunDir:
    """A run directory and its manifest (:class:`~mnemoscope.store.manifest.Manifest`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.manifest: Manifest = self._read_manifest()

    def _read_manifest(self) -> Manifest:
        path = self.root / "manifest.json"
        if not path.exists():
            return Manifest()
        try:
            return Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path}: not a valid manifest (JSON could not be read)") from None
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "manifest"
            raise UserError(f"{path}: not a valid manifest ({where}: {first['msg']})") from None

    @classmethod
    def existing(cls, root: Path) -> RunDir:
        """Open a finished or partial run; a missing manifest is a one-line user error."""
        if not Path(root).is_dir():
            raise UserError(f"run directory {root} does not exist")
        if not (Path(root) / "manifest.json").is_file():
            raise UserError(f"{root}: not a mnemoscope run directory (no manifest.json)")
        return cls(root)

    def path(self, relative: str) -> Path:
        return self.root / relative

    def table(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        """The run's table ``name`` (``examples``, ``scores``, ...), checked against its
        schema; a missing or unreadable file or a missing column is a :class:`UserError`."""
        path = self.path(f"{name}.parquet")
        if not path.is_file():
            raise UserError(f"run directory is missing {path.name}: expected {path}")
        try:
            frame = pd.read_parquet(path, columns=columns)
        except Exception as error:  # pyarrow raises several types for corrupt files
            raise UserError(f"cannot read {path.name}: {error}") from None
        missing = [c for c in (columns or TABLES[name].names) if c not in frame.columns]
        if missing:
            raise UserError(f"{path.name} is missing columns {missing}")
        return frame

    def has_table(self, name: str) -> bool:
        return self.path(f"{name}.parquet").is_file()

    def data_file(self, dataset: str) -> str:
        return f"data/{safe_name(dataset)}.safetensors"

    def spec_file(self, dataset: str, ensemble: str) -> str:
        return f"specs/{safe_name(dataset, ensemble)}.safetensors"

    def model_file(self, dataset: str, arch: str, ensemble: str, part: int | None = None) -> str:
        suffix = "" if part is None else f".part-{part}"
        return f"models/{safe_name(dataset, arch, ensemble)}{suffix}.safetensors"

    def fit_file(self, dataset: str, arch: str, method: str) -> str:
        return f"fits/{safe_name(dataset, arch, method)}.safetensors"

    def score_file(self, dataset: str, arch: str, method: str) -> str:
        return f"parts/scores/{safe_name(dataset, arch, method)}.parquet"

    def table_part_file(self, table: str, dataset: str, arch: str, method: str) -> str:
        """One estimator's rows of a table other than ``scores`` (e.g. ``attacks``)."""
        return f"parts/{safe_name(table)}/{safe_name(dataset, arch, method)}.parquet"

    def part_file(self, experiment: str, dataset: str, arch: str) -> str:
        """Per-seed results of one of the study's retraining experiments (e.g. ``removal``)."""
        return f"parts/{safe_name(experiment)}/{safe_name(dataset, arch)}.parquet"

    def lds_file(self, dataset: str, arch: str) -> str:
        """Subsets and measured target margins of the LDS of one (dataset, arch)."""
        return f"parts/lds/{safe_name(dataset, arch)}.safetensors"

    def influence_file(self, dataset: str, arch: str, method: str) -> str:
        return f"parts/influence/{safe_name(dataset, arch, method)}.parquet"

    def is_finished(self, stage: str, key: str) -> bool:
        """The stage ran with this key and each output is still the file it wrote (same
        size and SHA-256): a truncated or damaged output makes the stage run again."""
        record = self.manifest.stages.get(stage)
        if record is None or record.key != key or set(record.files) != set(record.outputs):
            return False
        for name, expected in record.files.items():
            path = self.path(name)
            if not path.is_file() or path.stat().st_size != expected.size:
                return False
            if file_digest(path).sha256 != expected.sha256:
                return False
        return True

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory's lock: one mnemoscope process per run directory at a time.

        A second process fails at once with a message naming the holder. The lock is
        an ``flock`` on ``.mnemoscope.lock``, released by the kernel even when the
        holder is killed, so a killed run never leaves a stale lock behind.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / LOCK, "a+")  # noqa: SIM115  (held for the whole block)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise UserError(
                    f"{self.root} is in use by another mnemoscope run ({holder}); "
                    "wait for it to finish or choose another --out"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            yield
        finally:
            handle.close()

    def claim(self, config: dict[str, Any], force: bool = False) -> None:
        """Refuse a directory that is not ours, or that holds a run of another config.

        An empty or missing directory, a run of the same config (to resume it) or an
        unfinished run (one that stopped on an error: its config is being fixed) is fine;
        a finished run of a different config is replaced only with ``force`` (the stages
        the two configs share are kept); anything else is a :class:`UserError`.
        """
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--out {self.root}: exists and is not a directory")
        if not self.root.exists():
            return
        entries = [p.name for p in self.root.iterdir() if p.name != LOCK]
        if not entries:
            return
        if "manifest.json" not in entries:
            raise UserError(
                f"{self.root} is not empty and is not a mnemoscope run; choose another --out"
            )
        finished = "report" in self.manifest.stages
        if finished and self.manifest.config != config and not force:
            raise UserError(
                f"{self.root} holds a run of a different config "
                f"('{self.manifest.name}'); use --force to replace it or choose another --out"
            )

    def remove_partial_writes(self) -> list[Path]:
        """Delete the temporary files of writes a killed process never finished (the
        ``.NAME.*.tmp`` files of :func:`~mnemoscope.store.atomic.atomic_path`; a SIGKILL
        skips their clean-up), so a resumed run leaves none behind. Only for the holder of
        :meth:`lock`: no other writer can be mid-write then."""
        partial = [p for p in self.root.rglob(".*.tmp") if p.is_file()]
        for path in partial:
            path.unlink(missing_ok=True)
        return partial

    def start(self, name: str, config: dict[str, Any]) -> None:
        """Record the config and versions of the run about to execute, after removing
        what killed writes left (:meth:`remove_partial_writes`)."""
        self.remove_partial_writes()
        self.manifest.name = name
        self.manifest.config = config
        self.manifest.versions = package_versions()
        self.manifest.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.save()

    def keep_only(self, stages: list[str], datasets: list[str]) -> None:
        """Forget stages and datasets of earlier configs run into this directory, so the
        manifest (and the report drawn from it) describes the current run alone."""
        self.manifest.stages = {k: v for k, v in self.manifest.stages.items() if k in stages}
        self.manifest.datasets = {k: v for k, v in self.manifest.datasets.items() if k in datasets}
        self.save()

    def finish(
        self,
        stage: str,
        key: str,
        seconds: float,
        outputs: list[str],
        record: dict[str, Any] | None = None,
    ) -> None:
        self.manifest.stages[stage] = StageRecord(
            key=key,
            seconds=round(seconds, 3),
            outputs=outputs,
            files={name: file_digest(self.path(name)) for name in outputs},
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            record=record or {},
        )
        self.save()

    def save(self) -> None:
        write_json(self.root / "manifest.json", self.manifest.model_dump(mode="json"))
