"""Run hostile cases in this process, one result line (JSON) per case, for
``tests/data/test_hostile_files.py``: the caller starts it under an address-space limit.

argv[1]: a JSON file holding a list of cases ``{"name", "argv"}`` (the ``mnemoscope``
arguments) or ``{"name", "register": npz path}`` (``register_dataset`` on the arrays of
an .npz). Each case gets ``CASE_SECONDS``; a case that takes longer is reported as
``timeout``, and any exception that escapes the command as ``crash``.
"""

from __future__ import annotations

import json
import signal
import sys
import time

CASE_SECONDS = 60


class CaseTimeout(BaseException):
    """Raised by the alarm: a BaseException, so no ``except Exception`` swallows it."""


def _alarm(signum: int, frame: object) -> None:
    raise CaseTimeout


def _run(case: dict) -> dict:
    from typer.testing import CliRunner

    from mnemoscope.cli import app

    if "register" in case:
        import numpy as np

        from mnemoscope.api import register_dataset
        from mnemoscope.errors import UserError

        arrays = np.load(case["register"])
        try:
            register_dataset("hostile", (arrays["x"], arrays["y"]))
        except UserError as error:
            return {"code": 2, "output": f"error: {error}\n"}
        return {"code": 0, "output": ""}
    result = CliRunner().invoke(app, case["argv"])
    outcome = {"code": result.exit_code, "output": result.output}
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        outcome["crash"] = f"{type(result.exception).__name__}: {result.exception}"
    return outcome


def main() -> None:
    signal.signal(signal.SIGALRM, _alarm)
    with open(sys.argv[1]) as file:
        cases = json.load(file)
    for case in cases:
        started = time.monotonic()
        signal.alarm(CASE_SECONDS)
        try:
            outcome = _run(case)
        except CaseTimeout:
            outcome = {"code": None, "output": "", "crash": "timeout"}
        except BaseException as error:  # noqa: BLE001  (reported, not hidden: the test fails)
            outcome = {"code": None, "output": "", "crash": f"{type(error).__name__}: {error}"}
        finally:
            signal.alarm(0)
        outcome |= {"name": case["name"], "seconds": time.monotonic() - started}
        print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
