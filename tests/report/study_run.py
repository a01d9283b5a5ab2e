"""A small synthetic *study* run directory: the run of ``test_report.make_run`` plus the
study's tables (fits, leakage, removal, cross_arch, applications, influence_eval,
attacks, overlap) with planted values, and a third, tabular dataset. One architecture
of the sequence dataset does not fit, so the answer must leave it out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mnemoscope.store.atomic import write_parquet
from mnemoscope.store.tables import (
    APPLICATIONS,
    ATTACKS,
    CORRELATIONS,
    CROSS_ARCH,
    FITS,
    INFLUENCE_EVAL,
    LEAKAGE,
    OVERLAP,
    REMOVAL,
)
from tests.report.test_report import ARCHS, IMAGE, SEQUENCE, make_run

UNFIT = (SEQUENCE, "cnn")
UNFIT_REASON = "fits only 61% of its own training labels (< 90%)"
# planted Spearman ρ of (influence, feldman_zhang) per dataset × arch: grad_dot wins on
# IMAGE/cnn, tracin elsewhere; the unfit cell has the highest ρ of all (must be ignored)
RHO = {
    (IMAGE, "mlp"): {"tracin": (0.6143, 0.5521, 0.6702), "grad_dot": (0.4411, 0.3712, 0.5003)},
    (IMAGE, "cnn"): {"tracin": (0.3157, 0.2203, 0.4089), "grad_dot": (0.5279, 0.4412, 0.6014)},
    (SEQUENCE, "mlp"): {"tracin": (0.2864, 0.1551, 0.4012), "grad_dot": (0.1208, -0.0513, 0.27)},
    (SEQUENCE, "cnn"): {"tracin": (0.9512, 0.9304, 0.9688), "grad_dot": (0.9001, 0.85, 0.93)},
}
METHODS = ("feldman_zhang", "tracin", "grad_dot")
SECONDS = {"feldman_zhang": 30.0, "tracin": 1.5, "grad_dot": 0.4}


def _cells() -> list[tuple[str, str]]:
    return [(d, a) for d in (IMAGE, SEQUENCE) for a in ARCHS]


def _fit(dataset: str, arch: str) -> bool:
    return (dataset, arch) != UNFIT


def make_study_run(run: Path) -> Path:
    make_run(run)
    rng = np.random.default_rng(1)
    cells = _cells()
    fits = pd.DataFrame(
        [
            (
                d,
                a,
                0.61 if not _fit(d, a) else 0.99,
                0.2 if not _fit(d, a) else 0.97,
                _fit(d, a),
                "" if _fit(d, a) else UNFIT_REASON,
            )
            for d, a in cells
        ],
        columns=FITS.names,
    )
    write_parquet(run / "fits.parquet", fits, FITS)
    correlations = pd.DataFrame(
        [
            (d, a, "feldman_zhang", inf, "spearman", *RHO[(d, a)][inf], 60, _fit(d, a))
            for d, a in cells
            for inf in ("tracin", "grad_dot")
        ]
        + [
            (d, a, "tracin", "grad_dot", "spearman", 0.81, 0.75, 0.86, 60, _fit(d, a))
            for d, a in cells
        ],
        columns=CORRELATIONS.names,
    )
    write_parquet(run / "correlations.parquet", correlations, CORRELATIONS)
    leakage = []
    for d, a in cells:
        for i, method in enumerate(METHODS):
            family = "memorization" if method == "feldman_zhang" else "influence"
            for k in (0.05, 0.1):
                p = 0.3 + 0.15 * i + 0.01 * len(d) + (0.05 if a == "cnn" else 0)
                leakage.append(
                    (
                        d,
                        a,
                        method,
                        family,
                        "lira",
                        k,
                        round(60 * k),
                        p,
                        p - 0.2,
                        p + 0.2,
                        p + 0.2,
                        p + 0.1,
                        p + 0.3,
                        SECONDS[method],
                        12.5,
                        _fit(d, a),
                        60,
                        0,
                    )
                )
    write_parquet(run / "leakage.parquet", pd.DataFrame(leakage, columns=LEAKAGE.names), LEAKAGE)
    removal = []
    for d, a in cells:
        for condition in ("as_configured", "clean"):
            for k in (0.05, 0.1, 0.2):
                base = {"top": 0.8 - k, "random": 0.85 - k / 4, "bottom": 0.86}
                for direction, acc in base.items():
                    delta = acc - base["random"]
                    removal.append(
                        (
                            d,
                            a,
                            "feldman_zhang",
                            direction,
                            k,
                            round(60 * k),
                            acc,
                            acc - 0.02,
                            acc + 0.02,
                            3,
                            delta,
                            delta - 0.015,
                            delta + 0.015,
                            _fit(d, a),
                            condition,
                        )
                    )
    write_parquet(run / "removal.parquet", pd.DataFrame(removal, columns=REMOVAL.names), REMOVAL)
    cross = []
    for d in (IMAGE, SEQUENCE):
        for method in METHODS:
            cross.append(
                (
                    d,
                    "architectures",
                    method,
                    None,
                    "mlp",
                    "cnn",
                    "spearman",
                    0.5,
                    0.4,
                    0.6,
                    60,
                    False,
                    d != SEQUENCE,
                    0,
                )
            )
        cross.append(
            (
                d,
                "proxy",
                "tracin",
                "feldman_zhang",
                "mlp",
                "mlp",
                "spearman",
                0.62,
                0.5,
                0.7,
                60,
                True,
                True,
                0,
            )
        )
    write_parquet(
        run / "cross_arch.parquet", pd.DataFrame(cross, columns=CROSS_ARCH.names), CROSS_ARCH
    )
    apps = []
    for d, a in cells:
        for method in METHODS + ("sample_info_function",):
            auc = 0.9 if method == "feldman_zhang" else 0.88 if method == "tracin" else 0.6
            apps.append(
                (
                    d,
                    a,
                    "detection",
                    method,
                    "is_mislabeled",
                    "auc",
                    auc,
                    auc - 0.05,
                    min(auc + 0.05, 1.0),
                    60,
                    _fit(d, a),
                )
            )
        for group, value in (("is_canary", 0.97), ("is_noisy_input", 0.64)):
            apps.append(
                (
                    d,
                    a,
                    "detection",
                    "sample_info_function",
                    group,
                    "auc",
                    value,
                    value - 0.1,
                    min(value + 0.1, 1.0),
                    60,
                    _fit(d, a),
                )
            )
        apps.append(
            (
                d,
                a,
                "sources",
                "sample_info_function",
                "difference",
                "mean",
                0.2,
                0.1,
                0.3,
                60,
                _fit(d, a),
            )
        )
        for frac in (0.0, 0.1, 0.2):
            for name, acc in (("least_informative", 0.9 - frac / 4), ("random", 0.9 - frac / 2)):
                apps.append(
                    (
                        d,
                        a,
                        "summarization",
                        "sample_info_function",
                        f"{name}@{frac}",
                        "accuracy",
                        acc,
                        acc - 0.03,
                        acc + 0.03,
                        3,
                        _fit(d, a),
                    )
                )
    write_parquet(
        run / "applications.parquet", pd.DataFrame(apps, columns=APPLICATIONS.names), APPLICATIONS
    )
    lds = [
        (d, a, m, "lds", 0.3 + 0.1 * i, 0.2 + 0.1 * i, 0.4 + 0.1 * i, _fit(d, a))
        for d, a in cells
        for i, m in enumerate(("tracin", "grad_dot"))
    ]
    write_parquet(
        run / "influence_eval.parquet",
        pd.DataFrame(lds, columns=INFLUENCE_EVAL.names),
        INFLUENCE_EVAL,
    )
    attacks = [(d, a, "lira", "online", 0.71, 0.02, 0.08, 8, _fit(d, a)) for d, a in cells]
    write_parquet(run / "attacks.parquet", pd.DataFrame(attacks, columns=ATTACKS.names), ATTACKS)
    overlap = pd.DataFrame(columns=OVERLAP.names)
    write_parquet(run / "overlap.parquet", overlap, OVERLAP)
    _add_lira_scores(run, rng)
    return run


def _add_lira_scores(run: Path, rng: np.random.Generator) -> None:
    """LiRA scores with planted ties: equal scores, different stderr (the gallery's
    tie-break)."""
    scores = pd.read_parquet(run / "scores.parquet")
    fz = scores[scores["method"] == "feldman_zhang"]
    lira = fz.assign(
        method="lira",
        score=rng.uniform(0, 1, len(fz)).round(1),
        stderr=rng.uniform(0.01, 0.2, len(fz)),
    )
    scores = pd.concat([scores, lira], ignore_index=True)
    scores.to_parquet(run / "scores.parquet", index=False)


def make_tabular(run: Path) -> None:
    """Declare the sequence dataset tabular in the manifest: its galleries become tables."""
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["datasets"][SEQUENCE]["kind"] = "tabular"
    (run / "manifest.json").write_text(json.dumps(manifest))
