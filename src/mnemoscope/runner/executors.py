"""Executors: where the stages of a plan run. Results never depend on the executor.

- :class:`LocalExecutor` (``executor: {kind: local}``, the default): in this
  process, one stage after another, with progress bars.
- :class:`RayExecutor` (``executor: {kind: ray, address: auto, num_cpus: 2}``): each
  stage a Ray task, started as soon as the stages it reads are done; a local
  cluster is started for the run (``address`` unset) or an existing one joined.
  Workers write into the run directory themselves, so a remote cluster's workers
  must see it (a shared file system).

Every stage is a deterministic function of its files and args, so the same
config and seed give identical tables under both executors and any worker count.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mnemoscope.config import ExecutorConfig
from mnemoscope.errors import ConfigError, UserError
from mnemoscope.runner.plan import Stage
from mnemoscope.runner.progress import Reporter

Done = tuple[Stage, dict[str, Any], float]


def run_stage(
    stage: Stage, root: str, threads: int, reporter: Reporter | None = None
) -> tuple[dict, float]:
    """Run one stage with ``threads`` torch threads; return its record and its seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        record = stage.function(Path(root), stage.args, reporter or Reporter(quiet=True))
        return record, time.perf_counter() - started
    except UserError as error:  # name the stage, keep the kind of error
        raise type(error)(f"{stage.name}: {error}") from None
    except (MemoryError, torch.OutOfMemoryError) as error:
        detail = str(error).strip().splitlines()
        raise UserError(
            f"{stage.name}: out of memory{f' ({detail[0]})' if detail else ''}; reduce the "
            "run's sizes (see --dry-run)"
        ) from None
    finally:
        torch.set_num_threads(before)


class LocalExecutor:
    """Stages in this process, in plan order."""

    def __init__(self, config: ExecutorConfig, reporter: Reporter) -> None:
        self.threads = config.resolved_threads()
        self.reporter = reporter

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, stages: list[Stage], root: Path) -> Iterator[Done]:
        for stage in stages:
            record, seconds = run_stage(stage, str(root), self.threads, self.reporter)
            yield stage, record, seconds


def _ray_stage(stage: Stage, root: str, threads: int, *after: Any) -> tuple[dict, float]:
    # ``after`` holds the results of the stages this one reads: passing them makes
    # Ray start it only once they are done.
    return run_stage(stage, root, threads)


class RayExecutor:
    """Stages as Ray tasks, each started once the stages it reads have finished."""

    def __init__(self, config: ExecutorConfig, reporter: Reporter) -> None:
        self.config = config
        self.reporter = reporter
        self._started_here = False

    def __enter__(self) -> RayExecutor:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "executor: kind 'ray' needs Ray; install it with: pip install 'mnemoscope[ray]'"
            ) from None
        self.ray = ray
        if not ray.is_initialized():
            options: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            if self.config.address is None:
                options["num_cpus"] = self.config.num_cpus
            else:
                options["address"] = self.config.address
            ray.init(**options)
            self._started_here = True
        self.threads = self.config.resolved_threads()
        self.remote = ray.remote(num_cpus=self.threads)(_ray_stage)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started_here:
            self.ray.shutdown()

    def run(self, stages: list[Stage], root: Path) -> Iterator[Done]:
        ray = self.ray
        refs: dict[str, Any] = {}
        pending: dict[Any, Stage] = {}
        for stage in stages:
            after = [refs[name] for name in stage.after if name in refs]
            ref = self.remote.remote(stage, str(root), self.threads, *after)
            refs[stage.name] = ref
            pending[ref] = stage
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    stage = pending.pop(ref)
                    try:
                        record, seconds = ray.get(ref)
                    except ray.exceptions.RayTaskError as error:
                        raise error.cause from None
                    yield stage, record, seconds
        finally:
            for ref in pending:
                ray.cancel(ref)


def make_executor(config: ExecutorConfig, reporter: Reporter) -> LocalExecutor | RayExecutor:
    """The executor the config names."""
    if config.kind == "ray":
        return RayExecutor(config, reporter)
    return LocalExecutor(config, reporter)
