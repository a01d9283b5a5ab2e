"""Scores for the user's own model, with scikit-learn conventions: the constructor stores
the settings, :meth:`Scorer.fit` returns the scorer, fitted state ends in ``_``.

    tracin = ms.TracIn(checkpoints=[(state_dict, lr), ...]).fit(model, train)
    tracin.self_influence()                      # [n] float64 tensor; .frame(): a DataFrame
    ms.IFEKFAC(damping=1e-3).fit(model, train).influence(targets)   # [n_train, n_targets]
    ms.attribute("trak", model, train, targets, checkpoints=[...])  # one call
    ms.Scorer("feldman_zhang", n_models=16).fit("mlp", train, train_config={"epochs": 20})

Each class runs the registered estimator of its method (the code a run directory's
stages run), so on the same model and data both give the same scores. ``model`` is

- an ``nn.Module`` already trained (copied, in eval mode: BatchNorm is fine, its running
  statistics are constants) for the methods that read one model trained on the whole
  set (every influence method but ``loo``, ``downsampling`` and ``trak`` with
  ``n_models > 1``); ``checkpoints`` are its parameters during training with the
  learning rate then in force, oldest first;
- or, for methods that train models (every memorization method, ``loo``,
  ``downsampling``, ``trak`` with an ensemble), an architecture name or a factory
  ``factory(input_shape, n_classes) -> nn.Module`` and ``train_config`` (the keys of a
  config's ``train:``): the ensemble engine trains what the method declares, with the
  seeds a run of the same ``seed`` uses.

``train`` and ``targets`` are ``(x, y)`` tensors or arrays, a torch ``Dataset`` or
``DataLoader`` of ``(x, y)``, or a mnemoscope :class:`~mnemoscope.data.Dataset`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
import torch
from pydantic import ValidationError
from torch import nn

import mnemoscope.memorization  # noqa: F401  (registers the memorization methods)
from mnemoscope.data import Dataset
from mnemoscope.errors import ConfigError
from mnemoscope.estimator import REGISTRY, Estimator, PlanContext
from mnemoscope.influence.base import DEFAULT_MEMORY_BUDGET, InfluenceEstimator
from mnemoscope.models import ARCHITECTURES, register_arch
from mnemoscope.own_model import (
    CheckpointLike,
    as_dataset,
    ensemble_from_model,
    examples,
    n_classes_of,
)
from mnemoscope.runner.plan import _MASKS, _TRAIN  # the runner's seed streams: same models
from mnemoscope.runner.progress import Reporter
from mnemoscope.task import Task
from mnemoscope.train import TrainConfig, TrainedEnsemble, derive_seed, train_ensemble

if TYPE_CHECKING:
    from typing import Self

ModelLike = nn.Module | str | Callable[..., nn.Module]


def method_config(method: str, settings: Mapping[str, Any]):
    """The validated config entry of ``method`` with ``settings``; a one-line
    :class:`ConfigError` naming the method and the field otherwise."""
    cls = REGISTRY.get(method)
    if cls is None:
        raise ConfigError(f"unknown method '{method}'; known: {', '.join(sorted(REGISTRY))}")
    try:
        return cls.config_class.model_validate({**settings, "method": method})
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in (method, *first["loc"]))
        problem = "unknown setting" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{where}: {problem.removeprefix('Value error, ')}") from None


class Scorer:
    """Any registered method on the user's model and data: ``fit`` then :meth:`score`.

    Args:
        method: the registered name (``mnemoscope methods`` lists them).
        checkpoints: ``(state_dict, lr)`` pairs of a fixed model, oldest first (their
            number is the method's ``checkpoints`` setting); for a model the ensemble
            engine trains, an integer: the method's ``checkpoints`` setting itself.
        device: where the estimator computes (``"cpu"``, ``"cuda"``).
        progress: show progress: bars for the ensemble engine's training (model-epochs)
            and for train×target influence (pairs done, block by block), spinners for
            the fit and the self-influence.
        **settings: the method's config keys (as in a config entry), checked here.
    """

    method: ClassVar[str] = ""

    def __init__(
        self,
        method: str | None = None,
        *,
        checkpoints: Sequence[CheckpointLike] | int = (),
        device: str | torch.device = "cpu",
        progress: bool = False,
        **settings: Any,
    ) -> None:
        self.method = method or type(self).method
        self.device = device
        self.progress = progress
        self.settings = dict(settings)
        if not isinstance(checkpoints, list | tuple):  # the method's own setting: a count
            self.settings["checkpoints"], checkpoints = checkpoints, ()
        self.checkpoints = list(checkpoints)
        method_config(self.method, self.settings)  # a bad setting fails here, not in fit

    def fit(
        self,
        model: ModelLike,
        train: Any,
        *,
        train_config: TrainConfig | Mapping[str, Any] | None = None,
        task: Task | None = None,
        seed: int = 0,
    ) -> Self:
        """Fit the method on ``model`` and the training data ``train``; returns self.

        ``task``: the loss and measurements (default: from ``train_config``, else
        cross-entropy without an L2 term). ``seed``: the study seed the masks and trained
        models derive from (as a config's ``seed``)."""
        reporter = Reporter(quiet=not self.progress)
        if isinstance(model, nn.Module):
            self._fit_module(model, train, task or Task(), reporter)
        else:
            self._fit_trained(model, train, train_config, task, seed, reporter)
        return self

    def _fit_module(self, model: nn.Module, train: Any, task: Task, reporter: Reporter) -> None:
        if REGISTRY[self.method].family != "influence":  # they read the training records
            raise ConfigError(
                f"{self.method}: a memorization method trains its models; fit it on an arch "
                "name or a factory with train_config"
            )
        if not isinstance(train, Dataset):
            train = examples(train, "train")  # read once (a DataLoader may be costly)
        x = train.x_train if isinstance(train, Dataset) else train[0]
        self.dataset_ = as_dataset(train, n_classes_of(model, x))
        checkpoints = self.checkpoints
        settings = dict(self.settings)
        fields = REGISTRY[self.method].config_class.model_fields
        if "checkpoints" in fields:
            if not checkpoints:  # the model itself, at learning rate 1
                checkpoints = [(dict(model.named_parameters()), 1.0)]
            settings.setdefault("checkpoints", len(checkpoints))
        if "n_models" in fields:
            settings.setdefault("n_models", 1)
        self.estimator_ = REGISTRY[self.method](method_config(self.method, settings))
        self.estimator_.check_model(model)
        ensemble = ensemble_from_model(model, self.dataset_, checkpoints, self.device)
        context = PlanContext(self.dataset_.n_train, ensemble.epochs, derive_seed(0, _MASKS))
        for role, spec in self.estimator_.ensembles(context).items():
            one = spec.n_models == 1 and bool(spec.masks.all()) and not spec.keep_initial
            if not one:
                raise ConfigError(
                    f"{self.method}: its '{role}' role needs {spec.n_models} models trained "
                    "on chosen subsets; fit it on an arch name or a factory with train_config"
                )
        roles = {role: ensemble for role in self.estimator_.ensembles(context)}
        self._fit_estimator(roles, task, reporter)

    def _fit_trained(self, model, train, train_config, task, seed, reporter) -> None:
        arch = _arch_name(model)
        config = (
            train_config
            if isinstance(train_config, TrainConfig)
            else _train_config(train_config or {})
        )
        if not isinstance(train, Dataset):
            train = examples(train, "train")
        classes = train.n_classes if isinstance(train, Dataset) else int(train[1].max()) + 1
        self.dataset_ = as_dataset(train, classes)
        self.estimator_ = REGISTRY[self.method](method_config(self.method, self.settings))
        context = PlanContext(self.dataset_.n_train, config.epochs, derive_seed(seed, _MASKS))
        task = task or Task.from_train(config)
        roles: dict[str, TrainedEnsemble] = {}
        for role, spec in self.estimator_.ensembles(context).items():
            with reporter.task(
                f"train {spec.n_models} models for {self.method}", spec.n_models * config.epochs
            ) as advance:
                roles[role] = train_ensemble(
                    arch,
                    self.dataset_,
                    spec.masks,
                    config,
                    seed=derive_seed(seed, _TRAIN, int(spec.trajectory[:15], 16)),
                    checkpoint_epochs=spec.checkpoint_epochs,
                    init=spec.init,
                    order=spec.order,
                    keep_initial=spec.keep_initial,
                    device=self.device,
                    progress=advance,
                    task=task,
                )
        self._fit_estimator(roles, task, reporter)

    def _fit_estimator(self, roles, task: Task, reporter: Reporter) -> None:
        self.ensembles_ = roles
        self.task_ = task
        with reporter.task(f"fit {self.method}", None):
            self.estimator_.fit(roles, self.dataset_, task, self.device)

    def _fitted(self) -> Estimator:
        if not hasattr(self, "estimator_"):
            raise ConfigError(f"{self.method}: call fit(model, train) first")
        return self.estimator_

    def score(self) -> torch.Tensor:
        """``[n_train]`` float64 scores, higher = more memorized / more influential."""
        with Reporter(quiet=not self.progress).task(f"score {self.method}", None):
            scores = self._fitted().score()
        self.scores_ = scores
        return torch.from_numpy(scores.score.copy())

    def frame(self) -> pd.DataFrame:
        """The scores as a DataFrame: ``example_id``, ``score``, ``stderr`` (NaN: none)."""
        self.score()
        s = self.scores_
        return pd.DataFrame(
            {
                "example_id": s.example_ids,
                "score": s.score,
                "stderr": s.stderr if s.stderr is not None else float("nan"),
            }
        )

    def table(self, name: str) -> pd.DataFrame:
        """Rows of an extra table the method writes (e.g. ``"attacks"`` for ``lira``)."""
        return self._fitted().table_rows(name)


class Attributor(Scorer):
    """An influence method on the user's model: self-influence and train×target influence
    (positive: removing the training example would hurt the target)."""

    def __init__(self, method: str | None = None, **kwargs: Any) -> None:
        super().__init__(method, **kwargs)
        if REGISTRY[self.method].family != "influence":
            raise ConfigError(f"{self.method}: not an influence method; use ms.Scorer")

    def self_influence(self) -> torch.Tensor:
        """``[n_train]`` influence of each training example on its own loss."""
        return self.score()

    def influence(self, targets: Any, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> torch.Tensor:
        """``[n_train, n_targets]`` float64 influence of training example i on target t,
        computed in blocks of at most ``memory_budget`` bytes."""
        estimator = self._fitted()
        assert isinstance(estimator, InfluenceEstimator)
        x, y = examples(targets, "targets")
        total = estimator.n_train_ * len(y)
        blocks = estimator.influence  # counted block by block for the progress bar
        with Reporter(quiet=not self.progress).task(f"influence {self.method}", total) as done:

            def counted(*args: Any) -> Any:
                for block in blocks(*args):
                    done(block.values.numel())
                    yield block

            estimator.influence = counted  # type: ignore[method-assign]
            try:
                return estimator.influence_matrix(x, y, memory_budget)
            finally:
                del estimator.influence


def attribute(
    method: str, model: ModelLike, train: Any, targets: Any = None, **kwargs: Any
) -> torch.Tensor:
    """One call: the ``[n_train, n_targets]`` influence on ``targets``, or the
    ``[n_train]`` self-influence without targets. ``kwargs``: the constructor's
    (``checkpoints``, ``device``, settings) and ``fit``'s (``train_config``, ``task``,
    ``seed``)."""
    fit_keys = {k: kwargs.pop(k) for k in ("train_config", "task", "seed") if k in kwargs}
    attributor = Attributor(method, **kwargs).fit(model, train, **fit_keys)
    return attributor.self_influence() if targets is None else attributor.influence(targets)


def _train_config(settings: Mapping[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.model_validate(dict(settings))
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in ("train_config", *first["loc"]))
        problem = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{where}: {problem.removeprefix('Value error, ')}") from None


def _arch_name(model: str | Callable[..., nn.Module]) -> str:
    """A registered arch name as is; a factory registered under a name of its own."""
    if isinstance(model, str):
        if model not in ARCHITECTURES:
            raise ConfigError(f"unknown arch '{model}'; known: {', '.join(sorted(ARCHITECTURES))}")
        return model
    if not callable(model):
        raise ConfigError(f"model: expected an nn.Module, an arch name or a factory, got {model!r}")
    base = re.sub(r"[^A-Za-z0-9_-]", "_", getattr(model, "__name__", "factory"))[:40]
    name = f"user-{base}-{id(model):x}"
    register_arch(name, model, description="factory passed to mnemoscope.Scorer.fit")
    return name


# One class per influence method, named as in the field.
_CLASS_NAMES = {
    "classification_influence": "ClassificationInfluence",
    "downsampling": "Downsampling",
    "grad_cos": "GradCos",
    "grad_dot": "GradDot",
    "if_arnoldi": "IFArnoldi",
    "if_cg": "IFCG",
    "if_ekfac": "IFEKFAC",
    "if_exact": "IFExact",
    "if_lissa": "IFLiSSA",
    "knn_shapley": "KNNShapley",
    "loo": "LOO",
    "relatif": "RelatIF",
    "representer": "Representer",
    "tracin": "TracIn",
    "trak": "TRAK",
}
ATTRIBUTORS: dict[str, type[Attributor]] = {
    cls_name: type(
        cls_name,
        (Attributor,),
        {
            "method": method,
            "__doc__": f"``{method}`` on the user's model: {REGISTRY[method].summary}. "
            f"Settings: the keys of its config entry. Reference: {REGISTRY[method].reference}.",
            "__module__": __name__,
        },
    )
    for method, cls_name in _CLASS_NAMES.items()
}
globals().update(ATTRIBUTORS)
