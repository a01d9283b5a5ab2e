"""Row ``trainer`` of ``bench/peers.py``: the subset-ensemble trainer against a sequential
torch.optim loop (:func:`ensemble_training.sequential`, torch.optim defaults), digits mlp,
64 models on 70% subsets, batch 128, 10 epochs, SGD (lr 0.05, momentum 0.9).

Both sides record the same things (each example's loss and correctness at each
presentation, the final logits on the training pool and the test split). The engine runs
in ``precision: float32`` and ``bfloat16``; the baseline in fp32. Each pair is timed at
the same torch thread count on both sides: 1 (what ``peers.py`` sets), or each count in
``PEERS_TRAINER_THREADS`` (e.g. ``1,2``); the row restores the caller's count afterwards.
On a machine whose cores are busy with other work, more threads than free cores make
both sides many times slower (OpenMP workers wait on each other): use 1 there.
The bf16 target is the issue's for CPUs with AMX (and GPUs): on a CPU without it the row
has no target (PyTorch emulates bf16 there, and the engine warns that it does).
The notes put the target in FLOPs: the training FLOP rate the target would need, the rate
the engine reached, and the machine's batched-GEMM rate at the engine's shape, precision
and thread count (no training can run all its FLOPs faster than that).
Agreement: the engine's final training logits against the baseline's (same initial weights
and data order): equal to float rounding in fp32, within bf16's rounding in bf16.
"""

from __future__ import annotations

import os
import statistics
import time

import peerlib
import torch
from ensemble_training import sequential

from mnemoscope.data import prepare
from mnemoscope.train import TrainConfig, init_module, subset_masks, train_ensemble
from mnemoscope.train.ensemble import PRECISION

MODELS, EPOCHS, BATCH = 64, 10, 128
TARGETS = {"float32": 10.0, "bfloat16": 30.0}


def gemm_rate(dtype: torch.dtype, device: str, repeats: int = 50) -> float:
    """GFLOP/s of a ``[MODELS, BATCH, 128] × [MODELS, 128, 128]`` batched matmul (the
    engine's largest GEMM shape) at the current thread count: what the training FLOPs
    could reach at best if all of them ran at that rate."""
    a = torch.randn(MODELS, BATCH, 128, device=device, dtype=dtype)
    b = torch.randn(MODELS, 128, 128, device=device, dtype=dtype)
    for _ in range(5):
        torch.bmm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.bmm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * MODELS * BATCH * 128 * 128 / statistics.median(times) / 1e9


def training_flops(masks: torch.Tensor, n_params: int) -> float:
    """``6·P`` FLOPs per presentation (forward 2P, backward 4P) over every model's epochs."""
    return 6.0 * n_params * EPOCHS * float(masks.sum())


def run(repeats: int, device: str) -> list[dict]:
    dataset = prepare("digits", seed=0, label_noise=0.1)
    config = TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=0.05)
    masks = subset_masks(MODELS, dataset.n_train, 0.7, seed=0)
    configs = {p: config.model_copy(update={"precision": p}) for p in TARGETS}
    amx = "amx_bf16" in peerlib.cpu_flags()
    n_params = sum(
        p.numel()
        for p in init_module("mlp", dataset.input_shape, dataset.n_classes, 0, 0).parameters()
    )
    flops = training_flops(masks, n_params)
    caller_threads = torch.get_num_threads()
    rows = []
    try:
        for threads in [int(t) for t in os.environ.get("PEERS_TRAINER_THREADS", "1").split(",")]:
            torch.set_num_threads(threads)
            logits = {
                "sequential": sequential(dataset, masks, config, 0, torch.device(device), None)
            }
            sides = {
                "sequential": lambda: sequential(
                    dataset, masks, config, 0, torch.device(device), None
                )
            }
            for precision, cfg in configs.items():
                logits[precision] = train_ensemble(
                    "mlp", dataset, masks, cfg, seed=0, device=device
                ).train_logits
                sides[precision] = lambda cfg=cfg: train_ensemble(
                    "mlp", dataset, masks, cfg, seed=0, device=device
                )
            times = peerlib.interleaved(sides, repeats)
            rates = {p: gemm_rate(PRECISION[p], device) for p in TARGETS}
            for precision, target in TARGETS.items():
                needed = flops / (statistics.median(times["sequential"]) / target) / 1e9
                rows.append(
                    {
                        "peer": "sequential torch.optim loop",
                        "method": f"train_ensemble {precision}, {MODELS} mlps, batch {BATCH}",
                        "agreement": "final training logits, engine vs loop",
                        # the bf16 target is for CPUs with AMX (or a GPU)
                        "target": target
                        if precision == "float32" or amx or device == "cuda"
                        else None,
                        "notes": (
                            f"{threads} torch thread(s) each side; device {device}; "
                            f"CPU amx_bf16={amx}; {target:g}× needs {needed:.0f} GFLOP/s of "
                            f"training FLOPs (6P per presentation), the engine ran at "
                            f"{flops / statistics.median(times[precision]) / 1e9:.0f}; this "
                            f"machine's {precision} bmm {MODELS}×{BATCH}×128×128 runs at "
                            f"{rates[precision]:.0f}"
                        ),
                        **peerlib.ratio(times["sequential"], times[precision]),
                        **peerlib.agreement(logits[precision], logits["sequential"]),
                    }
                )
    finally:
        torch.set_num_threads(caller_threads)
    return rows
