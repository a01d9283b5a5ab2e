"""Progress display for long stages: rich bars on a terminal, a line every
``HEARTBEAT_SECONDS`` when the output is piped or logged, silence in tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from mnemoscope.meter import metering

HEARTBEAT_SECONDS = 10.0
"""Off a terminal, a stage running longer than this prints a progress line this often."""


def examples(done: float, end: str = "") -> str:
    """``"12,345 examples"`` (and ``end``) once some are done, else nothing."""
    return f"{done:,.0f} examples{end}" if done else ""


class ExamplesColumn(ProgressColumn):
    """The examples an estimator has processed so far (a stage without a total)."""

    def render(self, task) -> Text:
        return Text(examples(task.completed), style="progress.download")


class Reporter:
    """Where the runner says what it does; ``quiet`` prints nothing."""

    def __init__(
        self,
        console: Console | None = None,
        quiet: bool = False,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.heartbeat = heartbeat

    def say(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False, soft_wrap=True)

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A progress bar of ``total`` units; yields ``advance(units)``. Without a total
        (a fit or score stage) the units are the examples the estimator reports through
        :func:`mnemoscope.meter.count` while it runs."""
        if self.quiet:
            yield lambda units: None
            return
        with self._display(description, total) as advance:
            if total:
                yield advance
            else:
                with metering(advance):
                    yield advance

    @contextmanager
    def _display(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        if not (self.console.is_terminal or self.console.is_jupyter):  # a notebook draws bars
            with self._heartbeat(description, total) as advance:
                yield advance
            return
        # without a total there is no bar to fill: a spinner, the examples done and the
        # time, never "0/?"
        measured = [BarColumn(), MofNCompleteColumn()] if total else [ExamplesColumn()]
        remaining = [TimeRemainingColumn()] if total else []
        columns = [
            SpinnerColumn(),
            TextColumn("{task.description}"),
            *measured,
            TimeElapsedColumn(),
            *remaining,
        ]
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task(description, total=total)
            yield lambda units: progress.advance(task, units)

    @contextmanager
    def _heartbeat(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """Print ``description: done/total (seconds)`` every ``heartbeat`` seconds while the
        stage runs (nothing for a stage that ends sooner): logs show a stage is alive."""
        done = [0]
        started = time.monotonic()
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat):
                elapsed = time.monotonic() - started
                units = f"{done[0]}/{total}, " if total else examples(done[0], ", ")
                self.say(f"running {description} ({units}{elapsed:.0f} s)")

        thread = threading.Thread(target=beat, name="mnemoscope-progress", daemon=True)
        thread.start()
        try:
            yield lambda units: done.__setitem__(0, done[0] + units)
        finally:
            stop.set()
            thread.join()
