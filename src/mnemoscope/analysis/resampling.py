"""Vectorised bootstrap machinery shared by the study's tables (overlap, cross_arch, leakage,
applications) and the small helpers they all use (seed-averaged scores, ``fit`` lookup,
t-intervals).

A bootstrap resample of ``n`` examples (Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993, ch. 6) is represented by how many times it drew each example: a row of
``counts`` (``[rows, n]``, each row summing to ``n``). Every statistic here is a function of
the counts, so a resample is never materialised as an ``n``-long list of draws and sorted:

* a method's top ``n_top`` of a resample (:func:`draws_before`): walk the examples in the
  method's order (best first) and keep copies until ``n_top`` are kept. Copies of one
  example are interchangeable and kept in the same order by every method, so the overlap
  of two top sets is ``Σ_e min(a_e, b_e)``, ``a_e`` the copies of example ``e`` one keeps;
* ranks with ties (:func:`resample_midranks`): an example's midrank in a resample is the
  number of drawn items below its value plus ``(copies of its value + 1) / 2``, exactly what
  ``scipy.stats.rankdata`` gives on the resampled list;
* Spearman on a resample (:func:`spearman_sides`): Pearson of the midranks weighted by the
  counts. The weighted sum of the midranks is always ``n(n+1)/2``, so each side's ranks and
  sums are computed once (:class:`RankSide`) and a comparison costs one dot product per
  resample.

The resamples (:class:`Resamples`) are drawn as in :func:`mnemoscope.analysis.correlations.correlation_with_ci`
(``numpy.random.default_rng(seed).integers(0, n, (n_bootstrap, n))``), so a result is a
deterministic function of the inputs and the seed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

# Resamples are drawn in blocks of about this many elements so that a 60k-example dataset
# with 1000 resamples never needs gigabytes at once.
_BLOCK_ELEMENTS = 1 << 21

FIT_COLUMNS: tuple[str, ...] = ("dataset", "arch", "fit", "fit_reason")


def count_blocks(n: int, n_bootstrap: int, seed: int) -> Iterator[np.ndarray]:
    """The ``n_bootstrap`` resamples of ``n`` examples as blocks of ``[rows, n]`` int32 counts.

    Blocks come in order; together they hold ``n_bootstrap`` rows, each a draw of ``n``
    examples with replacement from ``numpy.random.default_rng(seed)``.
    """
    rng = np.random.default_rng(seed)
    rows_per_block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n_bootstrap, rows_per_block):
        rows = min(rows_per_block, n_bootstrap - start)
        draws = rng.integers(0, n, size=(rows, n))
        flat = (draws + (np.arange(rows) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.int32)


def best_first(values: np.ndarray, example_ids: np.ndarray) -> np.ndarray:
    """Positions of ``values`` from the highest to the lowest, ties by ascending example id."""
    return np.lexsort((example_ids, -values))


def n_top_of(k: float, n: int) -> int:
    """The size of a top-``k`` set of ``n`` examples: ``max(1, round(k · n))``."""
    return max(1, int(round(k * n)))


def draws_before(
    counts: np.ndarray, order: np.ndarray, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each resample, how many drawn items precede each example in ``order``.

    Args:
        counts: ``[rows, n]`` resample counts.
        order: ``[n]`` positions, best first (:func:`best_first`).
        limit: the largest top size that will be asked for.

    Returns:
        ``(columns, before)``: ``columns`` the positions (a prefix of ``order``) that can be
        among the top ``limit`` of some resample, and ``before`` ``[rows, len(columns)]``, the
        drawn items ahead of each. Example ``e`` keeps ``min(c_e, max(t − before_e, 0))`` of
        its copies in the top ``t``; examples outside ``columns`` keep none for ``t ≤ limit``.
    """
    n = order.size
    # The top `limit` draws almost always lie within a short prefix; widen it if not.
    length = min(n, limit + int(8 * np.sqrt(limit)) + 16)
    while True:
        head = counts[:, order[:length]]
        cum = np.cumsum(head, axis=1, dtype=np.int32)
        if length == n or cum[:, -1].min() >= limit:
            return order[:length], cum - head
        length = min(n, 2 * length)


def kept_in_top(counts: np.ndarray, before: np.ndarray, n_top: int) -> np.ndarray:
    """Copies each example keeps in the top ``n_top``; arrays as from :func:`draws_before`."""
    return np.minimum(counts, np.maximum(n_top - before, 0))


def resample_midranks(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based midranks of every example within each resample, and which resamples are constant.

    Args:
        values: ``[n]`` finite values.
        counts: ``[rows, n]`` resample counts.

    Returns:
        ``(ranks, constant)``: ``ranks`` ``[rows, n]`` float (an example not drawn gets the
        rank it would have, weight 0 in any sum over counts), ``constant`` ``[rows]`` bool,
        True where every drawn item has the same value.
    """
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    new_value = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    sorted_counts = counts[:, order]
    if new_value.all():
        group_counts = sorted_counts
    else:
        group_counts = np.add.reduceat(sorted_counts, np.flatnonzero(new_value), axis=1)
    # Twice the midrank, in integers: 2·(items below) + copies + 1 = 2·cumsum − copies + 1.
    doubled = np.cumsum(group_counts, axis=1, dtype=np.int32)
    doubled *= 2
    doubled -= group_counts
    doubled += 1
    group_of = np.empty(order.size, dtype=np.intp)
    group_of[order] = np.cumsum(new_value) - 1
    ranks = doubled[:, group_of] * 0.5
    constant = (group_counts > 0).sum(axis=1) < 2
    return ranks, constant


class Resamples:
    """The ``n_bootstrap`` seeded resamples of any number of examples, drawn once per ``n``.

    Keeps the count blocks, and what :meth:`memo` is asked to keep, while they fit in a
    budget of elements (the study's n ≈ 1,500 fits many times over); beyond it they are
    recomputed on each use, so memory stays bounded for any ``n``.
    """

    def __init__(self, n_bootstrap: int, seed: int, budget: int = 1 << 25) -> None:
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self._budget = budget
        self._cache: dict[Hashable, list] = {}
        self._sizes: dict[Hashable, int] = {}

    def blocks(self, n: int) -> list[np.ndarray] | Iterator[np.ndarray]:
        """The resamples of ``n`` examples as count blocks (:func:`count_blocks`)."""
        return self.memo(("counts", n), n, lambda: count_blocks(n, self.n_bootstrap, self.seed))

    def memo(self, key: Hashable, n: int, make: Callable[[], Iterator]) -> list | Iterator:
        """``make()`` (items per block of resamples, ``n`` elements per resample), kept
        under ``key`` while the budget lasts."""
        if key in self._cache:
            return self._cache[key]
        size = n * self.n_bootstrap
        if size > self._budget:
            return make()
        self._budget -= size
        self._sizes[key] = size
        self._cache[key] = list(make())
        return self._cache[key]

    def forget(self, keep: Callable[[Hashable], bool]) -> None:
        """Drop the kept items whose key ``keep`` rejects (their budget is returned)."""
        for key in [k for k in self._cache if not keep(k)]:
            del self._cache[key]
            self._budget += self._sizes.pop(key)


class RankSide:
    """One side of a bootstrap Spearman: a score's midranks in every resample, with the sums
    that do not depend on the other side (Σ w·r over a resample is always n(n+1)/2)."""

    def __init__(self, values: np.ndarray, resamples: Resamples, key: Hashable) -> None:
        self.values = values
        self.n = values.size
        self._resamples = resamples
        self._key = key

    def point(self) -> tuple[np.ndarray, ...]:
        return self._side(np.ones((1, self.n), dtype=np.int32))

    def blocks(self) -> list | Iterator:
        return self._resamples.memo(
            ("ranks", self._key),
            2 * self.n,
            lambda: (self._side(c) for c in self._resamples.blocks(self.n)),
        )

    def _side(self, counts: np.ndarray) -> tuple[np.ndarray, ...]:
        ranks, constant = resample_midranks(self.values, counts)
        weighted = counts * ranks
        return ranks, weighted, np.einsum("ij,ij->i", weighted, ranks), constant


def spearman_sides(a: RankSide, b: RankSide) -> tuple[float, np.ndarray]:
    """Spearman's rho of two sides over the same examples, on all of them and per resample.

    Returns ``(value, boot [n_bootstrap])``; NaN where either side is constant.
    """
    n = a.n
    mean_square = ((n + 1) / 2.0) ** 2

    def rho(side_a: tuple, side_b: tuple) -> np.ndarray:
        _, weighted_a, square_a, constant_a = side_a
        ranks_b, _, square_b, constant_b = side_b
        cov = np.einsum("ij,ij->i", weighted_a, ranks_b) / n - mean_square
        with np.errstate(invalid="ignore", divide="ignore"):
            out = cov / np.sqrt((square_a / n - mean_square) * (square_b / n - mean_square))
        out = np.clip(out, -1.0, 1.0)
        out[constant_a | constant_b] = np.nan
        return out

    value = float(rho(a.point(), b.point())[0])
    boot = np.concatenate([rho(x, y) for x, y in zip(a.blocks(), b.blocks(), strict=True)])
    return value, boot


def auc_resampled(
    ranks: np.ndarray, positive: np.ndarray, n: int, drawn: np.ndarray | None = None
) -> np.ndarray:
    """ROC AUC per resample from midranks (Mann–Whitney; ties count one half).

    ``ranks`` ``[rows, m]`` midranks over the whole resample of ``n`` items, ``positive``
    ``[rows, m]`` the positive copies of each of those ``m`` examples (examples not listed
    have none). AUC = (rank sum of positives − n₊(n₊+1)/2) / (n₊·n₋); NaN if a class is empty.
    ``drawn`` (``[rows, m]`` counts), when a top-k cut can split an example's copies between
    the classes: pairs of copies of one example are then not compared (they are one example,
    not a tie), so a score that orders like the reference has AUC 1 in every resample.
    """
    n_pos = positive.sum(axis=1).astype(np.float64)
    pairs = n_pos * (n - n_pos)
    u = np.einsum("ij,ij->i", ranks, positive) - n_pos * (n_pos + 1) / 2
    if drawn is not None:
        self_pairs = np.einsum("ij,ij->i", positive, drawn - positive).astype(np.float64)
        u -= self_pairs / 2
        pairs -= self_pairs
    with np.errstate(invalid="ignore", divide="ignore"):
        return u / pairs


def t_interval(values: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Mean of ``values`` with a Student-t interval, ``mean ± t_{(1+c)/2, m−1} · sd / √m``.

    ``m`` the number of values (e.g. seeds); NaN bounds with fewer than 2 values.
    """
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if values.size else float("nan")
    if values.size < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf((1 + confidence) / 2, values.size - 1) * values.std(ddof=1)
    half /= np.sqrt(values.size)
    return mean, float(mean - half), float(mean + half)


SCORE_COLUMNS = ("dataset", "arch", "family", "method", "example_id", "score")
"""The columns of the scores table the analyses read."""


def score_families(scores: pd.DataFrame) -> dict[str, str]:
    """Each method's family, in table order, after checking that ``scores`` has
    :data:`SCORE_COLUMNS` and that every method has exactly one family, 'memorization' or
    'influence' (``ValueError`` otherwise)."""
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"scores table is missing columns {missing}")
    families = scores.groupby("method", sort=False)["family"].unique()
    bad = {
        m: list(f)
        for m, f in families.items()
        if len(f) != 1 or f[0] not in ("memorization", "influence")
    }
    if bad:
        raise ValueError(f"each method needs one family, 'memorization' or 'influence'; got {bad}")
    return {m: f[0] for m, f in families.items()}


def mean_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """One score per (dataset, arch, family, method, example_id): the mean over seeds.

    NaN scores are skipped, so an example keeps a score if any seed scored it; infinite
    ones are NaN first, so that every later "finite" test is a plain ``notna``.
    """
    score_families(scores)
    frame = scores[list(SCORE_COLUMNS)].copy()
    frame["score"] = frame["score"].astype(np.float64).replace([np.inf, -np.inf], np.nan)
    keys = ["dataset", "arch", "family", "method", "example_id"]
    return frame.groupby(keys, sort=False, as_index=False)["score"].mean()


def method_families(per_example: pd.DataFrame) -> dict[str, str]:
    """``{method: family}`` of a frame from :func:`mean_scores`."""
    first = per_example.drop_duplicates("method")
    return dict(zip(first["method"].tolist(), first["family"].tolist(), strict=True))


def wide_cells(per_example: pd.DataFrame) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """``(dataset, arch, wide)`` per cell, ``wide`` indexed by sorted example_id with one
    column per method in order of first appearance (NaN where a method has no score)."""
    for (dataset, arch), group in per_example.groupby(["dataset", "arch"], sort=False):
        methods = group["method"].unique().tolist()
        wide = group.pivot(index="example_id", columns="method", values="score")
        yield dataset, arch, wide.sort_index()[methods]


def fit_lookup(fits: pd.DataFrame | None) -> Callable[[str, str], bool]:
    """``fit(dataset, arch)``: False only for the rows of ``fits`` whose ``fit`` is False.

    ``fits``: a frame of (dataset, arch, fit, fit_reason), the cells whose models do not fit
    their data; a (dataset, arch) without a row fits. None: every cell fits.
    """
    if fits is None:
        return lambda dataset, arch: True
    missing = [c for c in FIT_COLUMNS[:3] if c not in fits.columns]
    if missing:
        raise ValueError(f"fits table is missing columns {missing}")
    table = {
        (str(d), str(a)): bool(f)
        for d, a, f in zip(fits["dataset"], fits["arch"], fits["fit"], strict=True)
    }
    return lambda dataset, arch: table.get((str(dataset), str(arch)), True)


def schema_frame(rows: list[dict[str, object]], schema: pa.Schema) -> pd.DataFrame:
    """``rows`` as a frame with exactly ``schema``'s columns, numbers and flags typed as in it
    (so that an empty table has the right dtypes too)."""
    dtypes = {pa.float64(): "float64", pa.int64(): "int64", pa.bool_(): "bool"}
    table = pd.DataFrame(rows, columns=schema.names)
    return table.astype({f.name: dtypes[f.type] for f in schema if f.type in dtypes})


def validate_ks(ks: Sequence[float]) -> tuple[float, ...]:
    """``ks`` as a tuple of fractions in (0, 1); ValueError naming the bad one."""
    ks = tuple(float(k) for k in ks)
    if not ks:
        raise ValueError("ks must name at least one fraction of the training set")
    for k in ks:
        if not 0.0 < k < 1.0:
            raise ValueError(f"ks: each fraction must lie strictly between 0 and 1, got {k!r}")
    return ks
