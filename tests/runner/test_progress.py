"""Progress of long stages: a line at intervals off a terminal, no `0/?` on one."""

from __future__ import annotations

import io
import re
import time
from types import SimpleNamespace

import torch
from rich.console import Console
from torch import nn

from mnemoscope.influence.gradients import per_example_grads
from mnemoscope.influence.layerwise import LayerwiseGradients
from mnemoscope.meter import count, metering
from mnemoscope.runner.progress import ExamplesColumn, Reporter


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


def _mlp_and_data(n: int = 40):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    return module, dict(module.named_parameters()), torch.randn(n, 5), torch.randint(0, 3, (n,))


def _sq_norms(module, params, x, y, names, batch_size=256):
    """Layer-wise squared gradient norms, batch by batch, as the attributors take them."""
    factors = LayerwiseGradients(module, names)
    return [
        factors(params, xb, yb).sq_norms()
        for xb, yb in zip(x.split(batch_size), y.split(batch_size))
    ]


def test_examples_column_counts_once_some_are_done():
    column = ExamplesColumn()
    task = SimpleNamespace(completed=12345)
    assert column.render(task).plain == "12,345 examples"
    assert column.render(SimpleNamespace(completed=0)).plain == ""


def test_an_estimators_batches_reach_the_stage_line_off_a_terminal():
    """The layer-wise and vmap(grad) loops report their examples: a piped score stage
    shows how many it has done, and that is every example of every pass."""
    module, params, x, y = _mlp_and_data()
    reporter, buffer = _piped()
    with reporter.task("score toy/mlp/grad_dot", None):
        for _ in range(2):
            _sq_norms(module, params, x, y, list(params), batch_size=10)
            time.sleep(0.12)
    lines = buffer.getvalue().splitlines()
    assert re.fullmatch(r"running score toy/mlp/grad_dot \(80 examples, \d+ s\)", lines[-1])


def test_counts_are_per_pass_and_only_while_metered():
    module, params, x, y = _mlp_and_data()
    seen: list[int] = []
    with metering(seen.append):
        list(per_example_grads(module, params, x, y, list(params), batch_size=16))
        _sq_norms(module, params, x, y, ["0.weight"], batch_size=16)
    assert seen == [16, 16, 8, 16, 16, 8]
    per_example_grads(module, params, x, y, list(params))  # nothing metering: no error
    count(5)
    assert sum(seen) == 80


def test_a_stage_with_a_total_is_not_metered_in_examples():
    """Epoch units and example units are not mixed: a training stage's bar counts epochs."""
    module, params, x, y = _mlp_and_data()
    reporter, buffer = _piped()
    with reporter.task("train toy/mlp (2 models)", 4) as advance:
        advance(1)
        _sq_norms(module, params, x, y, list(params))
        time.sleep(0.12)
    assert "1/4, " in buffer.getvalue().splitlines()[-1]
