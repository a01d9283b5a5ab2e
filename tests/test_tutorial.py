"""docs/tutorial.md runs as written, and what it prints holds: the flipped labels it
plants are found by self-influence and memorization."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

TUTORIAL = Path(__file__).parents[1] / "docs" / "tutorial.md"


def test_tutorial_runs_and_finds_the_planted_labels(capsys):
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.S)
    assert len(blocks) == 4
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(TUTORIAL), "exec"), namespace)
    flipped = namespace["is_flipped"]
    assert roc_auc_score(flipped, namespace["self_influence"]) > 0.8
    assert roc_auc_score(flipped, namespace["memorization"]) > 0.8
    assert namespace["influence"].shape == (500, 20) and namespace["trak"].shape == (500, 20)
    assert bool(torch.isfinite(namespace["influence"]).all())
    assert namespace["model"].training  # the user's model was left in train mode
    assert "ROC AUC" in capsys.readouterr().out
