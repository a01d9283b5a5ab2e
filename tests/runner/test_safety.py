"""A run owns its directory, refuses what cannot fit, stops on non-finite numbers,
recomputes damaged outputs, and survives being killed at any moment."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mnemoscope.cli import app
from mnemoscope.config import parse_config
from mnemoscope.errors import UserError
from mnemoscope.runner import run_study
from mnemoscope.store import RUN_TABLES
from mnemoscope.store.rundir import LOCK

TINY = {
    "name": "safety",
    "seed": 0,
    "datasets": [{"name": "digits", "label_noise": 0.1, "n_samples": 150}],
    "archs": ["logreg"],
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.05},
    "memorization": [{"method": "feldman_zhang", "n_models": 4}],
    "influence": [{"method": "grad_dot"}],
    "analysis": {"n_bootstrap": 10},
}


def _tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(run_dir / f"{name}.parquet") for name in RUN_TABLES}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).digest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    run_study(parse_config(TINY), out)
    return out


def test_a_directory_that_is_not_a_run_is_left_alone(tmp_path):
    (tmp_path / "report.html").write_text("my own report")
    before = _files(tmp_path)
    with pytest.raises(UserError, match="not empty and is not a mnemoscope run"):
        run_study(parse_config(TINY), tmp_path)
    assert _files(tmp_path) == before  # not even a lock file


_HOLDER = """
import fcntl, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle, fcntl.LOCK_EX)
handle.seek(0); handle.truncate(); handle.write("pid holder"); handle.flush()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_process_on_the_directory_fails_clearly(tmp_path, finished):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out / LOCK)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=r"in use by another mnemoscope run \(pid holder\)"):
            run_study(parse_config(TINY), out)
    finally:
        holder.kill()
        holder.wait()
    run_study(parse_config(TINY), out)  # released: the run goes ahead
    for name, frame in _tables(out).items():
        pd.testing.assert_frame_equal(frame, _tables(finished)[name])


def test_an_output_directory_that_cannot_be_written_is_one_line(tmp_path):
    import yaml

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(TINY))
    # /sys refuses new directories (EPERM for root, EACCES for others): a real read-only place
    result = CliRunner().invoke(app, ["run", str(config), "--out", "/sys/mnemoscope-test-run"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot write" in lines[0] and "Traceback" not in result.output


def test_damaged_outputs_are_recomputed_not_trusted(tmp_path, finished):
    import shutil

    out = tmp_path / "damaged"
    shutil.copytree(finished, out)
    model = next((out / "models").glob("*full-*.safetensors"))
    model.write_bytes(model.read_bytes()[:100])  # truncated
    data = out / "data" / "digits.safetensors"
    corrupt = bytearray(data.read_bytes())
    corrupt[-5] ^= 0xFF  # same size, one byte flipped
    data.write_bytes(bytes(corrupt))
    result = run_study(parse_config(TINY), out)
    ran = {o.name for o in result.outcomes if o.ran}
    assert "data/digits" in ran and any(
        name.startswith("train/digits/logreg/full-") for name in ran
    )
    for name, frame in _tables(out).items():
        pd.testing.assert_frame_equal(frame, _tables(finished)[name])


def test_files_follow_the_users_umask(tmp_path):
    old = os.umask(0o027)
    try:
        run_study(parse_config({**TINY, "memorization": []}), tmp_path)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.rglob("*") if p.is_file()}
    assert modes["manifest.json"] == 0o640 and modes["scores.parquet"] == 0o640
    assert set(modes.values()) == {0o640}


def test_a_run_that_cannot_fit_is_refused_before_anything_is_written(tmp_path):
    # 2,000 models × 10,000 epochs × 1,437 examples of per-presentation records: ~140 GB
    huge = {**TINY, "datasets": [{"name": "digits"}], "train": {**TINY["train"], "epochs": 10_000}}
    huge["memorization"] = [{"method": "feldman_zhang", "n_models": 2_000}]
    with pytest.raises(UserError, match=r"needs about .* for read digits/logreg/ensemble.* more"):
        run_study(parse_config(huge), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_the_plan_and_the_estimate_and_writes_nothing(tmp_path):
    import yaml

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(TINY))
    result = CliRunner().invoke(
        app, ["run", str(config), "--out", str(tmp_path / "o"), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "data/digits" in result.output and "scores/digits/logreg/grad_dot" in result.output
    assert "training work" in result.output and "peak" in result.output
    assert not (tmp_path / "o").exists()


def test_diverging_training_stops_the_run_naming_the_stage(tmp_path):
    import yaml

    diverging = {**TINY, "archs": ["mlp"], "train": {**TINY["train"], "lr": 1000.0}}
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(diverging))
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "train/digits/mlp/" in lines[-1] and "not finite" in lines[-1]
    assert "Traceback" not in result.output
    # the unfinished run of a config being fixed is no obstacle to the fixed config
    fixed = {**diverging, "train": {**TINY["train"]}}
    run_study(parse_config(fixed), tmp_path / "o")


def test_ctrl_c_and_a_full_disk_are_one_line(tmp_path, monkeypatch):
    import yaml

    from mnemoscope.runner import stages
    from mnemoscope.store import atomic

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(TINY))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "train_part", interrupted)
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "a")])
    assert result.exit_code == 130
    assert result.output.strip().endswith("interrupted; run the same command to resume")
    monkeypatch.undo()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "b" / "x"))

    monkeypatch.setattr(atomic.os, "replace", full)
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "No space left on device" in result.output
    assert "Traceback" not in result.output


def test_demo_out_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(target)])
    assert result.exit_code == 2 and "not a directory" in result.output
    assert target.read_text() == "x"


_DRIVER = """
import sys
from pathlib import Path
from mnemoscope.config import parse_config
from mnemoscope.runner import run_study
run_study(parse_config({config!r}), Path(sys.argv[1]))
"""


def _kill_at(delay: float, out: Path) -> bool:
    """Start the run in another process, SIGKILL it ``delay`` seconds after it has
    started writing; whether it was still running then."""
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER.format(config=TINY), str(out)], start_new_session=True
    )
    deadline = time.time() + 60
    while not (out / "manifest.json").exists() and driver.poll() is None:
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(delay)
    killed = driver.poll() is None
    if killed:
        os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    return killed


def _kill_and_resume(delays: list[float], finished: Path, out: Path) -> None:
    killed = [_kill_at(delay, out) for delay in delays]
    assert killed[0], "the run finished before it could be killed"
    run_study(parse_config(TINY), out)
    for name, frame in _tables(out).items():
        pd.testing.assert_frame_equal(frame, _tables(finished)[name])
    assert not list(out.rglob("*.tmp"))


def test_sigkill_at_a_random_moment_then_resume(tmp_path, finished):
    rng = random.Random(0)
    _kill_and_resume([rng.uniform(0.0, 1.0)], finished, tmp_path / "killed")


def test_a_resumed_run_removes_what_killed_writes_left(tmp_path, finished):
    out = tmp_path / "run"
    run_study(parse_config(TINY), out)
    # what a SIGKILL in the middle of an atomic write leaves: its temporary file
    partial = [out / ".scores.parquet.k1ll3d.tmp", out / "models" / ".m.safetensors.x9.tmp"]
    for path in partial:
        path.write_bytes(b"half a file")
    mine = out / "notes.tmp"  # not one of ours (no leading dot): left alone
    mine.write_text("kept")
    run_study(parse_config(TINY), out)
    assert not any(path.exists() for path in partial) and mine.read_text() == "kept"
    for name, frame in _tables(out).items():
        pd.testing.assert_frame_equal(frame, _tables(finished)[name])


@pytest.mark.slow
def test_sigkill_at_many_random_moments_then_resume(tmp_path, finished):
    rng = random.Random(1)
    for attempt in range(6):
        _kill_and_resume(
            [rng.uniform(0.0, 1.5) for _ in range(3)], finished, tmp_path / f"k{attempt}"
        )


def test_unknown_parameter_names_are_refused_before_anything_is_written(tmp_path):
    bad = {**TINY, "influence": [{"method": "grad_dot", "params": ["1.weight", "nope"]}]}
    with pytest.raises(UserError, match=r"params: unknown parameter names \['nope'\]"):
        run_study(parse_config(bad), tmp_path / "out")
    assert not (tmp_path / "out").exists()
