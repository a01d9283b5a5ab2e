"""The study configs ``mnemoscope study`` and ``mnemoscope demo`` run.

- The **default study** (``mnemoscope study`` with no CONFIG): the YAML file
  ``mnemoscope/config/default_study.yaml`` shipped in the package — digits and
  MNIST-1D with 10% flipped labels and canaries, all five architectures, each trained
  so that it fits its data, the memorization and influence methods the study relates,
  and every analysis. ``mnemoscope study --print-default`` writes it out to edit.
- ``--quick`` shrinks any study as its ``study.quick`` section says
  (:func:`~mnemoscope.config.study.quick_config`).
- The **demo** is the default study at its quick size.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import yaml

from mnemoscope.config import StudyConfig, load_config, parse_config
from mnemoscope.config.study import quick_config

DEFAULT_STUDY = "default_study.yaml"


def default_study_text() -> str:
    """The default study's YAML, as shipped."""
    return files("mnemoscope.config").joinpath(DEFAULT_STUDY).read_text(encoding="utf-8")


def study_config(path: Path | None = None, quick: bool = False) -> StudyConfig:
    """The study of the YAML file ``path`` (None: the default study); a config without a
    ``study:`` section gets every analysis that reads the score tables. ``quick``: the
    study shrunk by its ``study.quick`` settings."""
    if path is None:
        config = parse_config(yaml.safe_load(default_study_text()))
    else:
        config = load_config(Path(path))
    return as_study(config, quick)


def as_study(config: StudyConfig, quick: bool = False) -> StudyConfig:
    """``config`` as a study: with the default ``study:`` section where it has none, and
    shrunk by its ``study.quick`` settings with ``quick``."""
    if config.study is None:  # validated again: defaults whose references are absent go
        config = parse_config({**config.model_dump(mode="json"), "study": {}})
    if not quick:
        return config
    data = quick_config(config.model_dump(mode="json"), config.study.quick)
    return parse_config(data)
