"""Exact KNN-Shapley data values (Jia et al. 2019, Theorem 1) on a model's features."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import ConfigDict, Field

from mnemoscope.data import Dataset
from mnemoscope.estimator import MethodConfig, Scores, register
from mnemoscope.influence.base import DEFAULT_MEMORY_BUDGET, InfluenceBlock, InfluenceEstimator
from mnemoscope.task import Task

if TYPE_CHECKING:
    from typing import Self


class KNNShapleyConfig(MethodConfig):
    """Strict: a string, a boolean or a non-finite number where a number is meant is refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    method: Literal["knn_shapley"] = "knn_shapley"
    k: int = Field(5, ge=1, le=100_000)
    """Neighbours K of the K-nearest-neighbour classifier whose utility is shared out
    (at most 100 000; K larger than the training set is allowed and means all of it)."""
    features: Literal["penultimate", "input"] = "penultimate"
    """Space of the Euclidean distances: the final model's penultimate features (the
    last layer's input) or the flattened raw inputs."""
    score: Literal["self", "test_mean"] = "self"
    """Per-example score: ``self`` (the value of example i for predicting its own label,
    the diagonal of the train×train values) or ``test_mean`` (its mean value over the
    test split: Jia et al.'s data value)."""


def knn_shapley_values(
    distances: torch.Tensor, train_labels: torch.Tensor, target_labels: torch.Tensor, k: int
) -> torch.Tensor:
    """Exact Shapley values of the K-NN utility, one column per target.

    The utility of a training subset S for target t is
    ``U_t(S) = (1/K) Σ_{r ≤ min(K, |S|)} 1[y_{(r)} = y_t]``, the (r) being S's members
    sorted by distance to t (ties broken by training position). With the whole set
    sorted as ``α_1 .. α_N`` and ``m_r = 1[y_{α_r} = y_t]``, Theorem 1 of Jia et al. gives
    ``s_{α_N} = m_N · min(K, N) / (K N)`` and
    ``s_{α_r} = s_{α_{r+1}} + (m_r − m_{r+1}) · min(K, r) / (K r)``. (The paper writes the
    first as ``m_N / N``, assuming N ≥ K; the farthest point counts in every coalition of
    fewer than K others, which gives ``min(K, N) / (K N)`` for any N.)

    Args:
        distances: ``[N, b]`` distances of the N training points to b targets.
        train_labels: ``[N]`` labels.
        target_labels: ``[b]`` labels.
        k: K.

    Returns:
        ``[N, b]`` float64 values; each column sums to ``U_t`` of the whole set.
    """
    n = distances.shape[0]
    # a stable sort breaks ties by training position, as the utility above says
    order = torch.sort(distances, dim=0, stable=True).indices
    match = (train_labels[order] == target_labels[None, :]).double()  # [N, b], by rank
    rank = torch.arange(1, n, dtype=torch.float64, device=distances.device)[:, None]
    steps = (match[:-1] - match[1:]) * torch.clamp(rank, max=k) / (k * rank)
    # s at rank r = s_{α_N} + Σ_{j=r}^{N−1} steps_j: a reversed cumulative sum
    tail = torch.flip(torch.cumsum(torch.flip(steps, [0]), 0), [0])
    by_rank = match[-1:] * min(k, n) / (k * n) + torch.cat([tail, torch.zeros_like(match[-1:])])
    return torch.empty_like(by_rank).scatter_(0, order, by_rank)


@register
class KNNShapley(InfluenceEstimator):
    """Exact KNN-Shapley data values (Jia et al. 2019, "Efficient Task-Specific Data
    Valuation for Nearest Neighbor Algorithms", PVLDB 12(11), Theorem 1).

    ``τ(z_i, z_t)`` is the Shapley value of training example i in the cooperative game
    whose players are the training examples and whose utility for a subset S is the
    K-NN classifier's likelihood of the target's label, ``U_t(S) = (1/K) Σ_{r ≤ min(K,|S|)}
    1[y_{(r)} = y_t]`` (neighbours by Euclidean distance in the chosen feature space,
    ties broken by training position). Computed exactly by the recursion over the
    sorted neighbours of :func:`knn_shapley_values`, not by sampling.

    Sign: positive when i's label agrees with the target's and i is close enough to
    count; negative when a close neighbour with another label pushes correct
    neighbours out of the K nearest: removing it would help. Higher = more helpful,
    as everywhere. Normalisation: values of one target sum to ``U_t`` of the whole set
    (efficiency), a number in ``[0, 1]``; no further division by n.

    Self-influence (the default per-example score) is the diagonal: the value of i
    for predicting its own label with i among the training points, at distance 0 and
    so its own nearest neighbour (an exact duplicate earlier in the training set comes
    first). It is about 1/K when i's neighbours carry other labels (a mislabeled or
    atypical example that only its own presence gets right) and about 1/r when the
    first other-label neighbour is at rank r > K. ``score: test_mean`` instead reports
    the mean value over the test split, Jia et al.'s data value, in which a
    mislabeled example is negative.

    Cost: one forward pass for the features, then for each target a distance to each
    training point and a sort: ``O(N log N)`` per target, ``O(N² log N)`` for the
    self-influence, computed in blocks that fit the memory budget (never N×N at once).
    The features are read from one model trained on the whole set.
    """

    name = "knn_shapley"
    config_class = KNNShapleyConfig
    cost = "features of one model; a sort of the training set per target (N² log N for self)"
    reference = (
        "Jia et al. 2019, 'Efficient Task-Specific Data Valuation for Nearest Neighbor "
        "Algorithms', Theorem 1"
    )
    summary = "exact Shapley value of each example for a K-nearest-neighbour classifier"
    config: KNNShapleyConfig

    def fit(self, ensembles, dataset: Dataset, task: Task, device="cpu") -> Self:
        self._hold_final_model(ensembles, dataset, task, device)
        self.train_features_ = self._features(dataset.x_train)
        self.train_labels_ = dataset.y_train.to(self.device_)
        return self

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, ...]`` inputs → ``[b, d]`` float64 points of the distance space."""
        if self.config.features == "input":
            return x.flatten(1).to(self.device_, torch.float64)
        return self._penultimate(x)

    def _blocks(self, n_targets: int, memory_budget: int) -> list[slice]:
        """Blocks of targets: distances, sort indices, matches and values, 8 bytes each."""
        return self.target_slices(n_targets, 5 * 8 * self.n_train_, memory_budget)

    def _columns(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        distances = torch.cdist(self.train_features_, features)
        return knn_shapley_values(
            distances, self.train_labels_, labels.to(self.device_), self.config.k
        )

    def influence(self, x_target, y_target, memory_budget=DEFAULT_MEMORY_BUDGET):
        """Blocks of all training rows × as many targets as fit ``memory_budget``."""
        for targets in self._blocks(len(y_target), memory_budget):
            values = self._columns(self._features(x_target[targets]), y_target[targets])
            yield InfluenceBlock(slice(0, self.n_train_), targets, values.cpu())

    def self_influence(self) -> Scores:
        """The diagonal of the train×train values, block by block."""
        n = self.n_train_
        diagonal = torch.empty(n, dtype=torch.float64)
        for block in self._blocks(n, DEFAULT_MEMORY_BUDGET):
            rows = torch.arange(block.start, block.stop, device=self.device_)
            values = self._columns(self.train_features_[rows], self.train_labels_[rows])
            diagonal[block] = values[rows, torch.arange(len(rows))].cpu()
        return self._scores(diagonal)

    def test_mean_value(self) -> Scores:
        """Mean value of each training example over the test split (Jia et al.'s data value)."""
        data = self.dataset_
        total = torch.zeros(self.n_train_, dtype=torch.float64)
        for block in self.influence(data.x_test, data.y_test):
            total += block.values.sum(1)
        return self._scores(total / data.n_test)

    def score(self) -> Scores:
        return self.self_influence() if self.config.score == "self" else self.test_mean_value()
