"""Cache keys cover every module of the package a stage's estimator imports, directly or
not: editing, in a temporary copy of the package, a helper shared across the families
recomputes the stages that use it and nothing else."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mnemoscope
from mnemoscope.estimator import REGISTRY
from mnemoscope.runner.dependencies import code_units
from mnemoscope.runner.plan import estimator_code

SCRIPT = """
import json, sys, torch
from pathlib import Path
torch.set_num_threads(1)
import mnemoscope as ms
config = {
    "datasets": [{"name": "blobs", "n_samples": 60}],
    "archs": ["logreg"],
    "train": {"epochs": 2, "batch_size": 32},
    "executor": {"threads": 1},
    "memorization": [{"method": "feldman_zhang", "n_models": 4, "subset_fraction": 0.5}],
    "influence": [
        {"method": "downsampling", "n_models": 4, "subset_fraction": 0.5},
        {"method": "grad_dot"},
    ],
    "analysis": {"n_bootstrap": 10},
}
scores = [f"scores/blobs/logreg/{m}" for m in ("feldman_zhang", "downsampling", "grad_dot")]
first = ms.run(config, sys.argv[1], stages=scores).ran
# keys hash the files on disk, so the edit counts without re-importing the module
helper = Path(sys.argv[2])
helper.write_text(helper.read_text().replace(sys.argv[3], sys.argv[4]))
print(json.dumps([first, ms.run(config, sys.argv[1], stages=scores).ran]))
"""


def _run(src: Path, out: Path, helper: Path, old: str, new: str) -> list[list[str]]:
    """A run, the edit of ``helper`` (``old`` → ``new``), the same run again: what each ran."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out), str(helper), old, new],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_editing_a_helper_shared_across_families_recomputes_its_users(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(
        Path(mnemoscope.__file__).parent,
        src / "mnemoscope",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    helper = src / "mnemoscope" / "subsets.py"  # agresti_caffo: feldman_zhang, downsampling
    old = "p = (successes + 1) / (trials + 2)"
    assert old in helper.read_text()
    first, again = _run(src, tmp_path / "run", helper, old, old.replace("+ 1)", "+ 1.0)"))
    assert "scores/blobs/logreg/downsampling" in first
    assert {"scores/blobs/logreg/feldman_zhang", "scores/blobs/logreg/downsampling"} <= set(again)
    assert "scores/blobs/logreg/grad_dot" not in again  # it does not import the helper
    assert not [s for s in again if s.startswith(("train/", "data/"))]


def test_the_families_do_not_import_each_other_through_helpers():
    def units(name: str) -> tuple[str, ...]:
        cls = REGISTRY[name]
        return estimator_code(cls(cls.config_class()))

    assert "mnemoscope.subsets" in units("downsampling")
    assert not [u for u in units("downsampling") if u.startswith("mnemoscope.memorization")]
    assert not [u for u in units("feldman_zhang") if u.startswith("mnemoscope.influence")]
    assert "mnemoscope.params" in units("sample_info_weights")
    # the task and the models no longer import each other
    assert not [u for u in code_units(["mnemoscope.task"]) if u.startswith("mnemoscope.models")]
    assert "mnemoscope.task" not in code_units(["mnemoscope.models.registry"])
