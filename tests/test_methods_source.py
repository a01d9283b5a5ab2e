"""`mnemoscope methods NAME` prints the file and line of the method's class (one hop from a
method to its code), for every registered method."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from mnemoscope.cli import app
from mnemoscope.config import StudyConfig  # noqa: F401  (registers every estimator)
from mnemoscope.estimator import REGISTRY


def test_methods_name_prints_the_source_file_of_every_method():
    runner = CliRunner()
    for name, cls in sorted(REGISTRY.items()):
        result = runner.invoke(app, ["methods", name], terminal_width=400)
        assert result.exit_code == 0, result.output
        found = re.search(r"^source: (.+\.py):(\d+)$", result.output, flags=re.M)
        assert found, result.output[-300:]
        path, line = Path(found.group(1)), int(found.group(2))
        assert path.is_file() and path.stem == cls.__module__.rsplit(".", 1)[-1]
        assert f"class {cls.__name__}(" in path.read_text().splitlines()[line - 1]
