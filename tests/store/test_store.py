"""Atomic writes, table contracts and content-hash keys."""

from __future__ import annotations

import pandas as pd
import pytest

from mnemoscope.store import SCORES, code_version, content_hash, write_parquet, write_text
from mnemoscope.store.rundir import safe_name


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "t.parquet"
    good = pd.DataFrame({c: [] for c in SCORES.names})
    write_parquet(target, good, SCORES)
    before = target.read_bytes()
    with pytest.raises(ValueError, match="missing columns"):
        write_parquet(target, pd.DataFrame({"dataset": ["x"]}), SCORES)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_write_text_replaces(tmp_path):
    write_text(tmp_path / "a.txt", "one")
    write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"


def test_content_hash_is_order_independent_and_sensitive():
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})
    assert code_version("mnemoscope.train") != code_version("mnemoscope.data")


def test_safe_name():
    assert safe_name("digits", "../x y", "m") == "digits__.._x_y__m"
