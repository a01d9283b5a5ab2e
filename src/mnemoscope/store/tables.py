"""The run's tables: exact column names and types (a contract other work relies on).

Each table is one Parquet file at the top of the run directory. Columns may be
added by later work; none may be renamed or dropped.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

EXAMPLES = pa.schema(
    [
        ("dataset", pa.string()),
        ("example_id", pa.int64()),
        ("split", pa.string()),  # 'train' | 'test'
        ("label", pa.int64()),  # the label the models were trained on (after noise)
        ("original_label", pa.int64()),
        ("is_mislabeled", pa.bool_()),
        ("is_canary", pa.bool_()),  # a planted canary (a unique feature and label)
        # planted input corruptions (training examples only; labels untouched)
        ("is_noisy_input", pa.bool_()),  # Gaussian noise added to the input
        ("is_occluded", pa.bool_()),  # a patch / segment / half of the features blanked
        ("is_adversarial", pa.bool_()),  # FGSM against the data stage's reference model
        ("source", pa.string()),  # 'main' (no sources) | 'clean' | 'noisy' | 'test'
        ("is_undersampled", pa.bool_()),  # its class was under-sampled (both splits)
    ]
)

SCORES = pa.schema(
    [
        ("dataset", pa.string()),
        ("arch", pa.string()),
        ("seed", pa.int64()),
        ("family", pa.string()),  # 'memorization' | 'influence'
        ("method", pa.string()),
        ("example_id", pa.int64()),
        ("score", pa.float64()),
        ("stderr", pa.float64()),  # nullable
        ("fit", pa.bool_()),  # False: the arch does not fit its data (see fits.parquet)
    ]
)

CORRELATIONS = pa.schema(
    [
        ("dataset", pa.string()),
        ("arch", pa.string()),
        ("method_a", pa.string()),
        ("method_b", pa.string()),
        ("statistic", pa.string()),  # 'spearman' | 'pearson' | 'kendall'
        ("value", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("n", pa.int64()),
        ("fit", pa.bool_()),  # False: the arch does not fit its data (see fits.parquet)
    ]
)

DETECTION = pa.schema(
    [
        ("dataset", pa.string()),
        ("arch", pa.string()),
        ("method", pa.string()),
        ("target", pa.string()),  # 'mislabeled'
        ("auc", pa.float64()),
        ("n_positive", pa.int64()),
        ("n_dropped", pa.int64()),  # training examples left out for a non-finite score
        ("fit", pa.bool_()),  # False: the arch does not fit its data (see fits.parquet)
    ]
)

INFLUENCE = pa.schema(
    [
        ("dataset", pa.string()),
        ("arch", pa.string()),
        ("seed", pa.int64()),
        ("method", pa.string()),
        ("train_id", pa.int64()),  # the training example i
        ("target_id", pa.int64()),  # the target t (a test or training example id)
        ("score", pa.float64()),  # influence of i on t; > 0: removing i would hurt t
    ]
)

ATTACKS = pa.schema(
    [
        ("dataset", pa.string()),
        ("arch", pa.string()),
        ("method", pa.string()),  # 'lira' | 'loss_attack'
        ("variant", pa.string()),  # 'online' | 'offline' | 'loss'
        ("auc", pa.float64()),
        ("tpr_at_0_1pct_fpr", pa.float64()),
        ("tpr_at_1pct_fpr", pa.float64()),
        ("n_models", pa.int64()),
        ("fit", pa.bool_()),  # False: the arch does not fit its data (see fits.parquet)
    ]
)

ATTACK_ROC = pa.schema(
    [
        ("dataset", pa.string()),
        ("arch", pa.string()),
        ("method", pa.string()),  # 'lira' | 'loss_attack'
        ("variant", pa.string()),  # 'online' | 'offline' | 'loss'
        ("fpr", pa.float64()),  # a point of the grid: 10 per decade from 1e-4 to 1
        ("tpr", pa.float64()),  # the highest TPR of a threshold with FPR <= fpr
        ("fit", pa.bool_()),  # False: the arch does not fit its data (see fits.parquet)
    ]
)
"""Columns of ``attack_roc.parquet``: each membership attack's ROC curve on a log grid."""

SCORE_PARTS = pa.schema(
    [
        ("dataset", pa.string()),
        ("arch", pa.string()),
        ("method", pa.string()),
        ("example_id", pa.int64()),
        ("part", pa.string()),  # a component of the method's score, e.g. 'indicator'
        ("value", pa.float64()),
        ("fit", pa.bool_()),  # False: the arch does not fit its data (see fits.parquet)
    ]
)

INFLUENCE_EVAL = pa.schema(
    [
        ("dataset", pa.string()),
        ("arch", pa.string()),
        ("method", pa.string()),
        # 'loo_pearson' | 'loo_spearman' (self-influence vs loo), 'loo_target_pearson' |
        # 'loo_target_spearman' (train×target vs loo), 'lds', 'mislabel_auc'
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("fit", pa.bool_()),  # False: the arch does not fit its data (see fits.parquet)
    ]
)
"""Columns of ``influence_eval.parquet``, one row per (dataset, arch, method, metric)."""

FITS = pa.schema(
    [
        ("dataset", pa.string()),
        ("arch", pa.string()),
        # the worst of the cell's ensembles: accuracy of its models on their own
        # training labels, and on the flipped ones among them (null without flips)
        ("in_subset_accuracy", pa.float64()),
        ("in_subset_accuracy_flipped", pa.float64()),
        ("fit", pa.bool_()),  # False: left out of the study's headline comparison
        ("fit_reason", pa.string()),  # why not ('' when fit)
    ]
)
"""Columns of ``fits.parquet``, one row per (dataset, arch)."""
OVERLAP = pa.schema(
    [
        ("dataset", pa.string()),
        ("arch", pa.string()),
        ("influence", pa.string()),  # the influence method (its top-k is A)
        ("memorization", pa.string()),  # the memorization method (its top-k is B)
        ("k", pa.float64()),  # fraction of the training set
        ("n_top", pa.int64()),  # max(1, round(k * n))
        ("jaccard", pa.float64()),  # |A ∩ B| / |A ∪ B|
        ("jaccard_low", pa.float64()),
        ("jaccard_high", pa.float64()),
        ("precision", pa.float64()),  # |A ∩ B| / |A|
        ("precision_low", pa.float64()),
        ("precision_high", pa.float64()),
        ("n", pa.int64()),  # examples both methods scored
        ("fit", pa.bool_()),  # the cell's models fit their data
        ("n_dropped", pa.int64()),  # examples of the cell left out for a non-finite score
    ]
)
"""Columns of ``overlap.parquet``: top-k agreement of influence and memorization methods."""

CROSS_ARCH = pa.schema(
    [
        ("dataset", pa.string()),
        ("comparison", pa.string()),  # 'architectures' | 'proxy'
        ("method", pa.string()),
        ("reference", pa.string()),  # the proxy's reference method; null for 'architectures'
        ("arch_a", pa.string()),
        ("arch_b", pa.string()),  # == arch_a for 'proxy'
        ("statistic", pa.string()),  # 'spearman'
        ("value", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("n", pa.int64()),
        ("best", pa.bool_()),  # the proxy closest to the reference in its (dataset, arch)
        ("fit", pa.bool_()),  # both architectures fit
        ("n_dropped", pa.int64()),
    ]
)
"""Columns of ``cross_arch.parquet``: agreement across architectures and of cheap proxies."""

LEAKAGE = pa.schema(
    [
        ("dataset", pa.string()),
        ("arch", pa.string()),
        ("method", pa.string()),
        ("family", pa.string()),
        ("reference", pa.string()),  # whose top-k are the positives, e.g. 'lira'
        ("k", pa.float64()),
        ("n_positive", pa.int64()),  # max(1, round(k * n))
        ("precision", pa.float64()),  # fraction of the method's top-k that are positives
        ("precision_low", pa.float64()),
        ("precision_high", pa.float64()),
        ("auc", pa.float64()),  # ROC AUC of the method's score for the positives
        ("auc_low", pa.float64()),
        ("auc_high", pa.float64()),
        ("seconds", pa.float64()),  # what the method's score cost; NaN if unknown
        ("reference_seconds", pa.float64()),
        ("fit", pa.bool_()),
        ("n", pa.int64()),  # examples both the method and the reference scored
        ("n_dropped", pa.int64()),
    ]
)
"""Columns of ``leakage.parquet``: which score finds the examples the reference says leak."""

APPLICATIONS = pa.schema(
    [
        ("dataset", pa.string()),
        ("arch", pa.string()),
        ("application", pa.string()),  # 'detection' | 'summarization' | a grouping's name
        ("method", pa.string()),
        ("group", pa.string()),  # a provenance kind, a group value, 'difference', 'top@0.1'
        ("metric", pa.string()),  # 'auc' | 'mean' | 'accuracy'
        ("value", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("n", pa.int64()),  # examples (or seeds, for accuracy) behind the value
        ("fit", pa.bool_()),
    ]
)
"""Columns of ``applications.parquet`` (Harutyunyan et al. 2021, §5), long format."""

REMOVAL = pa.schema(
    [
        ("dataset", pa.string()),
        ("arch", pa.string()),
        ("method", pa.string()),
        ("direction", pa.string()),  # 'top' | 'random' | 'bottom'
        ("k", pa.float64()),
        ("n_removed", pa.int64()),
        ("accuracy", pa.float64()),  # test accuracy, mean over seeds
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("n_seeds", pa.int64()),
        ("delta_vs_random", pa.float64()),  # accuracy minus the random direction's, same k
        ("delta_low", pa.float64()),
        ("delta_high", pa.float64()),
        ("fit", pa.bool_()),
        # 'as_configured' (the data as built, flipped labels included) | 'clean' (original
        # labels, the ranking score recomputed on them)
        ("condition", pa.string()),
    ]
)
"""Columns of ``removal.parquet`` (Feldman & Zhang 2020): retraining without top-k examples."""

DP = pa.schema(
    [
        ("dataset", pa.string()),
        ("arch", pa.string()),
        ("setting", pa.string()),  # 'none' | 'sigma=<σ>' | 'eps=<target ε>'
        ("noise_multiplier", pa.float64()),  # σ (the largest of the models'); null: no DP
        ("epsilon", pa.float64()),  # the accountant's ε, worst model; null: no DP (∞)
        ("delta", pa.float64()),
        # empirical lower bound on ε from LiRA (Clopper–Pearson, 95%) and its attack's rates
        ("epsilon_lower", pa.float64()),
        ("epsilon_lower_tpr", pa.float64()),
        ("epsilon_lower_fpr", pa.float64()),
        ("test_accuracy", pa.float64()),  # mean over the models
        ("fz_mean", pa.float64()),  # Feldman–Zhang memorization: mean and quantiles
        ("fz_q50", pa.float64()),
        ("fz_q90", pa.float64()),
        ("fz_q99", pa.float64()),
        ("fz_flipped_auc", pa.float64()),  # ROC AUC of FZ for the flipped labels
        ("fz_flipped_auc_low", pa.float64()),  # its bootstrap interval (examples resampled)
        ("fz_flipped_auc_high", pa.float64()),
        ("lira_auc", pa.float64()),
        ("lira_auc_low", pa.float64()),  # bootstrap interval, each example's models together
        ("lira_auc_high", pa.float64()),
        ("lira_tpr_at_0_1pct_fpr", pa.float64()),
        ("privacy_score_mean", pa.float64()),  # LiRA's per-example d, mean
        ("canary_exposure", pa.float64()),  # canaries' mean probability_shift; null: none
        ("canary_lira", pa.float64()),  # the canaries' mean LiRA d; null: none
        ("n_models", pa.int64()),
    ]
)
"""Columns of ``dp.parquet``, one row per (dataset, arch, DP setting): the study's DP sweep."""

TABLES: dict[str, pa.Schema] = {
    "examples": EXAMPLES,
    "scores": SCORES,
    "correlations": CORRELATIONS,
    "detection": DETECTION,
    "influence": INFLUENCE,
    "attacks": ATTACKS,
    "attack_roc": ATTACK_ROC,
    "score_parts": SCORE_PARTS,
    "influence_eval": INFLUENCE_EVAL,
    "fits": FITS,
    "overlap": OVERLAP,
    "cross_arch": CROSS_ARCH,
    "leakage": LEAKAGE,
    "applications": APPLICATIONS,
    "removal": REMOVAL,
    "dp": DP,
}

STUDY_TABLES = ("overlap", "cross_arch", "leakage", "applications", "removal", "dp")
"""Tables only a study (a config with ``study:``) writes, each where its analysis is on."""
RUN_TABLES = tuple(name for name in TABLES if name not in STUDY_TABLES)
"""Tables every run writes."""


def without_fit(schema: pa.Schema) -> pa.Schema:
    """``schema`` less its ``fit`` column: what one estimator's part file holds (the
    ``tables`` and ``analysis`` stages add the column once the fits are known)."""
    return pa.schema([f for f in schema if f.name != "fit"])


def to_arrow(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Cast ``frame`` to ``schema``: exactly its columns, in its order, with its types.

    Raises ``ValueError`` naming the missing columns rather than writing a table
    that breaks the contract.
    """
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise ValueError(f"table is missing columns {missing}; expected {schema.names}")
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
