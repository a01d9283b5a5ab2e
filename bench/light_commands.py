"""Start-up time of the commands that load no data: `mnemoscope --help`, `datasets`,
`archs`, `methods` (median of 11 runs of each, with the load average).

    .venv/bin/python bench/light_commands.py [SRC]   # SRC: a checkout's src/ to time
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPEATS = 11
COMMANDS = (["--help"], ["datasets"], ["archs"], ["methods"])


def main(src: str) -> None:
    env = {**os.environ, "PYTHONPATH": src}
    for command in COMMANDS:
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "mnemoscope", *command],
                env=env,
                stdout=subprocess.DEVNULL,
                check=True,
            )
            times.append(time.perf_counter() - start)
        print(
            f"{' '.join(command):10s} median {statistics.median(times):.2f} s "
            f"(min {min(times):.2f}, max {max(times):.2f})"
        )
    print("load average (1, 5, 15 min):", ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parents[1] / "src"))
