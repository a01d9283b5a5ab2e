"""Read-only SQL over a run's Parquet tables with DuckDB (``mnemoscope query DIR "SQL"``).

The SQL sees the run's tables and nothing else, and cannot write anything:

* each table of the run that exists (``examples``, ``scores``, ``correlations``,
  ``detection``, ``influence``) is registered as a lazily scanned Arrow dataset in a
  fresh in-memory DuckDB connection. Pyarrow reads the file, not DuckDB, so DuckDB
  itself needs no file access at all (a view over ``read_parquet`` stops working once
  external access is off, and ``allowed_paths`` would let ``COPY`` overwrite the file);
* then external access (every file and network operation: ``read_csv``, ``COPY TO``,
  ``ATTACH``, ``INSTALL``, ...), extension auto-install/auto-load and Python replacement
  scans (SQL naming a Python variable) are switched off and the configuration is locked,
  so the SQL cannot switch them back on. DuckDB spills to a private temporary
  directory that is removed afterwards, never to the working directory;
* the SQL must be exactly one read statement (``SELECT``, ``WITH ... SELECT``,
  ``FROM ...``, ``VALUES``, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``, or ``EXPLAIN`` of one).

At most ``limit`` rows are fetched (one more to know whether there are more); the
result is streamed, never materialised whole in Python. The statement runs for at most
``timeout`` seconds (:data:`DEFAULT_TIMEOUT`), then DuckDB is interrupted and the query
fails in one line; SIGTERM, SIGHUP and Ctrl-C interrupt it the same way, so the spill
directory is removed whatever ends the query.
"""

from __future__ import annotations

import re
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from mnemoscope.errors import UserError
from mnemoscope.store.rundir import RunDir
from mnemoscope.store.tables import TABLES

DEFAULT_LIMIT = 50
DEFAULT_TIMEOUT = 120.0
"""Seconds a query may run (``--timeout``)."""
MAX_TIMEOUT = 86_400.0
_STOP_GRACE = 30.0  # seconds an interrupted DuckDB gets to stop before the query gives up
_TERMINATING = (signal.SIGTERM, signal.SIGHUP)
_READ = duckdb.StatementType.SELECT
_EXPLAIN = re.compile(r"\s*EXPLAIN\s+(?:ANALY[SZ]E\s+)?", re.IGNORECASE)
_LOCKDOWN = (
    "SET python_enable_replacements = false",
    "SET enable_external_access = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET lock_configuration = true",  # last: nothing above can be changed by the SQL
)
# Value conversions to Python can fail outside DuckDB's own errors (a huge INTERVAL
# raises OverflowError): still a failed query, not a crash.
_FAILURES = (duckdb.Error, ArithmeticError, ValueError)


@dataclass(frozen=True)
class QueryResult:
    """The first ``limit`` rows of a query, and whether it had more."""

    frame: pd.DataFrame
    truncated: bool


def query(
    run_dir: Path, sql: str, limit: int = DEFAULT_LIMIT, timeout: float = DEFAULT_TIMEOUT
) -> QueryResult:
    """Run one read-only statement ``sql`` over the run's tables; at most ``limit`` rows,
    at most ``timeout`` seconds.

    Anything else (writes, ``COPY``, ``ATTACH``, ``INSTALL``/``LOAD``, ``SET``, several
    statements, files outside the run's tables, invalid SQL, a statement still running
    after ``timeout``) is a one-line :class:`UserError`.
    """
    if limit < 1:
        raise UserError(f"query: the row limit must be at least 1 (got {limit})")
    if not 0 < timeout <= MAX_TIMEOUT:
        raise UserError(f"query: the time limit must be in (0, {MAX_TIMEOUT:g}] s (got {timeout})")
    if not sql.strip():
        raise UserError("query: empty SQL")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError("query: the SQL is not valid UTF-8 text") from None
    run = RunDir.existing(run_dir)
    with _terminate_as_exit(), tempfile.TemporaryDirectory(prefix="mnemoscope-query-") as spill:
        connection = duckdb.connect(":memory:")
        try:
            _open_tables(connection, run, Path(spill))
            _check_read_only(connection, sql)
            rows, columns = _fetch_in_time(connection, sql, limit + 1, timeout)
        except _FAILURES as error:
            lines = str(error).strip().splitlines() or [type(error).__name__]
            raise UserError(f"query failed: {lines[0]}") from None
        finally:
            connection.close()
    frame = pd.DataFrame.from_records(rows[:limit], columns=columns)
    return QueryResult(frame=frame, truncated=len(rows) > limit)


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """While the query runs, SIGTERM and SIGHUP raise :class:`SystemExit` (exit status
    128 + signal) instead of ending the process on the spot, so clean-up runs."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; its own stay in force
        return

    def exit_cleanly(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {number: signal.signal(number, exit_cleanly) for number in _TERMINATING}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _fetch_in_time(
    connection: duckdb.DuckDBPyConnection, sql: str, n_rows: int, timeout: float
) -> tuple[list[tuple], list[str]]:
    """The first ``n_rows`` rows of ``sql`` and its column names, run in a worker thread
    so this one can interrupt DuckDB when ``timeout`` passes or a signal arrives."""
    outcome: dict[str, object] = {}
    # an Event, not Thread.join: a join interrupted by a signal marks the thread stopped
    # while it still runs (CPython 3.11)
    done = threading.Event()

    def work() -> None:
        try:
            cursor = connection.execute(sql)
            outcome["rows"] = cursor.fetchmany(n_rows)
            outcome["columns"] = [str(column[0]) for column in cursor.description or []]
        except BaseException as error:  # handed to the caller's thread, raised there
            outcome["error"] = error
        finally:
            done.set()

    threading.Thread(target=work, name="mnemoscope-query", daemon=True).start()
    try:
        finished = done.wait(timeout)
    except BaseException:  # Ctrl-C, or SIGTERM as SystemExit: stop DuckDB, then leave
        _interrupt(connection, done)
        raise
    if not finished:
        _interrupt(connection, done)
        raise UserError(f"query: stopped at the time limit of {timeout:g} s (--timeout raises it)")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["rows"], outcome["columns"]  # type: ignore[return-value]


def _interrupt(connection: duckdb.DuckDBPyConnection, done: threading.Event) -> None:
    """Interrupt DuckDB until the statement has stopped (an interrupt that arrives before
    it starts is lost, so it is repeated), for at most ``_STOP_GRACE`` seconds."""
    deadline = time.monotonic() + _STOP_GRACE
    while not done.is_set() and time.monotonic() < deadline:
        connection.interrupt()
        done.wait(0.05)


def _open_tables(connection: duckdb.DuckDBPyConnection, run: RunDir, spill: Path) -> None:
    """Register the run's tables, then shut DuckDB off from files, network and Python."""
    for table in TABLES:
        if run.has_table(table):
            path = run.path(f"{table}.parquet")
            try:
                dataset = ds.dataset(str(path), format="parquet")
            except (pa.ArrowException, OSError) as error:
                lines = str(error).strip().splitlines() or [type(error).__name__]
                raise UserError(f"cannot read {path.name}: {lines[0]}") from None
            connection.register(table, dataset)
    connection.execute(f"SET temp_directory = {_literal(str(spill))}")
    for setting in _LOCKDOWN:
        connection.execute(setting)


def _check_read_only(connection: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Accept exactly one statement that only reads (or an ``EXPLAIN`` of one)."""
    statements = connection.extract_statements(sql)
    if not statements:
        raise UserError("query: empty SQL")
    if len(statements) > 1:
        raise _refusal(f"{len(statements)} statements")
    statement = statements[0]
    if statement.type == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE runs its statement: what is explained must be a read too.
        prefix = _EXPLAIN.match(statement.query)
        inner = connection.extract_statements(statement.query[prefix.end() :]) if prefix else []
        if len(inner) != 1 or inner[0].type != _READ:
            raise _refusal("EXPLAIN of something other than one SELECT")
    elif statement.type != _READ:
        raise _refusal(_kind(statement))


def _kind(statement: duckdb.Statement) -> str:
    kind = statement.type.name
    if statement.type == duckdb.StatementType.LOAD:  # INSTALL parses as LOAD
        word = re.match(r"\s*((?:FORCE\s+)?\w+)", statement.query)
        kind = " ".join(word.group(1).upper().split()) if word else kind
    if statement.type == duckdb.StatementType.MULTI:
        kind += "; a PIVOT needs an explicit IN (...) list"
    return kind


def _refusal(got: str) -> UserError:
    return UserError(f"query: only one read-only SELECT is allowed (got {got})")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
