"""What a study costs: wall time of `mnemoscope study` (default study, `--quick` or
`--demo` size) and its stage times from the manifest, by kind of stage and by
architecture, with the machine and its load average.

    .venv/bin/python bench/study_cost.py [--quick | --demo] [--out DIR]

A run directory that already holds a finished run of the same config costs nothing:
by default a fresh temporary directory is used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true")
    size.add_argument("--demo", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="study-cost-")) / "run"
    command = ["demo"] if args.demo else ["study"]
    if args.quick:
        command.append("--quick")
    exe = Path(sys.executable).with_name("mnemoscope")
    load_before = os.getloadavg()
    start = time.perf_counter()
    subprocess.run([str(exe), *command, "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    manifest = json.loads((out / "manifest.json").read_text())
    by_kind: dict[str, float] = defaultdict(float)
    by_arch: dict[str, float] = defaultdict(float)
    for name, record in manifest["stages"].items():
        parts = name.split("/")
        by_kind[parts[0]] += record["seconds"]
        if len(parts) >= 3:
            by_arch[parts[2]] += record["seconds"]
    print(f"mnemoscope {' '.join(command)}: {wall:.0f} s wall ({wall / 60:.1f} min)")
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cpus; torch threads: the default")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    print("stage seconds by kind:")
    for kind, seconds in sorted(by_kind.items(), key=lambda item: -item[1]):
        print(f"  {kind:15s} {seconds:8.1f}")
    print("stage seconds by arch (train, fit, scores, removal, summarization):")
    for arch, seconds in sorted(by_arch.items(), key=lambda item: -item[1]):
        print(f"  {arch:15s} {seconds:8.1f}")


if __name__ == "__main__":
    main()
