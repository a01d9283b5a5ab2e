"""The exhaustive (slow) version of ``test_hostile_files.py``: batches of generated IDX,
npz and CSV files (hypothesis), and gzip and deflate bombs of 6 GiB, each batch in one
child process under the 4 GiB address-space limit."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.data.test_hostile_files import (
    _argv,
    _gzip_bomb,
    _mnist_with,
    _npy_header,
    _npz,
    check,
    run_cases,
)
from tests.data.writers import write_cifar10_folder

IDX_CODES = [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07, 0xFF]
NPY_DTYPES = ["<f8", "<f4", "<i8", "|u1", "|b1", "<c16", "|O", "<U3", "|V8", ">f8"]


@st.composite
def idx_folders(draw) -> dict:
    ndim = draw(st.sampled_from([3, 1, 2]))
    shape = tuple(draw(st.integers(0, 2**32 - 1) | st.integers(0, 50)) for _ in range(ndim))
    return {
        "kind": "idx",
        "header": bytes([0, 0, draw(st.sampled_from(IDX_CODES)), ndim])
        + b"".join(n.to_bytes(4, "big") for n in shape),
        "payload": draw(st.integers(0, 3000)),
        "zeros": draw(st.sampled_from([0, 0, 1 << 20, 16 << 20])),
        "gz": draw(st.booleans()),
    }


@st.composite
def npz_archives(draw) -> dict:
    shape = tuple(
        draw(st.integers(0, 2**40) | st.integers(0, 30)) for _ in range(draw(st.integers(0, 4)))
    )
    return {
        "kind": "npz",
        "shape": shape,
        "dtype": draw(st.sampled_from(NPY_DTYPES)),
        "payload": draw(st.integers(0, 4000)),
        "deflate": draw(st.booleans()),
        "claim": draw(st.none() | st.integers(0, 2**31)),
    }


@st.composite
def csv_tables(draw) -> dict:
    value = st.one_of(
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["1e39", "-1e309", "x", "", "[/bold]", "0x10"]),
    )
    return {
        "kind": "csv",
        "columns": draw(st.sampled_from([1, 2, 5, 100_001])),
        "labels": draw(st.lists(st.integers(0, 3) | value, min_size=1, max_size=30)),
        "value": draw(value),
    }


def _write_generated(tmp: Path, index: int, spec: dict) -> dict:
    folder = tmp / f"g{index}"
    if spec["kind"] == "idx":
        data = spec["header"] + bytes(spec["payload"])
        raw = _gzip_bomb(data, spec["zeros"]) if spec["gz"] else data + bytes(spec["zeros"])
        return {"path": str(_mnist_with(folder, raw, gz=spec["gz"])), "format": "idx"}
    folder.mkdir()
    if spec["kind"] == "npz":
        x = _npy_header(spec["shape"], spec["dtype"]) + bytes(spec["payload"])
        y = _npy_header((20,), "<i8") + (np.arange(20) % 2).tobytes()
        method = zipfile.ZIP_DEFLATED if spec["deflate"] else zipfile.ZIP_STORED
        path = _npz(folder / "d.npz", {"x.npy": x, "y.npy": y}, method)
        if spec["claim"] is not None:
            raw = bytearray(path.read_bytes())
            struct.pack_into("<I", raw, raw.find(b"PK\x01\x02") + 24, spec["claim"])
            path.write_bytes(bytes(raw))
        return {"path": str(path)}
    names = [f"c{i}" for i in range(spec["columns"])]
    lines = [",".join([*names, "label"])]
    labels = spec["labels"][:1] if len(names) > 1000 else spec["labels"]  # refused unread
    lines += [",".join([str(spec["value"])] * len(names) + [str(label)]) for label in labels]
    (folder / "t.csv").write_text("\n".join(lines) + "\n")
    return {"path": str(folder / "t.csv")}


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    specs=st.lists(st.one_of(idx_folders(), npz_archives(), csv_tables()), min_size=25, max_size=25)
)
def test_generated_hostile_files_exit_0_or_2_in_one_line(tmp_path_factory, specs):
    """Each batch of generated files runs in one child under the address-space limit:
    every file is read (exit 0) or refused in one line (exit 2), never a crash or a hang."""
    tmp = tmp_path_factory.mktemp("generated")
    runs = []
    for index, spec in enumerate(specs):
        entry = {"name": "g", **_write_generated(tmp, index, spec)}
        argv, _ = _argv(tmp, index, entry, dry_run=True)
        runs.append({"name": f"{index}: {spec['kind']}", "argv": argv})
    for result in run_cases(runs, tmp, timeout=25 * 60).values():
        assert "crash" not in result, (result["name"], result["crash"])
        assert result["code"] in (0, 2) and "Traceback" not in result["output"], result
        lines = [line for line in result["output"].splitlines() if line.strip()]
        if result["code"] == 2:
            assert len(lines) == 1 and lines[0].startswith("error: "), result


def _deflated_zeros(path: Path, header: bytes, zeros: int) -> Path:
    """An npz whose ``x.npy`` is ``header`` then ``zeros`` zero bytes, deflated (≈ 1/1000)."""
    y = _npy_header((20,), "<i8") + (np.arange(20) % 2).tobytes()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(header)
            block = bytes(1 << 24)
            for _ in range(zeros >> 24):
                member.write(block)
        archive.writestr("y.npy", y)
    return path


@pytest.mark.slow
def test_bombs_larger_than_the_address_space_are_refused_in_bounded_time(tmp_path):
    """Honest sizes, but more than a 4 GiB process can hold: a gzipped CIFAR batch of 6 GiB
    of zeros (valid records, so read until the memory left runs out) and an npz member of
    6 GiB of zeros (refused from its sizes, unread)."""
    zeros = 6 << 30
    cifar = tmp_path / "cifar"
    write_cifar10_folder(cifar)
    (cifar / "data_batch_1.bin").write_bytes(_gzip_bomb(b"", zeros))
    npz = _deflated_zeros(tmp_path / "bomb.npz", _npy_header((zeros // 8, 1)), zeros)
    cases = [
        ("gzip bomb in a cifar batch", {"path": str(cifar), "format": "cifar10"}, "can hold"),
        ("deflate bomb in an npz", {"path": str(npz)}, "needs 6442450944 bytes"),
    ]
    runs = []
    for index, (name, entry, _) in enumerate(cases):
        argv, _ = _argv(tmp_path, index, {"name": "b", **entry}, dry_run=True)
        runs.append({"name": name, "argv": argv})
    results = run_cases(runs, tmp_path, timeout=300)
    for name, _, fragment in cases:
        check(results[name], fragment)
