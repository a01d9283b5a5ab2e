"""Units of work an estimator reports while it runs, for the progress display.

Estimators stay free of any display: their batch loops call :func:`count` with the number
of examples a batch held, which does nothing unless a caller (the runner's
:class:`~mnemoscope.runner.progress.Reporter`) is :func:`metering` the current context. A
fit or score stage then shows the examples processed so far instead of a bare spinner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_SINK: ContextVar[Callable[[int], None] | None] = ContextVar("mnemoscope_meter", default=None)


def count(examples: int) -> None:
    """Report ``examples`` more examples processed (a no-op when nothing is metering)."""
    sink = _SINK.get()
    if sink is not None:
        sink(examples)


@contextmanager
def metering(advance: Callable[[int], None]) -> Iterator[None]:
    """Send every :func:`count` of this context (thread / task) to ``advance``."""
    token = _SINK.set(advance)
    try:
        yield
    finally:
        _SINK.reset(token)
