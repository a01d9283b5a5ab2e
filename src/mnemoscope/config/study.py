"""The ``study:`` section of a config: which analyses relate the two score families.

A study config is an ordinary config plus this section (``mnemoscope study`` ships a
default one: ``mnemoscope study --dry-run`` prints its plan, and the YAML is
``mnemoscope/config/default_study.yaml`` in the installed package)::

    study:
      overlap: {ks: [0.01, 0.05, 0.1]}               # top-k Jaccard / precision@k
      cross_arch: {reference: feldman_zhang}          # rank agreement between archs
      leakage: {reference: lira, ks: [0.01, 0.05, 0.1]}
      applications: {}                                # detection per kind, sources, rare class
      removal: {methods: [feldman_zhang], ks: [0.01, 0.05, 0.1, 0.2], seeds: 3, archs: [mlp]}
      summarization: {method: sample_info_function, fraction: 0.1, steps: 3, seeds: 3}
      dp: {settings: [null, {target_epsilon: 8}, {target_epsilon: 1}], n_models: 16}
      quick: {n_samples: 400, n_models: 16}           # what --quick shrinks to

Every analysis may be ``null`` (off). ``removal``, ``summarization`` and ``dp`` retrain models
(their cost is in ``--dry-run``'s estimate); the others read the score tables.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from mnemoscope.config.common import _STRICT
from mnemoscope.train.options import DPConfig


def _fractions(values: list[float]) -> list[float]:
    if not values:
        raise ValueError("give at least one fraction")
    if any(not 0 < v < 1 for v in values):
        raise ValueError("each k is a fraction of the training set in (0, 1)")
    if len(set(values)) != len(values):
        raise ValueError("a fraction is listed twice")
    return values


class OverlapConfig(BaseModel):
    """Top-k overlap of every (influence, memorization) pair → ``overlap.parquet``."""

    model_config = _STRICT

    ks: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.1], max_length=20)
    """Fractions of the training set taken as the top-k."""

    @field_validator("ks")
    @classmethod
    def _ks(cls, ks: list[float]) -> list[float]:
        return _fractions(ks)


class CrossArchConfig(BaseModel):
    """Rank agreement of each score between architectures, and the best memorization
    proxy per architecture (Spearman vs ``reference``) → ``cross_arch.parquet``."""

    model_config = _STRICT

    reference: str = Field("feldman_zhang", min_length=1, max_length=64)
    """The memorization score the proxies are compared with."""


class LeakageConfig(BaseModel):
    """How well each cheap score finds the examples most vulnerable to membership
    inference (the top-k by ``reference``'s per-example score) → ``leakage.parquet``."""

    model_config = _STRICT

    reference: str = Field("lira", min_length=1, max_length=64)
    ks: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.1], max_length=20)

    @field_validator("ks")
    @classmethod
    def _ks(cls, ks: list[float]) -> list[float]:
        return _fractions(ks)


class ApplicationsConfig(BaseModel):
    """Every score's detection AUC for each planted kind, mean score per data source and
    for an under-sampled class → ``applications.parquet`` (needs the provenance the
    dataset entries plant: ``corruptions``, ``sources``, ``undersample``, canaries)."""

    model_config = _STRICT

    kinds: list[str] = Field(
        default_factory=lambda: [
            "is_mislabeled",
            "is_canary",
            "is_noisy_input",
            "is_occluded",
            "is_adversarial",
        ],
        max_length=32,
    )
    """Boolean columns of ``examples.parquet`` to detect (absent or empty ones are skipped)."""


class RemovalConfig(BaseModel):
    """Feldman & Zhang (2020, §4)'s experiment: remove the top-k examples by a score, a
    random k and the bottom-k, retrain ``seeds`` models on each remaining set, measure
    test accuracy → ``removal.parquet``. All models of a (dataset, arch) form one
    ensemble (one mask per model)."""

    model_config = _STRICT

    methods: list[str] = Field(
        default_factory=lambda: ["feldman_zhang"], min_length=1, max_length=16
    )
    """Scores to rank by (each must be in the config's method lists)."""
    ks: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.1, 0.2], max_length=20)
    seeds: int = Field(3, ge=2, le=1000)
    """Models retrained per (method, direction, k): R ≥ 2 for a CI (≥ 3 advised)."""
    archs: list[str] | None = None
    """Architectures to run it on (None: all of the config's)."""
    conditions: list[Literal["as_configured", "clean"]] = Field(
        default_factory=lambda: ["as_configured"], min_length=1, max_length=2
    )
    """``as_configured``: the dataset as the config builds it (with its flipped labels);
    ``clean``: the same examples with their original labels, the ranking score computed
    again on them (its ensembles are trained inside the stage)."""

    @field_validator("ks")
    @classmethod
    def _ks(cls, ks: list[float]) -> list[float]:
        return _fractions(ks)


class SummarizationConfig(BaseModel):
    """Dataset summarization (Harutyunyan et al. 2021, §5): remove the least informative
    ``fraction`` by ``method`` (recomputed on what is left), ``steps`` times, against the
    same numbers removed at random; test accuracy of ``seeds`` models after each step →
    ``applications.parquet`` (application ``summarization``)."""

    model_config = _STRICT

    method: str = Field("sample_info_function", min_length=1, max_length=64)
    fraction: float = Field(0.1, gt=0, lt=0.5)
    steps: int = Field(3, ge=1, le=9)
    seeds: int = Field(3, ge=2, le=1000)
    archs: list[str] | None = None


class QuickConfig(BaseModel):
    """What ``--quick`` shrinks a study to: at most ``n_samples`` examples per dataset,
    ``n_models`` models per ensemble, ``n_examples`` left out by ``loo``, ``proj_dim``
    for projected gradients, ``epochs`` per model (None: unchanged),
    ``archs`` (None: all), ``n_bootstrap`` resamples; removal and summarization keep
    their first two ``ks``, their first condition, one step, and retrain 2 seeds."""

    model_config = _STRICT

    n_samples: int = Field(400, ge=20, le=1_000_000)
    n_models: int = Field(16, ge=2, le=10_000)
    n_examples: int = Field(10, ge=1, le=1_000_000)
    """At most this many examples left out by ``loo`` (its ``n_examples``)."""
    proj_dim: int = Field(500, ge=1, le=1_000_000)
    """At most this projection size for the methods that project gradients (``proj_dim``
    of sample information and TRAK; None, no projection, becomes this)."""
    epochs: int | None = Field(None, ge=1, le=10_000)
    archs: list[str] | None = None
    n_bootstrap: int = Field(100, ge=10, le=100_000)


class DPSweepConfig(BaseModel):
    """The DP sweep (``study.dp``): for each setting in ``settings`` (``null``: no DP; else a
    ``train.dp`` entry, :class:`~mnemoscope.train.options.DPConfig`), ``n_models`` models
    on ``subset_fraction`` subsets trained with it → ``dp.parquet``: test accuracy, the
    Feldman–Zhang distribution, LiRA AUC and TPR at 0.1% FPR, the privacy score, canary
    exposure, the accountant's ε and an empirical lower bound from the attack
    (:mod:`mnemoscope.runner.dp_sweep`). Needs ``mnemoscope[dp]`` (Opacus's accountant)."""

    model_config = _STRICT

    settings: list[DPConfig | None] = Field(
        default_factory=lambda: [
            None,
            DPConfig(target_epsilon=8.0),
            DPConfig(target_epsilon=1.0),
        ],
        min_length=1,
        max_length=20,
    )
    n_models: int = Field(16, ge=2, le=10_000)
    subset_fraction: float = Field(0.5, gt=0, lt=1)
    archs: list[str] | None = None
    """The archs swept (None: all)."""


class StudySection(BaseModel):
    """The analyses of a study (``study:``); each may be ``null``."""

    model_config = _STRICT

    overlap: OverlapConfig | None = OverlapConfig()
    cross_arch: CrossArchConfig | None = CrossArchConfig()
    leakage: LeakageConfig | None = LeakageConfig()
    applications: ApplicationsConfig | None = ApplicationsConfig()
    removal: RemovalConfig | None = None
    summarization: SummarizationConfig | None = None
    dp: DPSweepConfig | None = None
    quick: QuickConfig = QuickConfig()


def study_problem(
    section: StudySection, archs: list[str], methods: list[str]
) -> tuple[str, str] | None:
    """The first ``(field, message)`` where ``section`` names a method or an arch the
    config does not have, else None. An analysis left at its default whose reference
    method the config lacks is turned off instead (``section`` is updated)."""
    for name in ("cross_arch", "leakage"):
        part = getattr(section, name)
        if name not in section.model_fields_set and part.reference not in methods:
            setattr(section, name, None)
    named: list[tuple[str, str]] = []
    if section.cross_arch is not None:
        named.append(("study.cross_arch.reference", section.cross_arch.reference))
    if section.leakage is not None:
        named.append(("study.leakage.reference", section.leakage.reference))
    if section.removal is not None:
        named += [(f"study.removal.methods.{i}", m) for i, m in enumerate(section.removal.methods)]
    if section.summarization is not None:
        named.append(("study.summarization.method", section.summarization.method))
    for field, method in named:
        if method not in methods:
            return field, f"'{method}' is not among the config's methods {methods}"
    for name, part in (
        ("removal", section.removal),
        ("summarization", section.summarization),
        ("dp", section.dp),
        ("quick", section.quick),
    ):
        for i, arch in enumerate(getattr(part, "archs", None) or []):
            if arch not in archs:
                return f"study.{name}.archs.{i}", f"'{arch}' is not in archs {archs}"
    return None


def quick_config(data: dict, quick: QuickConfig) -> dict:
    """A config mapping (as ``model_dump(mode="json")`` gives it) shrunk as ``quick`` says."""
    data = {**data, "name": f"{data.get('name', 'study')}-quick"}
    data["datasets"] = [
        {**d, "n_samples": min(d.get("n_samples") or quick.n_samples, quick.n_samples)}
        for d in data["datasets"]
    ]
    for family in ("memorization", "influence"):
        entries = []
        for entry in data.get(family, []):
            entry = dict(entry)
            if isinstance(entry.get("n_models"), int) and entry["n_models"] > 1:
                entry["n_models"] = min(entry["n_models"], quick.n_models)
            if "proj_dim" in entry:
                entry["proj_dim"] = min(entry["proj_dim"] or quick.proj_dim, quick.proj_dim)
            if entry.get("method") == "loo":
                entry["n_examples"] = min(
                    entry.get("n_examples") or quick.n_examples, quick.n_examples
                )
            entries.append(entry)
        data[family] = entries
    if quick.archs is not None:
        data["archs"] = list(quick.archs)
        data["arch_options"] = {
            a: o for a, o in data.get("arch_options", {}).items() if a in quick.archs
        }
        if "arch_train" in data:
            data["arch_train"] = {a: o for a, o in data["arch_train"].items() if a in quick.archs}
    if quick.epochs is not None:
        data["train"] = {**data["train"], "epochs": quick.epochs}
        if "arch_train" in data:
            data["arch_train"] = {
                a: {**o, "epochs": quick.epochs} if "epochs" in o else o
                for a, o in data["arch_train"].items()
            }
    data["analysis"] = {
        **data.get("analysis", {}),
        "n_bootstrap": min(data.get("analysis", {}).get("n_bootstrap", 1000), quick.n_bootstrap),
    }
    study = dict(data.get("study") or {})
    if study.get("dp") is not None:
        study["dp"] = {
            **study["dp"],
            "n_models": min(study["dp"].get("n_models", 16), quick.n_models),
        }
    for name in ("removal", "summarization"):
        part = study.get(name)
        if part is None:
            continue
        part = {**part, "seeds": 2}
        if "ks" in part:
            part["ks"] = part["ks"][:2]
        if "steps" in part:
            part["steps"] = 1
        if "conditions" in part:
            part["conditions"] = part["conditions"][:1]
        if part.get("archs") is not None and quick.archs is not None:
            part["archs"] = [a for a in part["archs"] if a in quick.archs]
        study[name] = part if part.get("archs", None) != [] else None
    data["study"] = study
    return data
