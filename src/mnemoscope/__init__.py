"""mnemoscope: per-example memorization and influence of neural networks.

The package is organised by concern: ``data`` builds datasets,
``models`` builds architectures, ``train`` trains ensembles of models at once,
``memorization`` and ``influence`` turn trained models into per-example scores,
``analysis`` relates the scores, ``store`` keeps the run directory, ``runner``
executes the stages and ``report`` draws the HTML report.
"""

__version__ = "0.1.0"

_API = (
    "Results",
    "StudyConfig",
    "load_config",
    "open_run",
    "parse_config",
    "plan",
    "register_arch",
    "register_dataset",
    "run",
    "study",
)
_ATTRIBUTORS = (
    "Attributor",
    "Scorer",
    "Task",
    "attribute",
    "ClassificationInfluence",
    "Downsampling",
    "GradCos",
    "GradDot",
    "IFArnoldi",
    "IFCG",
    "IFEKFAC",
    "IFExact",
    "IFLiSSA",
    "KNNShapley",
    "LOO",
    "RelatIF",
    "Representer",
    "TRAK",
    "TracIn",
)
__all__ = ["__version__", *_API, *_ATTRIBUTORS]


def __getattr__(name: str):
    """The Python API, imported on first use: studies (:mod:`mnemoscope.api`,
    ``mnemoscope.run``) and scores for the user's own model (:mod:`mnemoscope.attributors`,
    ``mnemoscope.TracIn``)."""
    if name in _API:
        from mnemoscope import api

        return getattr(api, name)
    if name in _ATTRIBUTORS:
        from mnemoscope import attributors

        return getattr(attributors, name)
    raise AttributeError(f"module 'mnemoscope' has no attribute '{name}'")
