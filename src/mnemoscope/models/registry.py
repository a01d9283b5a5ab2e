"""Architecture registry: a name, an input shape, a class count and options give an ``nn.Module``.

Every architecture must run under ``torch.func.vmap``: over stacked parameters (the
ensemble trainer) and over single examples (per-example gradients). So none uses
BatchNorm (its running statistics are buffers mutated in place, and its batch statistics
mix the examples of a batch); where normalisation helps, GroupNorm or LayerNorm is used
instead. :func:`build_model` checks this for every architecture, built-in or registered
with :func:`register_arch`, and refuses a model that breaks it.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field, ValidationError
from torch import nn
from torch.func import functional_call, grad, vmap

from mnemoscope.errors import ConfigError
from mnemoscope.models.options import MAX_WIDTH, ArchOptions
from mnemoscope.models.resnet import ResNetOptions, build_resnet
from mnemoscope.models.transformer import TransformerOptions, build_transformer

Factory = Callable[..., nn.Module]
"""``factory(input_shape, n_classes, **options) -> nn.Module``."""


@dataclass(frozen=True)
class Architecture:
    """``build(input_shape, n_classes, **options)``; ``options``: the strict pydantic
    model of the keyword options it takes (None: it takes none)."""

    name: str
    description: str
    build: Factory
    options: type[ArchOptions] | None = None
    builtin: bool = True


class ArchOptionError(ConfigError):
    """A bad architecture option; ``loc`` is ``arch.option`` (or ``arch``)."""

    def __init__(self, loc: str, problem: str) -> None:
        super().__init__(f"arch_options.{loc}: {problem}")
        self.loc, self.problem = loc, problem


class MLPOptions(ArchOptions):
    width: int = Field(128, ge=1, le=MAX_WIDTH)
    """Units of each of the two hidden layers; at most 4096."""


def _logreg(input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), n_classes))


def _mlp(input_shape: tuple[int, ...], n_classes: int, width: int = 128) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, n_classes),
    )


def _cnn(input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Two conv blocks then a small classifier; 2-D for ``[C, H, W]``, 1-D for ``[C, L]``."""
    if len(input_shape) == 3:
        conv, pool, (channels, *spatial) = nn.Conv2d, nn.MaxPool2d, input_shape
        kernel = 3
    elif len(input_shape) == 2:
        conv, pool, (channels, *spatial) = nn.Conv1d, nn.MaxPool1d, input_shape
        kernel = 5
    else:
        raise ConfigError(
            f"arch 'cnn' needs image [C, H, W] or sequence [C, L] inputs, got shape {input_shape}"
        )
    pad = kernel // 2
    out_spatial = math.prod(s // 4 for s in spatial)
    if out_spatial == 0:
        raise ConfigError(f"arch 'cnn' needs spatial size >= 4, got input shape {input_shape}")
    return nn.Sequential(
        conv(channels, 8, kernel, padding=pad),
        nn.GroupNorm(4, 8),
        nn.ReLU(),
        pool(2),
        conv(8, 16, kernel, padding=pad),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        pool(2),
        nn.Flatten(),
        nn.Linear(16 * out_spatial, 64),
        nn.ReLU(),
        nn.Linear(64, n_classes),
    )


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("logreg", "multinomial logistic regression (one linear layer)", _logreg),
        Architecture("mlp", "two hidden layers of `width` (128) ReLU units", _mlp, MLPOptions),
        Architecture(
            "cnn", "two conv+GroupNorm+ReLU+maxpool blocks, 2-D or 1-D by input shape", _cnn
        ),
        Architecture(
            "resnet",
            "stem + `depth` (2) residual conv+GroupNorm blocks of `width` (16) channels, "
            "2-D or 1-D by input shape (residual MLP for vectors), average pool",
            build_resnet,
            ResNetOptions,
        ),
        Architecture(
            "transformer",
            "patch embedding + `depth` (2) pre-norm blocks of `width` (32), `heads` (4) "
            "attention heads, LayerNorm, mean pool or class token",
            build_transformer,
            TransformerOptions,
        ),
    )
}

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,63}")
_CHECKED: set[tuple[Any, ...]] = set()
"""(arch, factory, input shape, classes, options) already checked by :func:`build_model`."""


def register_arch(
    name: str,
    factory: Factory,
    *,
    description: str = "user architecture",
    options: type[ArchOptions] | None = None,
) -> Factory:
    """Make ``factory(input_shape, n_classes) -> nn.Module`` known as ``name`` (and to the config).

    ``options``: an :class:`~mnemoscope.models.options.ArchOptions` subclass listing the
    keyword options ``factory`` takes (``arch_options`` in a config); None: it takes none.
    Registering a name again replaces it; a built-in name cannot be replaced. The model is
    checked when it is built (:func:`build_model`): no BatchNorm, and a forward that runs
    on a batch, under vmap over models and on single examples under ``vmap(grad)``.
    A run's training cache key includes ``factory``'s source (:func:`arch_source`).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"arch name {name!r}: expected a letter then up to 63 letters, digits, '_' or '-'"
        )
    if name in ARCHITECTURES and ARCHITECTURES[name].builtin:
        raise ConfigError(f"arch '{name}' is built in and cannot be replaced; choose another name")
    if not callable(factory):
        raise ConfigError(f"arch '{name}': the factory must be callable, got {type(factory)}")
    if options is not None and not (isinstance(options, type) and issubclass(options, ArchOptions)):
        raise ConfigError(f"arch '{name}': options must be an ArchOptions subclass or None")
    ARCHITECTURES[name] = Architecture(name, description, factory, options, builtin=False)
    return factory


def _architecture(arch: str) -> Architecture:
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown arch '{arch}'; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch]


def arch_options(arch: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` validated against ``arch``'s options model, with every option's default
    filled in (so giving an option its default value changes nothing, cache keys included).

    Raises :class:`ArchOptionError` (a :class:`ConfigError`) naming the option.
    """
    model = _architecture(arch).options
    if not isinstance(options, Mapping):
        raise ArchOptionError(arch, "expected a mapping of option names to values")
    if model is None:
        if options:
            raise ArchOptionError(arch, f"arch '{arch}' takes no options")
        return {}
    try:
        validated = model.model_validate(dict(options))
    except ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in (arch, *first["loc"]))
        if first["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields)
            raise ArchOptionError(where, f"unknown option; known: {known}") from None
        raise ArchOptionError(where, first["msg"].removeprefix("Value error, ")) from None
    return validated.model_dump(mode="json")


def arch_source(arch: str) -> str:
    """SHA-256 of the source of ``arch``'s factory (a class: the class) where it can be
    read, else of its qualified name: part of the training cache key, so editing a
    registered factory retrains."""
    factory = _architecture(arch).build
    try:
        text = inspect.getsource(factory)
    except (OSError, TypeError):
        text = f"{getattr(factory, '__module__', '')}.{getattr(factory, '__qualname__', factory)}"
    return hashlib.sha256(text.encode()).hexdigest()


def build_model(
    arch: str, input_shape: tuple[int, ...], n_classes: int, **options: Any
) -> nn.Module:
    """Build a freshly initialised ``arch`` (init drawn from torch's global RNG).

    ``options`` are checked against the architecture's options (:func:`arch_options`).
    The model is refused (:class:`ConfigError`) if it contains BatchNorm or if its
    forward fails on a batch, under vmap over models or on one example under
    ``vmap(grad)``; that check runs once per process for each arch, shape and options.
    """
    architecture = _architecture(arch)
    settings = arch_options(arch, options)
    shape = tuple(int(s) for s in input_shape)
    try:
        module = architecture.build(shape, n_classes, **settings)
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(
            f"arch '{arch}': building the model for input shape {list(shape)} and "
            f"{n_classes} classes failed ({_first_line(error)})"
        ) from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"arch '{arch}': the factory returned {type(module)}, not an nn.Module")
    _refuse_batchnorm(arch, module)
    if not any(p.requires_grad for p in module.parameters()):
        raise ConfigError(
            f"arch '{arch}': the model has no trainable parameters; there is nothing to train"
        )
    key = (arch, architecture.build, shape, n_classes, repr(sorted(settings.items())))
    if key not in _CHECKED:
        _check_vmap(arch, module, shape, n_classes)
        _CHECKED.add(key)
    return module


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    detail = text[0] if text else ""
    detail = detail if len(detail) <= 200 else detail[:199] + "…"
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def _refuse_batchnorm(arch: str, module: nn.Module) -> None:
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            raise ConfigError(
                f"arch '{arch}': {type(sub).__name__} at '{name}' cannot be used: its running "
                "statistics are buffers updated in place from a whole batch, not per example, "
                "and vmap over stacked models cannot update them; use nn.GroupNorm or "
                "nn.LayerNorm instead"
            )


def _check_vmap(arch: str, module: nn.Module, shape: tuple[int, ...], n_classes: int) -> None:
    """Run the forward passes the trainer and the gradient methods run, on 3 examples."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, *shape, generator=generator)
    y = torch.arange(3) % n_classes
    params = {k: v.detach() for k, v in module.named_parameters()}
    stacked = {k: v.expand(2, *v.shape) for k, v in params.items()}

    def forward(p: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(module, p, (xb,))

    def example_value(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor):
        # a scalar of the [1, n_classes] logits of one example exercises vmap(grad) through
        # the forward as a loss does (the loss belongs to the task, not imported here)
        return functional_call(module, p, (xi[None],)).logsumexp(1).sum()

    checks = (
        ("on a batch [B, *input_shape]", lambda: forward(params, x), (3, n_classes)),
        (
            "under torch.func.vmap over stacked models",
            lambda: vmap(forward)(stacked, x.expand(2, *x.shape)),
            (2, 3, n_classes),
        ),
        (
            "on single examples under torch.func.vmap(grad) (per-example gradients)",
            lambda: vmap(grad(example_value), in_dims=(None, 0, 0))(params, x, y),
            None,
        ),
    )
    hint = (
        "a model must take a batch [B, *input_shape], return logits [B, n_classes], treat "
        "each example independently (no BatchNorm, dropout or in-place buffer updates) and "
        "avoid data-dependent Python control flow and .item()"
    )
    for where, run, expected in checks:
        try:
            out = run()
        except Exception as error:
            raise ConfigError(
                f"arch '{arch}': the forward pass fails {where} ({_first_line(error)}); {hint}"
            ) from None
        if expected is not None and tuple(out.shape) != expected:
            raise ConfigError(
                f"arch '{arch}': the forward pass {where} returns shape {list(out.shape)}, "
                f"expected {list(expected)}; {hint}"
            )
