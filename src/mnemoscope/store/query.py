"""SQL over a run's Parquet tables with DuckDB (``mnemoscope query DIR "SQL"``)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from mnemoscope.errors import UserError
from mnemoscope.store.rundir import RunDir
from mnemoscope.store.tables import TABLES


def query(run_dir: Path, sql: str) -> pd.DataFrame:
    """Run ``sql`` with each table of the run that exists (``examples``, ``scores``,
    ``correlations``, ``detection``, ``influence``) available as a view of that name."""
    run = RunDir.existing(run_dir)
    connection = duckdb.connect()
    try:
        for table in TABLES:
            if run.has_table(table):
                literal = str(run.path(f"{table}.parquet")).replace("'", "''")
                connection.execute(
                    f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{literal}')"
                )
        return connection.execute(sql).df()
    except duckdb.Error as error:
        first_line = str(error).strip().splitlines()[0]
        raise UserError(f"query failed: {first_line}") from None
    finally:
        connection.close()
