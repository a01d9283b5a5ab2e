"""The demo: the default study (:mod:`mnemoscope.runner.default_study`) at a size that
runs in a few minutes on a 2-core CPU, so that the first thing a newcomer sees is the
study's answer; ``--quick`` is the study's own ``--quick`` size."""

from __future__ import annotations

from mnemoscope.config import StudyConfig, parse_config
from mnemoscope.config.study import QuickConfig, quick_config
from mnemoscope.runner.default_study import study_config

DEMO = QuickConfig(n_samples=400, n_models=16, n_examples=4, n_bootstrap=100, epochs=80)
"""What the demo keeps of the default study: every architecture, 400 examples per
dataset, subset ensembles of 16 models, loo on 4 examples, 80 epochs for every arch (on
half of 400 examples the default study's 60/70 epochs leave the transformer and resnet
short of fitting MNIST-1D; BENCHMARKS.md has the time and the fits)."""


def demo_config(quick: bool = False) -> StudyConfig:
    """The demo study (``quick``: the default study at its ``--quick`` size)."""
    if quick:
        return study_config(quick=True)
    data = quick_config(study_config().model_dump(mode="json"), DEMO)
    return parse_config({**data, "name": "demo"})
