"""The work of each stage: plain functions of the run directory and JSON-able args.

Every function here has the signature ``function(root, args, reporter) -> record``:
it reads the files its args name (relative to ``root``), writes its outputs
atomically, and returns a small JSON-able record for the manifest. Nothing here
holds state between calls, so an executor may run each one in any process that
sees ``root``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from mnemoscope.analysis import correlation_table, detection_table
from mnemoscope.analysis.fits import with_fit
from mnemoscope.analysis.influence_eval import LdsData, influence_eval_table
from mnemoscope.config import DatasetConfig
from mnemoscope.data import (
    Dataset,
    corrupt,
    insert_canaries,
    prepare,
    split_sources,
    undersample,
)
from mnemoscope.errors import ConfigError, UserError
from mnemoscope.estimator import REGISTRY, Estimator
from mnemoscope.report import render_report
from mnemoscope.runner.progress import Reporter
from mnemoscope.store import (
    CORRELATIONS,
    DETECTION,
    EXAMPLES,
    INFLUENCE,
    INFLUENCE_EVAL,
    SCORES,
    TABLES,
    write_parquet,
    write_safetensors,
)
from mnemoscope.store.atomic import atomic_path
from mnemoscope.store.tables import to_arrow, without_fit
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, TrainedEnsemble, derive_seed, train_ensemble
from mnemoscope.train.dp import privacy_record

Args = dict[str, Any]
# seed streams of the data stage's plantings (see runner.plan for the others)
_CANARIES, _UNDERSAMPLE, _SOURCES, _CORRUPTIONS = 5, 6, 7, 8


def load_dataset(root: Path, data: Args) -> Dataset:
    """The dataset a data stage wrote: ``data`` holds name, kind, n_classes and file;
    :class:`DataError` for one it did not write, whatever its digest (naming the file, or
    what :meth:`Dataset.validate` finds wrong with its tensors)."""
    from safetensors import SafetensorError

    from mnemoscope.errors import DataError

    path = Path(root) / data["file"]
    try:
        tensors = load_file(str(path))
        dataset = Dataset.from_tensors(data["name"], data["kind"], data["n_classes"], tensors)
    except (SafetensorError, KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path}: not a dataset file this run wrote ({error})") from None
    return dataset


def load_ensembles(root: Path, ensembles: dict[str, list[str]]) -> dict[str, TrainedEnsemble]:
    """Each role's ensemble, its parts concatenated in model order."""
    return {
        role: TrainedEnsemble.load_parts([Path(root) / f for f in files])
        for role, files in ensembles.items()
    }


def estimator_from(method: Args) -> Estimator:
    """A fresh estimator of the registered method named in its config entry."""
    cls = REGISTRY.get(method["method"])
    if cls is None:
        raise ConfigError(
            f"unknown method '{method['method']}'; known: {', '.join(sorted(REGISTRY))}"
        )
    return cls(cls.config_class.model_validate(method))


def require_finite(values: np.ndarray, what: str, allowed_nan: float = 0.0) -> None:
    """Stop the run (a :class:`UserError` the executor prefixes with the stage's name)
    when ``values`` hold an infinity, or more NaN than the fraction ``allowed_nan``."""
    values = np.asarray(values, dtype=np.float64)
    infinite = int(np.isinf(values).sum())
    missing = int(np.isnan(values).sum())
    if infinite or missing > allowed_nan * values.size:
        hint = (
            "did training diverge? a lower train.lr or fewer epochs may help"
            if infinite or not allowed_nan
            else "too few models leave most examples without an estimate; raise n_models"
        )
        raise UserError(f"{infinite + missing} of {values.size} {what} are not finite ({hint})")


def build_data(root: Path, args: Args, reporter: Reporter) -> Args:
    ds = DatasetConfig.model_validate(args["dataset"])
    dataset = prepare(
        ds.name,
        seed=args["seed"],
        label_noise=ds.label_noise,
        test_fraction=ds.test_fraction,
        n_samples=ds.n_samples,
        source=ds.source,
    )
    # each planting avoids what the earlier ones planted; see mnemoscope.data.corruptions
    if ds.undersample is not None:
        u = ds.undersample
        dataset = undersample(dataset, u.class_, u.keep, derive_seed(args["seed"], _UNDERSAMPLE))
    if ds.sources is not None:
        seed = derive_seed(args["seed"], _SOURCES)
        dataset = split_sources(dataset, ds.sources.noisy_fraction, ds.sources.label_noise, seed)
    if ds.corruptions is not None:
        c = ds.corruptions
        dataset = corrupt(
            dataset,
            seed=derive_seed(args["seed"], _CORRUPTIONS),
            **c.fractions(),
            noise_std=c.noise_std,
            occlusion_size=c.occlusion_size,
            epsilon=c.epsilon,
        )
    if ds.canaries is not None:
        c = ds.canaries
        seed = derive_seed(args["seed"], _CANARIES)
        dataset = insert_canaries(dataset, c.n, c.class_, seed, c.fraction, c.strength)
    write_safetensors(Path(root) / args["file"], dataset.tensors())
    return {
        "dataset": {
            "kind": dataset.kind,
            "input_shape": list(dataset.input_shape),
            "n_classes": dataset.n_classes,
            "n_train": dataset.n_train,
            "n_test": dataset.n_test,
            "n_mislabeled": int(dataset.is_mislabeled.sum()),
            "n_canaries": int(dataset.is_canary.sum()),
            "label_noise": ds.label_noise,
            "n_noisy_input": int(dataset.is_noisy_input.sum()),
            "n_occluded": int(dataset.is_occluded.sum()),
            "n_adversarial": int(dataset.is_adversarial.sum()),
            "n_undersampled_kept": (
                int(dataset.is_undersampled.sum()) if ds.undersample is not None else None
            ),
            "n_noisy_source": int((dataset.source == "noisy").sum()),
            "fingerprint": dataset.fingerprint,
        }
    }


def train_part(root: Path, args: Args, reporter: Reporter) -> Args:
    dataset = load_dataset(root, args["dataset"])
    masks = load_file(str(Path(root) / args["spec"]))["masks"]
    config = TrainConfig.model_validate(args["train"])
    start, stop = args["models"]
    ensemble = Path(args["output"]).stem.split("__")[-1]  # the stem repeats dataset and arch
    label = f"train {dataset.name}/{args['arch']}/{ensemble} ({stop - start} models)"
    with reporter.task(label, (stop - start) * config.epochs) as advance:
        trained = train_ensemble(
            args["arch"],
            dataset,
            masks,
            config,
            seed=args["seed"],
            checkpoint_epochs=args["checkpoint_epochs"],
            init=args["init"],
            order=args["order"],
            keep_initial=args["keep_initial"],
            models=range(start, stop),
            device=args["device"],
            progress=advance,
            arch_options=args["arch_options"],
        )
    require_finite(trained.train_logits.numpy(), "final logits")
    trained.save(Path(root) / args["output"])
    record = {"models": [start, stop], "fit": training_fit(trained, dataset)}
    if config.dp is not None:  # the accountant's ε of these models, from Opacus
        record["privacy"] = privacy_record(
            config.dp, trained.masks, config.batch_size, config.epochs
        )
    return record


def training_fit(trained: TrainedEnsemble, dataset: Dataset) -> Args:
    """How well the models fit the labels they were trained on (their own subsets):
    final accuracy over every (model, example in its subset) pair, overall and on the
    flipped examples. Memorization scores mean little when the models cannot fit."""
    right = trained.train_logits.argmax(-1) == dataset.y_train  # [K, n]
    seen = trained.masks
    flipped = seen & dataset.is_mislabeled
    return {
        "in_subset_accuracy": float(right[seen].double().mean()),
        "in_subset_accuracy_flipped": (
            float(right[flipped].double().mean()) if bool(flipped.any()) else None
        ),
    }


def _inputs(root: Path, args: Args) -> tuple[Estimator, dict[str, TrainedEnsemble], Dataset, Task]:
    """A fresh estimator and what it is fitted on: its ensembles, the dataset, the task."""
    estimator = estimator_from(args["method"])
    ensembles = load_ensembles(root, args["ensembles"])
    return estimator, ensembles, load_dataset(root, args["dataset"]), Task(**args["task"])


def _fitted(root: Path, args: Args) -> tuple[Estimator, Dataset]:
    """The estimator of ``args``, fitted, or restored from its cached fit."""
    estimator, ensembles, dataset, task = _inputs(root, args)
    if "fit" in args:
        state = load_file(str(Path(root) / args["fit"]))
        estimator.load_fitted(state, ensembles, dataset, task, args["device"])
    else:
        estimator.fit(ensembles, dataset, task, args["device"])
    return estimator, dataset


def fit_estimator(root: Path, args: Args, reporter: Reporter) -> Args:
    estimator, ensembles, dataset, task = _inputs(root, args)
    with reporter.task(f"fit {dataset.name}/{args['arch']}/{estimator.name}", None):
        estimator.fit(ensembles, dataset, task, args["device"])
    write_safetensors(Path(root) / args["output"], estimator.fitted_state())
    return {}


def score_estimator(root: Path, args: Args, reporter: Reporter) -> Args:
    with reporter.task(
        f"score {args['dataset']['name']}/{args['arch']}/{args['method']['method']}", None
    ):
        estimator, dataset = _fitted(root, args)
        scores = estimator.score()
    # some estimators leave a few examples without a score (e.g. never held out)
    require_finite(scores.score, "scores", allowed_nan=estimator.max_nan_fraction)
    frame = scores.frame(dataset.name, args["arch"], args["seed"])
    write_parquet(Path(root) / args["output"], frame, without_fit(SCORES))
    for table, file in args.get("tables", {}).items():
        rows = estimator.table_rows(table).assign(dataset=dataset.name, arch=args["arch"])
        write_parquet(Path(root) / file, rows, without_fit(TABLES[table]))
    return {}


def _targets(dataset: Dataset, targets: Args) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Inputs, labels and ids of the config's targets: the first ``n`` of the split."""
    split, n = targets["split"], targets["n"]
    x, y, ids = (
        (dataset.x_test, dataset.y_test, dataset.test_ids)
        if split == "test"
        else (dataset.x_train, dataset.y_train, dataset.train_ids)
    )
    return x[:n], y[:n], ids[:n].numpy()


def target_influence(root: Path, args: Args, reporter: Reporter) -> Args:
    """Train×target influence of one attributor as long-format rows, streamed to disk one
    block at a time (a row group per block, rows sorted by training example, then target,
    within it): memory stays that of one block whatever n × n_targets is."""
    estimator, dataset = _fitted(root, args)
    x, y, ids = _targets(dataset, args["targets"])
    train_ids = dataset.train_ids.numpy()
    label = f"influence {dataset.name}/{args['arch']}/{estimator.name} on {len(ids)} targets"
    constant = {
        "dataset": dataset.name,
        "arch": args["arch"],
        "seed": args["seed"],
        "method": estimator.name,
    }
    rows_written = 0
    with (
        reporter.task(label, None),
        atomic_path(Path(root) / args["output"]) as tmp,
        pq.ParquetWriter(tmp, INFLUENCE) as writer,
    ):
        for block in estimator.influence(x, y, args["targets"]["memory_mb"] * 2**20):
            require_finite(block.values.numpy(), "train×target influences")
            rows, cols = np.meshgrid(train_ids[block.train], ids[block.targets], indexing="ij")
            frame = pd.DataFrame(
                {
                    "train_id": rows.ravel(),
                    "target_id": cols.ravel(),
                    "score": block.values.numpy().ravel(),
                    **constant,
                }
            )
            writer.write_table(to_arrow(frame, INFLUENCE))
            rows_written += len(frame)
    return {"targets": len(ids), "rows": rows_written}


def _stream_concat(root: Path, files: list[str], output: str, schema) -> None:
    """Concatenate Parquet ``files`` into ``output`` one row group at a time."""
    with (
        atomic_path(Path(root) / output) as tmp,
        pq.ParquetWriter(tmp, schema) as writer,
    ):
        for file in files:
            source = pq.ParquetFile(Path(root) / file)
            for group in range(source.num_row_groups):
                writer.write_table(source.read_row_group(group).cast(schema))
        if not files:
            writer.write_table(schema.empty_table())


def _concat(root: Path, files: list[str], schema) -> pd.DataFrame:
    parts = [pd.read_parquet(Path(root) / f) for f in files]
    if not parts:
        return pd.DataFrame({name: [] for name in schema.names})
    return pd.concat(parts, ignore_index=True)


def collect_tables(root: Path, args: Args, reporter: Reporter) -> Args:
    examples = pd.concat(
        [load_dataset(root, d).examples_frame() for d in args["datasets"]], ignore_index=True
    )
    write_parquet(Path(root) / "examples.parquet", examples, EXAMPLES)
    fits = pd.read_parquet(Path(root) / "fits.parquet")
    scores = with_fit(_concat(root, args["scores"], SCORES), fits)
    write_parquet(Path(root) / "scores.parquet", scores, SCORES)
    _stream_concat(root, args["influence"], "influence.parquet", INFLUENCE)
    for table, files in args["parts"].items():
        schema = TABLES[table]
        rows = with_fit(_concat(root, files, schema), fits)
        write_parquet(Path(root) / f"{table}.parquet", rows, schema)
    return {}


def analyse(root: Path, args: Args, reporter: Reporter) -> Args:
    root = Path(root)
    cfg = args["analysis"]
    scores = pd.read_parquet(root / "scores.parquet")
    examples = pd.read_parquet(root / "examples.parquet")
    influence = pd.read_parquet(root / "influence.parquet")
    lds_data = {
        (part["dataset"], part["arch"]): _lds_data(root / part["file"])
        for part in args.get("lds", [])
    }
    bootstrap = {"n_bootstrap": cfg["n_bootstrap"], "confidence": cfg["confidence"]}
    with reporter.task("analysis: bootstrap CIs", None):
        correlations = correlation_table(scores, **bootstrap, seed=args["seed"])
        detection = detection_table(scores, examples)
        evaluation = influence_eval_table(
            scores,
            examples,
            influence if not influence.empty else None,
            lds_data,
            **bootstrap,
            seed=args["seed"],
        )
    fits = pd.read_parquet(root / "fits.parquet")
    write_parquet(root / "correlations.parquet", with_fit(correlations, fits), CORRELATIONS)
    write_parquet(root / "detection.parquet", with_fit(detection, fits), DETECTION)
    write_parquet(root / "influence_eval.parquet", with_fit(evaluation, fits), INFLUENCE_EVAL)
    return {}


def _lds_data(path: Path) -> LdsData:
    tensors = load_file(str(path))
    return LdsData(
        **{k: tensors[k].numpy() for k in ("masks", "measured", "train_ids", "target_ids")}
    )


def lds_margins(root: Path, args: Args, reporter: Reporter) -> Args:
    """The LDS ground truth of one (dataset, arch): each target's margin under the models
    trained on each LDS subset, averaged over the ``repeats`` models of a subset."""
    dataset = load_dataset(root, args["dataset"])
    (trained,) = load_ensembles(root, {"lds": args["ensemble"]}).values()
    x, y, ids = _targets(dataset, args["targets"])
    with reporter.task(f"lds {dataset.name}/{args['arch']}: margins of {len(ids)} targets", None):
        logits = trained.logits(x, args["device"]).cpu().double()  # [K, n_t, C]
        margins = Task.measure(logits, y.expand(logits.shape[0], -1), "margin")
    repeats = args["repeats"]
    measured = margins.view(-1, repeats, len(ids)).mean(1)  # rows j·R + r: subset j, model r
    masks = trained.masks.view(-1, repeats, dataset.n_train)[:, 0]
    write_safetensors(
        Path(root) / args["output"],
        {
            "masks": masks.contiguous(),
            "measured": measured.contiguous(),
            "train_ids": dataset.train_ids,
            "target_ids": torch.as_tensor(ids),
        },
    )
    return {"subsets": int(masks.shape[0]), "targets": len(ids)}


def render(root: Path, args: Args, reporter: Reporter) -> Args:
    render_report(Path(root))
    return {}
