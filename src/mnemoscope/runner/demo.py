"""The demo: the default study (:mod:`mnemoscope.runner.default_study`) at a size that
runs in a few minutes on a 2-core CPU, so that the first thing a newcomer sees is the
study's answer; ``--quick`` is the study's own ``--quick`` size."""

from __future__ import annotations

from mnemoscope.config import StudyConfig, parse_config
from mnemoscope.config.study import QuickConfig, quick_config
from mnemoscope.runner.default_study import study_config

DEMO = QuickConfig(n_samples=500, n_models=32, n_examples=4, n_bootstrap=200)
"""What the demo keeps of the default study: every architecture, 500 examples per
dataset, subset ensembles of 32 models, loo on 4 examples."""


def demo_config(quick: bool = False) -> StudyConfig:
    """The demo study (``quick``: the default study at its ``--quick`` size)."""
    if quick:
        return study_config(quick=True)
    data = quick_config(study_config().model_dump(mode="json"), DEMO)
    return parse_config({**data, "name": "demo"})
