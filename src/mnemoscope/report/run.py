"""What the report reads from a run directory: its manifest and tables (:class:`Run`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mnemoscope.store.manifest import Manifest
from mnemoscope.store.rundir import RunDir

_TABLES = ("examples", "scores", "correlations", "detection")
STUDY_REPORT_TABLES = (
    "fits",
    "overlap",
    "cross_arch",
    "leakage",
    "applications",
    "removal",
    "dp",
    "influence_eval",
    "attack_roc",
)
"""Tables the report draws where the run has them (a study writes them all)."""


@dataclass(frozen=True)
class Run:
    """Everything the report reads from a run directory."""

    store: RunDir
    examples: pd.DataFrame
    scores: pd.DataFrame
    correlations: pd.DataFrame
    detection: pd.DataFrame
    influence: pd.DataFrame | None = None
    """Train×target influence; ``None`` where the run has no ``influence.parquet``."""
    attacks: pd.DataFrame | None = None
    """Membership-inference attack metrics; ``None`` where the run has no ``attacks.parquet``."""
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    """The study's tables (:data:`STUDY_REPORT_TABLES`) that the run has, by name."""

    @property
    def path(self) -> Path:
        return self.store.root

    @property
    def manifest(self) -> Manifest:
        return self.store.manifest

    @property
    def families(self) -> dict[str, str]:
        """Method name → score family ('memorization' | 'influence')."""
        pairs = self.scores[["method", "family"]].drop_duplicates("method")
        return dict(zip(pairs["method"], pairs["family"], strict=True))

    @property
    def datasets(self) -> list[str]:
        """Datasets in manifest order, then any that only the tables mention."""
        names = list(self.manifest.datasets)
        for frame in (self.scores, self.examples):
            names += [d for d in frame["dataset"].unique() if d not in names]
        return names

    def archs(self, dataset: str) -> list[str]:
        """Architectures with scores for ``dataset``, in the order the scores list them."""
        return list(self.scores.loc[self.scores["dataset"] == dataset, "arch"].unique())

    def methods(self, dataset: str, family: str) -> list[str]:
        rows = self.scores[(self.scores["dataset"] == dataset) & (self.scores["family"] == family)]
        return list(rows["method"].unique())


def load_run(run_dir: Path) -> Run:
    """Open ``run_dir`` and read its tables; a missing or invalid manifest, a missing
    table or a missing column raises :class:`UserError`."""
    store = RunDir.existing(Path(run_dir))
    tables = {name: store.table(name) for name in _TABLES}
    optional = {
        name: store.table(name) if store.has_table(name) else None
        for name in ("influence", "attacks")
    }
    study = {name: store.table(name) for name in STUDY_REPORT_TABLES if store.has_table(name)}
    return Run(store=store, **optional, **tables, tables=study)
