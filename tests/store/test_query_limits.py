"""``mnemoscope query`` is bounded in time: a statement that would run for hours stops at
the time limit in one line, and a SIGTERM stops it too, removing its spill directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mnemoscope.cli import app
from mnemoscope.errors import UserError
from mnemoscope.store.query import query
from tests.store.test_query import _make_run

ROOT = Path(__file__).resolve().parents[2]
ENDLESS = "SELECT * FROM range(1000000000000) ORDER BY random()"  # 10¹² rows sorted


@pytest.fixture
def spill_root(tmp_path, monkeypatch) -> Path:
    """Where the query's temporary (spill) directory goes: watched for what is left."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(root))
    return root


def test_a_query_stops_at_its_time_limit_and_leaves_nothing(tmp_path, spill_root):
    run_dir = _make_run(tmp_path / "run")
    started = time.monotonic()
    with pytest.raises(UserError, match=r"stopped at the time limit of 0\.5 s") as caught:
        query(run_dir, ENDLESS, limit=1, timeout=0.5)
    assert time.monotonic() - started < 20 and "\n" not in str(caught.value)
    assert list(spill_root.iterdir()) == []
    assert len(query(run_dir, "SELECT * FROM scores", timeout=5).frame) == 12  # still works


def test_cli_timeout_option(tmp_path):
    run_dir = _make_run(tmp_path / "run")
    runner = CliRunner()
    stopped = runner.invoke(
        app, ["query", str(run_dir), ENDLESS, "--limit", "1", "--timeout", "0.5"]
    )
    assert stopped.exit_code == 2, stopped.output
    lines = [line for line in stopped.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--timeout raises it" in lines[0]
    refused = runner.invoke(app, ["query", str(run_dir), "SELECT 1", "--timeout", "0"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output


_CHILD = """
import sys, tempfile
tempfile.tempdir = sys.argv[2]
from mnemoscope.store.query import query
print("started", flush=True)
query(sys.argv[1], sys.argv[3], limit=1, timeout=600)
"""


def test_sigterm_stops_a_query_and_removes_its_spill_directory(tmp_path, spill_root):
    run_dir = _make_run(tmp_path / "run")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(run_dir), str(spill_root), ENDLESS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT / "src")},
    )
    try:
        assert child.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 30
        while not list(spill_root.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(spill_root.iterdir()), "the query never made its spill directory"
        time.sleep(0.5)  # DuckDB is sorting now
        child.send_signal(signal.SIGTERM)
        code = child.wait(timeout=30)
    finally:
        child.kill()
        child.wait()
    assert code == 128 + signal.SIGTERM, child.stderr.read()
    assert list(spill_root.iterdir()) == []


def test_markup_in_the_sql_of_a_failed_query_is_printed_as_written(tmp_path):
    run_dir = _make_run(tmp_path / "run")
    for sql in ('SELECT "[/bold]" FROM scores', 'SELECT "[red]x[/red]" FROM scores'):
        result = CliRunner().invoke(app, ["query", str(run_dir), sql])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: query failed"), result.output
        assert ("[/bold]" if "bold" in sql else "[red]x[/red]") in lines[0], lines[0]
