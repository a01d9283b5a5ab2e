"""The ``study:`` section: validated against the config's methods and archs, one line per
error; ``--quick`` shrinks a study as its ``quick`` section says."""

from __future__ import annotations

import pytest

from mnemoscope.config import parse_config
from mnemoscope.config.study import QuickConfig, quick_config
from mnemoscope.errors import ConfigError
from mnemoscope.runner.default_study import default_study_text, study_config

BASE = {
    "datasets": [{"name": "digits", "label_noise": 0.1}],
    "archs": ["logreg", "mlp"],
    "memorization": [{"method": "feldman_zhang", "n_models": 32, "subset_fraction": 0.5}],
    "influence": [{"method": "grad_dot"}, {"method": "loo", "n_examples": 40}],
}


def config(study):
    return parse_config({**BASE, "study": study})


def test_defaults_turn_on_the_table_analyses_and_leave_retraining_off():
    study = config({}).study
    assert study.overlap.ks == [0.01, 0.05, 0.1]
    assert study.cross_arch.reference == "feldman_zhang"
    assert study.removal is None and study.summarization is None
    assert study.leakage is None  # its reference, lira, is not in the config


@pytest.mark.parametrize(
    ("study", "message"),
    [
        ({"removal": {"methods": ["tracin"]}}, "study.removal.methods.0: 'tracin' is not among"),
        ({"removal": {"archs": ["cnn"]}}, "study.removal.archs.0: 'cnn' is not in archs"),
        ({"overlap": {"ks": [0.0]}}, "study.overlap.ks"),
        ({"overlap": {"ks": [0.1, 0.1]}}, "a fraction is listed twice"),
        ({"removal": {"seeds": 1}}, "study.removal.seeds"),
        ({"summarization": {"method": "sample_info_function"}}, "study.summarization.method"),
        ({"leakage": {"reference": "lira"}}, "study.leakage.reference: 'lira' is not among"),
        ({"nonsense": 1}, "study.nonsense: unknown key"),
    ],
)
def test_bad_study_sections_are_one_line_errors(study, message):
    with pytest.raises(ConfigError) as error:
        config(study)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_quick_shrinks_samples_models_loo_archs_and_retraining():
    cfg = config(
        {
            "leakage": None,
            "removal": {"ks": [0.01, 0.05, 0.1], "seeds": 5, "archs": ["mlp"]},
        }
    )
    quick = QuickConfig(n_samples=300, n_models=8, n_examples=5, archs=["logreg"])
    small = parse_config(quick_config(cfg.model_dump(mode="json"), quick))
    assert small.datasets[0].n_samples == 300
    assert small.memorization[0].n_models == 8
    assert small.influence[1].n_examples == 5
    assert small.archs == ["logreg"]
    assert small.study.removal is None  # its only arch was dropped
    kept = parse_config(quick_config(cfg.model_dump(mode="json"), QuickConfig()))
    assert kept.study.removal.seeds == 2 and kept.study.removal.ks == [0.01, 0.05]


def test_the_default_study_is_valid_and_has_every_analysis():
    assert "study:" in default_study_text()
    cfg = study_config()
    assert set(cfg.archs) == {"logreg", "mlp", "cnn", "resnet", "transformer"}
    assert {d.name for d in cfg.datasets} == {"digits", "mnist1d"}
    assert all(d.sources.label_noise * d.sources.noisy_fraction == 0.1 for d in cfg.datasets)
    assert all(d.canaries is not None and d.corruptions is not None for d in cfg.datasets)
    methods = {e.method for e in [*cfg.memorization, *cfg.influence]}
    assert {"feldman_zhang", "counterfactual", "lira", "sample_info_function"} <= methods
    assert {
        "tracin",
        "grad_dot",
        "grad_cos",
        "trak",
        "if_ekfac",
        "representer",
        "classification_influence",
        "knn_shapley",
        "loo",
    } <= methods
    study = cfg.study
    assert all(
        getattr(study, name) is not None
        for name in ("overlap", "cross_arch", "leakage", "applications", "removal", "summarization")
    )
    # one subset ensemble serves FZ, counterfactual and LiRA
    subset = {
        (e.n_models, e.subset_fraction)
        for e in cfg.memorization
        if e.method in ("feldman_zhang", "counterfactual", "lira")
    }
    assert len(subset) == 1
    quick = study_config(quick=True)
    assert quick.name.endswith("-quick") and all(d.n_samples <= 400 for d in quick.datasets)


def test_the_default_subset_ensemble_bounds_every_fz_stderr_by_a_tenth():
    """Worst case over examples of the Agresti–Caffo stderr FZ reports (both proportions
    at 1/2), from the masks the default study's subset ensemble trains on."""
    import numpy as np

    from mnemoscope.memorization.feldman_zhang import agresti_caffo
    from mnemoscope.runner.estimate import expected_dataset
    from mnemoscope.runner.plan import plan_context
    from mnemoscope.train import subset_masks

    cfg = study_config()
    (fz,) = [e for e in cfg.memorization if e.method == "feldman_zhang"]
    for ds in cfg.datasets:
        n = expected_dataset(ds).n_train
        seed = plan_context(cfg, n).seed
        k_in = subset_masks(fz.n_models, n, fz.subset_fraction, seed).sum(0).numpy()
        k_out = fz.n_models - k_in
        half_in, half_out = (k_in + 2) / 2 - 1, (k_out + 2) / 2 - 1  # p̃ = 1/2
        worst = np.sqrt(agresti_caffo(half_in, k_in) + agresti_caffo(half_out, k_out)).max()
        assert worst <= 0.1, (ds.name, worst)
