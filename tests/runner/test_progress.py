"""Progress of long stages: a line at intervals off a terminal, no `0/?` on one."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console

from mnemoscope.runner.progress import Reporter


def _piped() -> tuple[Reporter, io.StringIO]:
    buffer = io.StringIO()
    return Reporter(Console(file=buffer, width=200), heartbeat=0.05), buffer


def test_piped_long_stage_prints_progress_lines():
    reporter, buffer = _piped()
    with reporter.task("train digits/mlp/ensemble-ab12 (4 models)", 8) as advance:
        for _ in range(3):
            advance(1)
            time.sleep(0.08)
    lines = [line for line in buffer.getvalue().splitlines() if line]
    assert len(lines) >= 2
    assert all(
        line.startswith("running train digits/mlp/ensemble-ab12 (4 models) (") for line in lines
    )
    assert any("/8, " in line for line in lines) and lines[-1].endswith(" s)")


def test_piped_short_stage_prints_nothing():
    buffer = io.StringIO()
    reporter = Reporter(Console(file=buffer, width=200), heartbeat=5.0)
    with reporter.task("fit digits/mlp/tracin", None):
        pass
    assert buffer.getvalue() == ""


def test_piped_stage_without_total_prints_elapsed_only():
    reporter, buffer = _piped()
    with reporter.task("score digits/mlp/tracin", None):
        time.sleep(0.12)
    lines = buffer.getvalue().splitlines()
    assert lines and all(
        re.fullmatch(r"running score digits/mlp/tracin \(\d+ s\)", x) for x in lines
    )


def test_terminal_stage_without_total_shows_no_unknown_count():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    with Reporter(console).task("fit digits/mlp/tracin", None):
        time.sleep(0.3)
    shown = buffer.getvalue()
    assert "fit digits/mlp/tracin" in shown and "/?" not in shown and "0:00:00" in shown


def test_quiet_prints_nothing():
    buffer = io.StringIO()
    with Reporter(Console(file=buffer), quiet=True, heartbeat=0.01).task("x", 3) as advance:
        advance(1)
        time.sleep(0.05)
    assert buffer.getvalue() == ""
