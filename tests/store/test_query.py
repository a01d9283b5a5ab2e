"""``mnemoscope query``: one read-only statement over the run's own tables, nothing else."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mnemoscope.cli import app
from mnemoscope.errors import UserError
from mnemoscope.store import SCORES, RunDir, write_parquet
from mnemoscope.store.query import QueryResult, query

N_ROWS = 12


def _make_run(root: Path) -> Path:
    root.mkdir(parents=True)
    run = RunDir(root)
    run.manifest.name = "tiny"
    run.save()
    frame = pd.DataFrame(
        {
            "dataset": "blobs",
            "arch": "mlp",
            "seed": 0,
            "family": ["memorization"] * 6 + ["influence"] * 6,
            "method": ["feldman_zhang"] * 6 + ["tracin"] * 6,
            "example_id": list(range(6)) * 2,
            "score": [i / 10 for i in range(N_ROWS)],
            "stderr": [None] * N_ROWS,
        }
    )
    write_parquet(root / "scores.parquet", frame.assign(fit=True), SCORES)
    return root


def _snapshot(*roots: Path) -> dict[str, str]:
    """Every file (and folder) under ``roots`` with its content hash (Hypothesis's own
    cache folder aside)."""
    found: dict[str, str] = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if ".hypothesis" in path.parts:
                continue
            found[str(path)] = (
                hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            )
    return found


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    """A tiny run in ``tmp_path/run``; the working directory is ``tmp_path/cwd``, so a
    relative path in the SQL would land there."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    pd.DataFrame({"secret": [42]}).to_parquet(tmp_path / "outside.parquet")
    return _make_run(tmp_path / "run")


def _refused(run_dir: Path, sql: str, match: str) -> str:
    with pytest.raises(UserError, match=match) as caught:
        query(run_dir, sql)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_select_returns_rows_and_the_limit_truncates(run_dir):
    full = query(run_dir, "SELECT method, count(*) AS n FROM scores GROUP BY 1 ORDER BY 1")
    assert isinstance(full, QueryResult) and not full.truncated
    assert full.frame.to_dict("records") == [
        {"method": "feldman_zhang", "n": 6},
        {"method": "tracin", "n": 6},
    ]
    cut = query(run_dir, "SELECT example_id, score FROM scores ORDER BY score", limit=5)
    assert cut.truncated and list(cut.frame.columns) == ["example_id", "score"]
    assert cut.frame["score"].tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    exact = query(run_dir, "SELECT * FROM scores", limit=N_ROWS)
    assert len(exact.frame) == N_ROWS and not exact.truncated
    empty = query(run_dir, "SELECT * FROM scores WHERE score > 99")
    assert empty.frame.empty and list(empty.frame.columns) == SCORES.names


def test_an_unbounded_result_is_not_materialised(run_dir):
    result = query(run_dir, "SELECT * FROM range(1000000000000)", limit=3)
    assert result.truncated and result.frame["range"].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "sql",
    [
        "WITH s AS (SELECT * FROM scores) SELECT count(*) FROM s",
        "FROM scores LIMIT 1",
        "DESCRIBE scores",
        "SHOW TABLES",
        "SUMMARIZE scores",
        "VALUES (1, 2)",
        "EXPLAIN SELECT * FROM scores",
        "EXPLAIN ANALYZE SELECT count(*) FROM scores",
        "PIVOT scores ON method IN ('tracin', 'feldman_zhang') USING count(*)",
        "SELECT 1;",
    ],
)
def test_read_statements_are_allowed(run_dir, sql):
    assert len(query(run_dir, sql).frame) >= 1


def test_only_the_runs_tables_are_visible(run_dir):
    tables = query(run_dir, "SELECT table_name FROM information_schema.tables").frame
    assert tables["table_name"].tolist() == ["scores"]
    _refused(run_dir, "SELECT * FROM examples", r"^query failed: Catalog Error")


def test_the_lockdown_is_in_force(run_dir):
    names = [
        "enable_external_access",
        "autoinstall_known_extensions",
        "autoload_known_extensions",
        "python_enable_replacements",
        "lock_configuration",
        "temp_directory",
    ]
    columns = ", ".join(f"current_setting('{name}') AS {name}" for name in names)
    values = query(run_dir, f"SELECT {columns}").frame.iloc[0].to_dict()
    assert values["enable_external_access"] is False or values["enable_external_access"] == 0
    assert not values["autoinstall_known_extensions"]
    assert not values["autoload_known_extensions"]
    assert not values["python_enable_replacements"]
    assert values["lock_configuration"]
    spill = Path(values["temp_directory"])
    assert spill.is_absolute() and not spill.exists()  # private, and removed afterwards


def test_copy_to_a_file_is_refused_and_writes_nothing(run_dir, tmp_path):
    before = _snapshot(tmp_path)
    for target in ("out.csv", str(tmp_path / "out.parquet")):
        message = _refused(run_dir, f"COPY (SELECT * FROM scores) TO '{target}'", "got COPY")
        assert message == "query: only one read-only SELECT is allowed (got COPY)"
    _refused(run_dir, "copy scores to 'out.csv' (FORMAT csv)", "got COPY")
    assert _snapshot(tmp_path) == before


def test_copy_over_the_manifest_is_refused(run_dir):
    manifest = (run_dir / "manifest.json").read_bytes()
    _refused(run_dir, f"COPY scores TO '{run_dir / 'manifest.json'}' (FORMAT json)", "got COPY")
    _refused(
        run_dir,
        f"EXPLAIN ANALYZE COPY scores TO '{run_dir / 'manifest.json'}' (FORMAT json)",
        "got EXPLAIN",
    )
    _refused(run_dir, f"EXPORT DATABASE '{run_dir}'", "got EXPORT")
    assert (run_dir / "manifest.json").read_bytes() == manifest


def test_attach_install_and_load_are_refused(run_dir, tmp_path):
    before = _snapshot(tmp_path)
    _refused(run_dir, f"ATTACH '{tmp_path / 'new.duckdb'}' AS other", "got ATTACH")
    _refused(run_dir, "ATTACH 'relative.duckdb'", "got ATTACH")
    _refused(run_dir, "INSTALL httpfs", r"\(got INSTALL\)")
    _refused(run_dir, "FORCE INSTALL httpfs", r"\(got FORCE INSTALL\)")
    _refused(run_dir, "LOAD httpfs", r"\(got LOAD\)")
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "new.duckdb").exists()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM read_text('/etc/passwd')",
        "SELECT * FROM read_blob('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_parquet('{outside}')",
        "SELECT * FROM '{outside}'",
        "SELECT * FROM read_text('{run}/manifest.json')",
        "SELECT * FROM read_parquet('{run}/scores.parquet')",  # the view, not the path
        "SELECT * FROM read_json('{run}/manifest.json')",
        "SELECT * FROM query('SELECT * FROM read_csv(''/etc/passwd'')')",
    ],
)
def test_files_outside_the_views_cannot_be_read(run_dir, tmp_path, sql):
    sql = sql.format(outside=tmp_path / "outside.parquet", run=run_dir)
    message = _refused(run_dir, sql, r"^query failed: ")
    assert "secret" not in message and "root:" not in message


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("SELECT 1; SELECT 2", "2 statements"),
        ("SELECT * FROM scores; COPY scores TO 'x.csv'", "2 statements"),
        ("SET enable_external_access = true; SELECT * FROM read_csv('/etc/passwd')", "2 "),
        ("SET enable_external_access = true", "got SET"),
        ("RESET lock_configuration", "got SET"),
        ("PRAGMA table_info('scores')", "got PRAGMA"),
        ("CREATE TABLE t AS SELECT * FROM scores", "got CREATE"),
        ("CREATE VIEW v AS SELECT 1", "got CREATE"),
        ("INSERT INTO scores SELECT * FROM scores", "got INSERT"),
        ("UPDATE scores SET score = 0", "got UPDATE"),
        ("DELETE FROM scores", "got DELETE"),
        ("DROP VIEW scores", "got DROP"),
        ("CALL pragma_version()", "got CALL"),
        ("CHECKPOINT", "got CALL"),
        ("DETACH memory", "got DETACH"),
        ("USE memory", "got SET"),
        ("BEGIN TRANSACTION", "got TRANSACTION"),
        ("PREPARE p AS SELECT 1", "got PREPARE"),
        ("EXPLAIN COPY scores TO 'x.csv'", "got EXPLAIN"),
        ("PIVOT scores ON method USING count(*)", "explicit IN"),
    ],
)
def test_anything_but_one_read_is_refused(run_dir, sql, kind):
    message = _refused(run_dir, sql, r"^query: only one read-only SELECT is allowed \(got ")
    assert kind in message


def test_locked_settings_cannot_be_reached_through_a_select(run_dir):
    # Table functions that would change a setting run as SELECTs: the lock stops them.
    _refused(run_dir, "SELECT * FROM enable_logging()", r"^query failed: .*locked")


@pytest.mark.parametrize("sql", ["", "   ", "\n\t", "-- only a comment", ";"])
def test_empty_sql(run_dir, sql):
    with pytest.raises(UserError, match=r"^query: empty SQL$"):
        query(run_dir, sql)


def test_invalid_sql_is_one_line(run_dir):
    _refused(run_dir, "SELEC * FROM scores", r"^query failed: Parser Error")
    _refused(run_dir, "SELECT nope FROM scores", r"^query failed: Binder Error")
    _refused(run_dir, "SELECT error('boom\nsecond line')", r"^query failed: .*boom$")
    _refused(run_dir, "SELECT INTERVAL 100000000 YEAR", r"^query failed: ")
    _refused(run_dir, "SELECT '\udcff'", r"^query: the SQL is not valid UTF-8")


def test_a_missing_run_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        query(tmp_path / "nope", "SELECT 1")
    with pytest.raises(UserError, match="no manifest.json"):
        query(tmp_path, "SELECT 1")


def test_a_corrupt_table_is_a_user_error(run_dir):
    (run_dir / "scores.parquet").write_bytes(b"not parquet")
    _refused(run_dir, "SELECT 1", r"^cannot read scores.parquet: ")


def test_nothing_in_the_run_or_working_directory_changes(run_dir, tmp_path):
    before = _snapshot(tmp_path)
    attempts = [
        f"COPY scores TO '{run_dir / 'manifest.json'}'",
        f"COPY scores TO '{run_dir / 'scores.parquet'}' (FORMAT parquet, USE_TMP_FILE false)",
        f"ATTACH '{run_dir / 'db.duckdb'}'",
        "INSTALL httpfs",
        "LOAD httpfs",
        f"SELECT * FROM read_parquet('{run_dir / 'scores.parquet'}')",
        "SET enable_external_access = true; COPY scores TO 'x.csv'",
        f"EXPLAIN ANALYZE COPY scores TO '{run_dir / 'scores.parquet'}'",
        f"EXPORT DATABASE '{run_dir}'",
        "SELECT * FROM scores",
        "SELECT count(*) FROM range(3000000) a ORDER BY 1",
    ]
    for sql in attempts:
        try:
            query(run_dir, sql)
        except UserError:
            pass
    assert _snapshot(tmp_path) == before


_FRAGMENTS = [
    "SELECT", "*", "FROM", "scores", "examples", "WHERE", "score", ">", "0", "1", ",", ";",
    "(", ")", "'", '"', "--", "/*", "*/", "COPY", "TO", "'out.csv'", "ATTACH", "INSTALL",
    "LOAD", "httpfs", "SET", "RESET", "enable_external_access", "=", "true", "EXPLAIN",
    "ANALYZE", "WITH", "AS", "PIVOT", "ON", "method", "read_csv('/etc/passwd')", "PRAGMA",
    "CREATE", "TABLE", "DROP", "EXPORT", "DATABASE", "CALL", "VALUES", "DESCRIBE", "SHOW",
    "INTERVAL 100000000 YEAR", "error('x')", "NULL", "LIMIT", "ORDER BY", "GROUP BY",
]  # fmt: skip
_SQL = st.one_of(
    st.text(max_size=80),
    st.text(
        st.characters(categories=["Cs", "Cc", "Lu", "Ll", "Nd", "Po", "Zs", "So"]), max_size=20
    ),
    st.lists(st.sampled_from(_FRAGMENTS), max_size=12).map(" ".join),
)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sql=_SQL)
def test_any_text_is_a_result_or_a_user_error(run_dir, tmp_path, sql):
    before = _snapshot(tmp_path)
    try:
        result = query(run_dir, sql, limit=5)
    except UserError as error:
        assert "\n" not in str(error)
    else:
        assert len(result.frame) <= 5
    assert _snapshot(tmp_path) == before


def test_cli_prints_rows_and_says_when_it_cut_them(run_dir):
    runner = CliRunner()
    shown = runner.invoke(
        app, ["query", str(run_dir), "SELECT * FROM scores ORDER BY score", "--limit", "3"]
    )
    assert shown.exit_code == 0, shown.output
    assert "(first 3 rows; --limit raises it)" in shown.output
    whole = runner.invoke(app, ["query", str(run_dir), "SELECT '[/x]' AS markup"])
    assert whole.exit_code == 0, whole.output
    assert "[/x]" in whole.output and "--limit" not in whole.output
    refused = runner.invoke(app, ["query", str(run_dir), "COPY scores TO 'x.csv'"])
    assert refused.exit_code == 2 and "got COPY" in refused.output
    assert "Traceback" not in refused.output
    zero = runner.invoke(app, ["query", str(run_dir), "SELECT 1", "--limit", "0"])
    assert zero.exit_code == 2
