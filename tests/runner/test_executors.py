"""The same config under the local and the Ray executor gives identical tables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from mnemoscope.config import parse_config
from mnemoscope.runner import run_study
from mnemoscope.store import RUN_TABLES

pytest.importorskip("ray")

CONFIG = {
    "name": "executors",
    "seed": 0,
    "datasets": [{"name": "digits", "label_noise": 0.1, "n_samples": 200}],
    "archs": ["logreg", "mlp"],
    # chunk_size 2: the 4 subset models train as two parts, on two workers
    "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "chunk_size": 2},
    "memorization": [{"method": "feldman_zhang", "n_models": 4}],
    "influence": [{"method": "tracin", "checkpoints": 2}, {"method": "grad_dot"}],
    "targets": {"split": "test", "n": 5},
    "analysis": {"n_bootstrap": 20},
}
# One thread per stage, as `threads: auto` resolves to in the tests (conftest), so the local
# run is planned identically; written out for the SIGKILL test's driver process.
RAY = {"executor": {"kind": "ray", "num_cpus": 2, "threads": 1}}


def _tables(run_dir) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(run_dir / f"{name}.parquet") for name in RUN_TABLES}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    run_study(parse_config(CONFIG), out)
    return out


def test_ray_with_two_workers_equals_local(local_run, tmp_path):
    result = run_study(parse_config({**CONFIG, **RAY}), tmp_path)
    assert any(o.name.endswith("/part-1") for o in result.outcomes)
    local = _tables(local_run)
    for name, frame in _tables(tmp_path).items():
        pd.testing.assert_frame_equal(frame, local[name], check_exact=True)
    assert not local["influence"].empty


_DRIVER = """
import sys
from pathlib import Path
from mnemoscope.config import parse_config
from mnemoscope.runner import run_study
run_study(parse_config({config!r}), Path(sys.argv[1]))
"""


@pytest.mark.slow
def test_a_ray_run_killed_with_sigkill_resumes(local_run, tmp_path):
    config = {**CONFIG, **RAY}
    out = tmp_path / "killed"
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER.format(config=config), str(out)],
        start_new_session=True,
    )
    manifest = out / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline and driver.poll() is None:
        if manifest.exists() and '"train/' in manifest.read_text():
            break
        time.sleep(0.05)
    assert driver.poll() is None, "the run finished before it could be killed"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert not (out / "report.html").exists()
    result = run_study(parse_config(config), out)
    assert any(not o.ran for o in result.outcomes if o.name.startswith("train/"))
    local = _tables(local_run)
    for name, frame in _tables(out).items():
        pd.testing.assert_frame_equal(frame, local[name], check_exact=True)
