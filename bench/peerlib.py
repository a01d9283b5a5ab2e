"""What every side-by-side benchmark against a peer library shares: the peers' own virtual
environment (peers are installed by the benchmark only, never dependencies of mnemoscope),
interleaved timing, per-repetition ratios, agreement statistics and the machine's record.

The peers live in ``.venv-peers`` (ignored by git): torch 2.13.0 (the same build as
``.venv``), mnemoscope itself (editable) and the pinned peers below. ``ensure_peers()``
creates it on first use; a benchmark then re-runs itself under that interpreter.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / ".venv-peers"
PEERS = {
    "kronfluence": "1.0.1",
    "traker": "0.3.2",
    "dattri": "0.3.0",
    "captum": "0.9.0",
    "opacus": "1.6.0",
}


def peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


def ensure_peers() -> Path:
    """Create ``.venv-peers`` with torch 2.13.0, mnemoscope and the pinned peers (once)."""
    python = peer_python()
    stamp = PEER_VENV / ".installed"
    wanted = " ".join(f"{name}=={version}" for name, version in sorted(PEERS.items()))
    if stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"installing the peers into {PEER_VENV} (once): {wanted}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    constraints = PEER_VENV / "constraints.txt"
    constraints.write_text("torch==2.13.0\n")
    subprocess.run([*pip, "-c", str(constraints), "-e", str(ROOT), *wanted.split()], check=True)
    stamp.write_text(wanted)
    return python


def in_peer_venv() -> bool:
    return Path(sys.prefix).resolve() == PEER_VENV.resolve()


def reexec_in_peer_venv() -> None:
    """Run the calling script again under the peers' interpreter (with the same argv and
    this checkout's ``src`` first on the path), unless it already runs there."""
    if in_peer_venv():
        return
    python = ensure_peers()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "bench")]))
    sys.exit(subprocess.run([str(python), *sys.argv], env=env).returncode)


def interleaved(
    sides: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds of each side per repetition, the sides run in turn (a, b, a, b, ...) so that
    a change of load hits all of them; ``warmup`` untimed rounds first."""
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def ratio(peer: list[float], ours: list[float]) -> dict[str, float]:
    """Per-repetition ``peer / ours`` (> 1: we are faster): median, min and max."""
    ratios = [p / o for p, o in zip(peer, ours, strict=True)]
    return {
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ours_s": statistics.median(ours),
        "peer_s": statistics.median(peer),
    }


def agreement(ours: object, peer: object) -> dict[str, float]:
    """Spearman and Pearson correlation and the max relative difference (relative to the
    largest magnitude of the peer's values) of two score arrays of the same shape."""
    from scipy import stats

    a = np.asarray(ours, dtype=np.float64).ravel()
    b = np.asarray(peer, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: ours {a.shape}, peer {b.shape}")
    return {
        "spearman": float(stats.spearmanr(a, b).statistic),
        "pearson": float(stats.pearsonr(a, b).statistic),
        "max_rel_diff": float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)),
    }


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def machine() -> dict[str, object]:
    """What the figures were measured on: CPU model, AMX, threads, torch, load average."""
    import torch

    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "amx_bf16": "amx_bf16" in cpu_flags(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
    }


def influence_agreement(ours: tuple, peer: tuple, scale: float) -> tuple[dict[str, float], str]:
    """Agreement of ``(self-influence, train×target matrix)`` with the peer's after
    ``ours × scale`` (influence functions: the peers sum where we average, scale n): the
    train×target numbers of :func:`agreement` and the row's agreement text."""
    on_self = agreement(ours[0] * scale, peer[0])
    pairs = agreement(ours[1] * scale, peer[1])
    worst = max(on_self["max_rel_diff"], pairs["max_rel_diff"])
    text = (
        f"self Spearman {on_self['spearman']:.6f} Pearson {on_self['pearson']:.6f}; "
        f"pairwise Spearman {pairs['spearman']:.6f} Pearson {pairs['pearson']:.6f}; "
        f"ours × n = theirs (max rel diff {worst:.1e})"
    )
    return pairs, text
