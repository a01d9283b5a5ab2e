"""mnemoscope: per-example memorization and influence of neural networks.

The package is organised by concern (see DESIGN.md): ``data`` builds datasets,
``models`` builds architectures, ``train`` trains ensembles of models at once,
``memorization`` and ``influence`` turn trained models into per-example scores,
``analysis`` relates the scores, ``store`` keeps the run directory, ``runner``
executes the stages and ``report`` draws the HTML report.
"""

__version__ = "0.1.0"
