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
Agreement: the engine's final training logits against the baseline's (same initial weights
and data order): equal to float rounding in fp32, within bf16's rounding in bf16.
"""

from __future__ import annotations

import os

import peerlib
import torch
from ensemble_training import sequential

from mnemoscope.data import prepare
from mnemoscope.train import TrainConfig, subset_masks, train_ensemble

MODELS, EPOCHS, BATCH = 64, 10, 128
TARGETS = {"float32": 10.0, "bfloat16": 30.0}


def run(repeats: int, device: str) -> list[dict]:
    dataset = prepare("digits", seed=0, label_noise=0.1)
    config = TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=0.05)
    masks = subset_masks(MODELS, dataset.n_train, 0.7, seed=0)
    configs = {p: config.model_copy(update={"precision": p}) for p in TARGETS}
    amx = "amx_bf16" in peerlib.cpu_flags()
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
            for precision, target in TARGETS.items():
                rows.append(
                    {
                        "peer": "sequential torch.optim loop",
                        "method": f"train_ensemble {precision}, {MODELS} mlps, batch {BATCH}",
                        "agreement": "final training logits, engine vs loop",
                        "target": target,
                        "notes": (
                            f"{threads} torch thread(s) each side; device {device}; "
                            f"CPU amx_bf16={amx}"
                        ),
                        **peerlib.ratio(times["sequential"], times[precision]),
                        **peerlib.agreement(logits[precision], logits["sequential"]),
                    }
                )
    finally:
        torch.set_num_threads(caller_threads)
    return rows
