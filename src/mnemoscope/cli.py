"""The ``mnemoscope`` command: argument handling only; the work lives in the packages."""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console, ConsoleDimensions
from rich.table import Table
from rich.text import Text

from mnemoscope.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Per-example memorization and influence of neural networks, and how they relate.",
)
PIPE_WIDTH = 10_000
"""Columns of a console whose output is not a terminal: piped output is never cut."""


class PipeConsole(Console):
    """A console that keeps the terminal's width on a terminal and does not wrap or cut
    anything (names, table cells) to 80 columns when its output is piped or redirected.
    ``COLUMNS`` in the environment sizes a terminal only (Rich would fix the width from it
    at construction, piped or not)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if kwargs.get("width") is None:
            self._width = None  # Console.size reads COLUMNS on a terminal

    def _size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        if self._width is None and not self.is_terminal:
            return ConsoleDimensions(PIPE_WIDTH, size.height)
        return size

    size = property(_size, Console.size.fset)


out_console = PipeConsole()
err_console = PipeConsole(stderr=True)
# every table a run can hold (mnemoscope.store.tables.TABLES; a test keeps them equal),
# written out so that `--help` needs no pyarrow
QUERY_TABLES = (
    "examples",
    "scores",
    "correlations",
    "detection",
    "influence",
    "attacks",
    "attack_roc",
    "score_parts",
    "influence_eval",
    "fits",
    "overlap",
    "cross_arch",
    "leakage",
    "applications",
    "removal",
    "dp",
)
F = TypeVar("F", bound=Callable[..., Any])


_DISK_ERRORS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,  # the file-size limit (ulimit -f)
    errno.EIO,
}


def _one_line(message: str) -> None:
    # the message holds user text (paths, SQL): Text, so nothing in it is read as markup
    err_console.print(
        Text.assemble(("error:", "red"), " ", message), highlight=False, soft_wrap=True
    )


def user_errors(command: F) -> F:
    """Turn a :class:`UserError` (or a file system that refuses a write: read-only,
    full, no permission, over the file-size limit; or memory running out) into one line
    on stderr and exit code 2, no traceback; Ctrl-C into one line and exit code 130.
    Everything written so far is whole (atomic writes), so the same command resumes."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as error:
            _one_line(str(error))
            raise typer.Exit(2) from None
        except OSError as error:
            if error.errno not in _DISK_ERRORS:
                raise
            _one_line(f"cannot write {error.filename or 'the run directory'}: {error.strerror}")
            raise typer.Exit(2) from None
        except MemoryError as error:
            detail = f" ({str(error).splitlines()[0]})" if str(error).strip() else ""
            _one_line(f"out of memory{detail}; reduce the run's sizes (see --dry-run)")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; run the same command to resume", highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _run_and_summarise(config: Any, out: Path, force: bool, dry_run: bool) -> None:
    from mnemoscope.report.summary import summary_table
    from mnemoscope.runner import Reporter, Study

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    study = Study(config, out, Reporter(err_console), force=force)
    if dry_run:
        plan = "\n".join(study.dry_run())
        out_console.print(plan, highlight=False, soft_wrap=True, markup=False)
        return
    result = study.execute()
    if result.all_cached:
        err_console.print(
            f"nothing to do: all {len(result.outcomes)} stages already finished in {out} "
            "(same config, data and code)",
            markup=False,
        )
    out_console.print(summary_table(out))
    if config.study is not None:
        from mnemoscope.report.answer import answer

        out_console.print("The answer:", highlight=False)
        for sentence in answer(out):
            out_console.print(f"  {sentence}", highlight=False, markup=False, soft_wrap=True)
    out_console.print(f"report: {result.report.resolve()}", highlight=False, markup=False)


FORCE = typer.Option(False, "--force", help="Replace a run of a different config in --out.")
DRY_RUN = typer.Option(
    False, "--dry-run", help="Print the plan and its estimated cost; run nothing."
)


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(
        None, "--out", help="Run directory [default: mnemoscope-demo, or -quick]."
    ),
    quick: bool = typer.Option(False, "--quick", help="The study's --quick size, a few minutes."),
    force: bool = FORCE,
    dry_run: bool = DRY_RUN,
) -> None:
    """Run the default study at demo size: digits and MNIST-1D with flipped labels,
    canaries and corrupted inputs, five architectures; prints the answer."""
    from mnemoscope.runner import demo_config

    out = out or Path("mnemoscope-demo-quick" if quick else "mnemoscope-demo")
    _run_and_summarise(demo_config(quick), out, force, dry_run)


@app.command()
@user_errors
def study(
    config: Path = typer.Argument(
        None, help="Study config (YAML) with a `study:` section [default: the built-in study]."
    ),
    out: Path = typer.Option(
        None, "--out", help="Run directory [default: mnemoscope-study, or -quick]."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="Shrink the study as its `study.quick` section says."
    ),
    force: bool = FORCE,
    dry_run: bool = DRY_RUN,
    print_default: bool = typer.Option(
        False, "--print-default", help="Print the default study's YAML (to copy and edit)."
    ),
) -> None:
    """Relate influence to memorization across architectures: which scores track which,
    how strongly, which cheap score finds the examples that leak, what removing them costs."""
    from mnemoscope.runner.default_study import default_study_text, study_config

    if print_default:
        sys.stdout.write(default_study_text())
        return
    cfg = study_config(config, quick)
    out = out or Path("mnemoscope-study-quick" if quick else "mnemoscope-study")
    _run_and_summarise(cfg, out, force, dry_run)


@app.command()
@user_errors
def run(
    config: Path = typer.Argument(..., help="Study config (YAML)."),
    out: Path = typer.Option(..., "--out", help="Run directory (created; reused to resume)."),
    force: bool = FORCE,
    dry_run: bool = DRY_RUN,
) -> None:
    """Run a study from a YAML config; a run of the same config in --out is resumed."""
    from mnemoscope.config import load_config

    study = load_config(config)  # validated before anything is written
    _run_and_summarise(study, out, force, dry_run)


@app.command()
@user_errors
def report(run_dir: Path = typer.Argument(..., help="A finished run directory.")) -> None:
    """(Re)draw report.html from a run directory's tables."""
    from mnemoscope.report import render_report
    from mnemoscope.store import RunDir

    RunDir.existing(run_dir)
    out_console.print(f"report: {render_report(run_dir).resolve()}", markup=False)


@app.command()
def datasets() -> None:
    """List the built-in datasets."""
    from mnemoscope.catalog import load_catalog  # not the data package: no torch to start

    table = Table("name", "kind", "classes", "description", title="built-in datasets")
    for spec in load_catalog()["datasets"]:
        table.add_row(spec["name"], spec["kind"], str(spec["n_classes"]), Text(spec["description"]))
    out_console.print(table)


@app.command()
def archs() -> None:
    """List the built-in architectures and their `arch_options` (with defaults)."""
    from mnemoscope.catalog import load_catalog

    table = Table("name", "description", "arch_options (default)", title="architectures")
    for arch in load_catalog()["archs"]:
        options = ", ".join(f"{key} ({default})" for key, default in arch["options"])
        table.add_row(arch["name"], Text(arch["description"]), Text(options or "none"))
    out_console.print(table)


@app.command()
@user_errors
def methods(
    name: str = typer.Argument(None, help="One method: print its full description."),
) -> None:
    """List the memorization and influence estimators: summary, cost and reference."""
    from mnemoscope.catalog import load_catalog

    known = {method["name"]: method for method in load_catalog()["methods"]}
    if name is not None:
        if name not in known:
            raise UserError(f"unknown method '{name}'; known: {', '.join(sorted(known))}")
        from mnemoscope.plaintext import rst_to_text

        method = known[name]
        out_console.print(f"{name} ({method['family']})\n", highlight=False)
        text = rst_to_text(method["doc"], min(out_console.width, 88))
        out_console.print(text, highlight=False, markup=False, soft_wrap=True)
        out_console.print(
            f"\ncost: {method['cost']}\nreference: {method['reference']}",
            highlight=False,
            markup=False,
        )
        # one hop to the code: the file and line of the class
        where = Path(__file__).parent / method["source"] if method["source"] else None
        source = f"{where}:{method['line']}" if where else f"{method['qualname']} (no source file)"
        out_console.print(f"source: {source}", highlight=False, markup=False, soft_wrap=True)
        return
    table = Table("method", "family", "what it measures", "cost", "reference", title="estimators")
    for method in known.values():  # the catalog lists them by family, then name
        table.add_row(
            method["name"], method["family"], method["summary"], method["cost"], method["reference"]
        )
    out_console.print(table)
    out_console.print(
        "Definitions, signs, normalisation, cost and references: docs/methods.md in the "
        "mnemoscope source tree; `mnemoscope methods NAME` prints one method's description.",
        highlight=False,
    )


@app.command()
@user_errors
def query(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    sql: str = typer.Argument(
        ...,
        help="One read-only SELECT over the run's tables, each a view of its name: "
        + ", ".join(QUERY_TABLES)
        + " (the study's tables where the run is a study).",
    ),
    limit: int = typer.Option(
        50, "--limit", min=1, max=1_000_000, help="Print at most this many rows."
    ),
    output: str = typer.Option(
        "table",
        "--format",
        help="table (aligned, for reading), csv or json (an array of row objects), for "
        "other programs.",
    ),
    timeout: float = typer.Option(
        120.0, "--timeout", min=0.1, max=86_400, help="Stop the query after this many seconds."
    ),
) -> None:
    """Query a run's Parquet tables with one read-only DuckDB SELECT (no file access)."""
    from mnemoscope.store.query import query as run_query

    if output not in ("table", "csv", "json"):
        raise UserError(f"--format: expected table, csv or json, got {output!r}")
    result = run_query(run_dir, sql, limit, timeout)
    note = f"(first {limit} rows; --limit raises it)"
    if output == "csv":
        sys.stdout.write(result.frame.to_csv(index=False))
    elif output == "json":
        records = json.loads(
            result.frame.to_json(orient="records", date_format="iso", double_precision=15)
        )
        sys.stdout.write(json.dumps(records, ensure_ascii=False) + "\n")
    else:
        table = Table()  # cells as Text: a value like '[/x]' is data, not Rich markup
        for column in result.frame.columns:
            table.add_column(Text(str(column)))
        for row in result.frame.itertuples(index=False, name=None):
            table.add_row(*[Text(f"{v:.4g}" if isinstance(v, float) else str(v)) for v in row])
        out_console.print(table)
    if result.truncated:  # on stderr for csv and json: their output stays parseable
        (out_console if output == "table" else err_console).print(note, highlight=False)
