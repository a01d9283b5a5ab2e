"""Sign-based memorization: positive self-influence, no help to its own class."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import ConfigDict, Field, field_validator

from mnemoscope.estimator import (
    REGISTRY,
    MethodConfig,
    PlanContext,
    Scores,
    estimators,
    register,
)
from mnemoscope.memorization.base import MemorizationEstimator
from mnemoscope.train import EnsembleSpec

if TYPE_CHECKING:
    from typing import Self


class SignMemorizationConfig(MethodConfig):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    method: Literal["sign_memorization"] = "sign_memorization"
    influence: Any = Field("tracin", validate_default=True)
    """The influence method it reads: a name (with its defaults) or a whole entry, e.g.
    ``{method: tracin, checkpoints: 3}``; any attributor with train×target influence."""
    n_heldout: int = Field(200, ge=1, le=1_000_000)
    """Held-out (test-split) examples whose influence is measured: the first ones of the
    split."""
    heldout: Literal["neighbours", "same_class"] = "neighbours"
    """Which held-out examples an example should help: its ``k`` nearest held-out inputs
    (Euclidean, whatever their label), or those with its trained label."""
    k: int = Field(5, ge=1, le=10_000)
    """Nearest held-out examples averaged over (``heldout: neighbours``)."""

    @field_validator("influence", mode="before")
    @classmethod
    def _an_attributor(cls, entry: Any) -> MethodConfig:
        if isinstance(entry, MethodConfig):
            entry = entry.model_dump()
        if isinstance(entry, str):
            entry = {"method": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("method"), str):
            raise ValueError("expected an influence method name or entry {method: ...}")
        import mnemoscope.influence  # noqa: F401  (registers the attributors)

        known = {n: c for n, c in estimators("influence").items() if c.attributes_targets}
        if entry["method"] not in known:
            raise ValueError(
                f"unknown influence method '{entry['method']}'; known: {', '.join(sorted(known))}"
            )
        return known[entry["method"]].config_class.model_validate(entry)


@register
class SignMemorization(MemorizationEstimator):
    """Sign-based memorization (operational reading of Kounavis, Dia & Ramazanli 2023).

    An example is *memorized rather than generalized upon* when its self-influence is
    positive while its mean influence on the held-out examples it should help is ≤ 0:
    the model relies on it for itself, and it does not help (or hurts) the examples like
    it.

    ``score_i = (s_i / mean_j |s_j|) · 1[h_i ≤ 0]`` with ``s_i`` the self-influence of
    the chosen attributor and ``h_i = mean_{t ∈ N_i} τ(z_i, z_t)`` over held-out examples
    ``N_i`` among the first ``n_heldout`` of the test split: its ``k`` nearest held-out
    inputs (``heldout: neighbours``, the default) or those with its trained label
    (``heldout: same_class``). Higher = more memorized; 0 for an example that helps its
    neighbours; scale-free (self-influence over its mean magnitude), so attributors
    compare. NaN where ``N_i`` is empty. The indicator and both parts go to
    ``score_parts.parquet`` (parts ``indicator``, ``self_influence``, ``heldout``).

    Why neighbours by default: with gradient-similarity attributors (``tracin``,
    ``grad_dot``) the influence between two examples with the same label is almost
    never negative (their last-layer gradients ``(p − e_y) hᵀ`` have a non-negative
    dot product when the features are non-negative), so the same-class reading flags
    nothing; a label-flipped example does hurt the held-out inputs that look like it.
    Only the abstract of the paper was available to us: this definition is ours.

    Cost: the attributor's self-influence plus its influence on ``n_heldout`` targets.

    Reference: M. E. Kounavis, O. Dia, I. Ramazanli, "Sign-based memorization" (arXiv
    2305.16094, 2023), abstract; influence sign convention as in this package.
    """

    name = "sign_memorization"
    config_class = SignMemorizationConfig
    cost = "the chosen attributor's self-influence and its influence on n_heldout targets"
    reference = "Kounavis, Dia, Ramazanli 2023, arXiv 2305.16094 (operational reading)"
    summary = "positive self-influence that does not help the held-out examples like it"
    extra_tables = ("score_parts",)
    config: SignMemorizationConfig

    def __init__(self, config: SignMemorizationConfig) -> None:
        super().__init__(config)
        self.attributor = REGISTRY[config.influence.method](config.influence)
        self.cache_fit = self.attributor.cache_fit

    def ensembles(self, context: PlanContext) -> dict[str, EnsembleSpec]:
        return self.attributor.ensembles(context)

    def check_model(self, module) -> None:
        self.attributor.check_model(module)

    def fit(self, ensembles, dataset, task, device="cpu") -> Self:
        self.attributor.fit(ensembles, dataset, task, device)
        self.dataset_, self.parts_ = dataset, None
        return self

    def fitted_state(self) -> dict[str, torch.Tensor]:
        return self.attributor.fitted_state()

    def load_fitted(self, state, ensembles, dataset, task, device="cpu") -> Self:
        self.attributor.load_fitted(state, ensembles, dataset, task, device)
        self.dataset_, self.parts_ = dataset, None
        return self

    def parts(self) -> pd.DataFrame:
        """Per training example: self-influence ``s_i``, mean influence ``h_i`` on its
        held-out examples, and the indicator ``1[h_i ≤ 0]`` (NaN where there are none)."""
        if getattr(self, "parts_", None) is not None:
            return self.parts_
        data = self.dataset_
        s = self.attributor.self_influence().score
        n = min(self.config.n_heldout, data.n_test)
        x_t, y_t = data.x_test[:n], data.y_test[:n]
        matrix = self.attributor.influence_matrix(x_t, y_t).numpy()  # [n_train, n]
        if self.config.heldout == "same_class":
            chosen = (data.y_train[:, None] == y_t[None, :]).numpy()
        else:
            distance = torch.cdist(data.x_train.flatten(1).double(), x_t.flatten(1).double())
            nearest = distance.topk(min(self.config.k, n), dim=1, largest=False).indices
            chosen = np.zeros(matrix.shape, dtype=bool)
            np.put_along_axis(chosen, nearest.numpy(), True, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            heldout = (matrix * chosen).sum(1) / chosen.sum(1)
        indicator = np.where(np.isfinite(heldout), (heldout <= 0).astype(float), np.nan)
        self.parts_ = pd.DataFrame(
            {
                "example_id": data.train_ids.numpy(),
                "self_influence": s,
                "heldout": heldout,
                "indicator": indicator,
            }
        )
        return self.parts_

    def score(self) -> Scores:
        parts = self.parts()
        s = parts["self_influence"].to_numpy()
        scale = np.mean(np.abs(s[np.isfinite(s)]))
        score = s / scale * parts["indicator"].to_numpy() if scale > 0 else np.zeros_like(s)
        return Scores(self.name, self.family, parts["example_id"].to_numpy(), score)

    def table_rows(self, table: str) -> pd.DataFrame:
        long = self.parts().melt(id_vars="example_id", var_name="part", value_name="value")
        return long.assign(method=self.name)
