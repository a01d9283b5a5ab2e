"""mnemoscope against each peer library on the same checkpoints, every row in one process:
agreement first (Spearman/Pearson, max relative difference after the documented scale
factors), then the time ratio peer / ours (> 1: we are faster) from interleaved
repetitions, median and range, one torch thread each side unless a row says otherwise.

    .venv/bin/python bench/peers.py [--rows ekfac,trak,dattri,captum,trainer] [--repeats 5]
                                    [--device cpu|cuda] [--json FILE]

The peers (Kronfluence, traker, dattri, Captum, Opacus) are installed by this script into
``.venv-peers`` on first use (:mod:`peerlib`), never as mnemoscope's dependencies. Each row
is a module ``bench/peers_<row>.py`` whose ``run(repeats, device)`` returns its rows.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peerlib  # noqa: E402

ROWS = ["ekfac", "trak", "dattri", "captum", "trainer"]
COLUMNS = ["peer", "method", "agreement", "ratio", "target", "met", "notes"]


def _cell(row: dict, column: str) -> str:
    if column == "ratio":
        return f"{row['ratio']:.2f}× ({row['ratio_min']:.2f}–{row['ratio_max']:.2f})"
    if column == "target":
        return "— (not on this CPU)" if row["target"] is None else f"≥ {row['target']:g}×"
    if column == "met":
        if row["target"] is None:
            return "n/a"
        return "yes" if row["ratio"] >= row["target"] else "**no**"
    return str(row.get(column, ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    peerlib.reexec_in_peer_venv()
    import torch

    torch.set_num_threads(1)
    machine = peerlib.machine()
    print(json.dumps(machine), flush=True)
    results: list[dict] = []
    for name in args.rows.split(","):
        module = importlib.import_module(f"peers_{name}")
        for row in module.run(args.repeats, args.device):
            results.append(row)
            print(json.dumps(row), flush=True)
    machine["load_average_end"] = peerlib.machine()["load_average"]
    print("\n| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for row in results:
        print("| " + " | ".join(_cell(row, c) for c in COLUMNS) + " |")
    print(f"\nmachine: {machine}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
