"""Hostile data files and paths, run through ``mnemoscope run --dry-run`` (and ``run``) in a
child process under a 4 GiB address-space limit: headers claiming huge sizes, gzip and
deflate bombs, devices and FIFOs, out-of-folder references, markup in paths; with them,
in the same child, hostile ``register_dataset`` and ``query`` calls, a run larger than
the limit and a write over the file-size limit (a full disk). Each case exits 0 (valid
input) or 2 with one line naming the file, in bounded time, with no traceback and
nothing written.

The child (``tests/hostile_child.py``) runs every case in one process, so the interpreter
and torch are imported once; the limit applies to it, never to pytest.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import resource
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mnemoscope.config import parse_config
from mnemoscope.runner import Study
from tests.data.writers import idx_bytes, write_cifar10_folder, write_mnist_folder
from tests.runner.test_hostile_failures import NEEDS_5_GIB, TINY

ADDRESS_SPACE = 4 * 2**30
ROOT = Path(__file__).resolve().parents[2]
Case = tuple[str, dict, str | None]  # name, dataset entry, None (valid) or an error fragment


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def run_cases(cases: list[dict], tmp_path: Path, timeout: float) -> dict[str, dict]:
    """Each case's ``{code, output, crash?, seconds}`` from one limited child process."""
    listing = tmp_path / "cases.json"
    listing.write_text(json.dumps(cases))
    env = os.environ | {"PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "COLUMNS": "300"}
    child = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "hostile_child.py"), str(listing)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_limit_address_space,
        env=env,
        cwd=tmp_path,
    )
    results = {}
    for line in child.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            results[result["name"]] = result
    assert len(results) == len(cases), child.stdout + child.stderr[-3000:]
    return results


def check(result: dict, expected: str | None, out: Path | None = None) -> None:
    """Exit 0 for a valid case; else exit 2, one line holding ``expected``, nothing written."""
    name, output = result["name"], result["output"]
    assert "crash" not in result, f"{name}: {result['crash']}"
    assert "Traceback" not in output, f"{name}: {output}"
    assert result["seconds"] < 60, name
    if expected is None:
        assert result["code"] == 0, f"{name}: {output}"
        return
    lines = [line for line in output.splitlines() if line.strip()]
    assert result["code"] == 2 and len(lines) == 1, f"{name}: {output}"
    assert lines[0].startswith("error: ") and expected in lines[0], f"{name}: {lines[0]}"
    if out is not None:
        assert not out.exists(), name


# --- the hostile files --------------------------------------------------------------------


def _csv(folder: Path, name: str, labels: list[int]) -> Path:
    path = folder / name
    pd.DataFrame({"a": np.arange(len(labels), dtype=float), "label": labels}).to_csv(
        path, index=False
    )
    return path


def _idx_header(ndim: int, shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, 0x08, ndim]) + b"".join(n.to_bytes(4, "big") for n in shape)


def _mnist_with(folder: Path, images: bytes, gz: bool = False) -> Path:
    write_mnist_folder(folder)
    name = "train-images-idx3-ubyte"
    if gz:
        (folder / name).unlink()
        name += ".gz"
    (folder / name).write_bytes(images)
    return folder


def _gzip_bomb(prefix: bytes, zeros: int) -> bytes:
    """gzip of ``prefix`` then ``zeros`` zero bytes (≈ 1000 times smaller than it expands)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    block = bytes(1 << 20)
    parts = [compressor.compress(prefix)]
    for _ in range(zeros >> 20):
        parts.append(compressor.compress(block))
    return b"".join(parts) + compressor.flush()


def _npy_header(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _npz(path: Path, members: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compress) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _npz_claiming(path: Path, file_size: int) -> Path:
    """A valid npz whose central directory claims ``x.npy`` holds ``file_size`` bytes."""
    x = np.zeros((20, 3))
    members = {"x.npy": _npy_header(x.shape) + x.tobytes()}
    members["y.npy"] = _npy_header((20,), "<i8") + (np.arange(20) % 2).tobytes()
    raw = bytearray(_npz(path, members, zipfile.ZIP_DEFLATED).read_bytes())
    central = raw.find(b"PK\x01\x02")  # x.npy's entry: the first of the central directory
    struct.pack_into("<I", raw, central + 24, file_size)  # uncompressed size
    path.write_bytes(bytes(raw))
    return path


def _hf_folder(folder: Path) -> Path:
    import datasets

    table = {"a": np.linspace(0, 1, 20), "label": np.arange(20) % 2}
    datasets.Dataset.from_dict(table).save_to_disk(str(folder))
    return folder


def _hf_state_naming(folder: Path, filename: str) -> Path:
    _hf_folder(folder)
    state = json.loads((folder / "state.json").read_text())
    state["_data_files"] = [{"filename": filename}]
    (folder / "state.json").write_text(json.dumps(state))
    return folder


def _hf_images_by_path(folder: Path, image: Path) -> Path:
    """A saved image dataset whose cells hold only a path to ``image`` (no bytes): the
    Arrow file rewritten, as ``save_to_disk`` itself would embed the bytes."""
    import datasets
    import pyarrow as pa
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    rows = {"img": [str(image)] * 4, "label": [0, 1, 0, 1]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(folder))
    arrow = next(folder.glob("*.arrow"))
    # read from a copy in memory: the file is rewritten below, and a table read from the
    # file itself may still point into it (the labels then came out as garbage)
    with pa.ipc.open_stream(pa.BufferReader(arrow.read_bytes())) as reader:
        table = reader.read_all()
    paths = pa.array([{"bytes": None, "path": str(image)}] * 4, type=table.schema.field("img").type)
    table = table.set_column(table.schema.get_field_index("img"), "img", paths)
    with pa.ipc.new_stream(arrow, table.schema) as writer:
        writer.write_table(table)
    return folder


def hostile_cases(tmp: Path) -> list[Case]:
    """Small files of every hostile class; a case is (name, dataset entry, expected)."""
    cases: list[Case] = []
    good = tmp / "good"
    good.mkdir()

    def add(name: str, entry: dict, expected: str | None) -> None:
        cases.append((name, {"name": "d", **entry}, expected))

    # 1. sizes trusted from headers
    write_cifar10_folder(good / "cifar")  # 92 KB: the reader once asked for 16 GiB
    add("valid cifar", {"path": str(good / "cifar"), "format": "cifar10"}, None)
    huge = _idx_header(3, (1 << 20, 128, 120))  # 15 GiB promised, 16 bytes held
    add(
        "idx promising 15 GiB",
        {"path": str(_mnist_with(tmp / "i1", huge)), "format": "idx"},
        "truncated",
    )
    gz_huge = gzip.compress(huge + bytes(1000))
    add(
        "gz idx promising 15 GiB",
        {"path": str(_mnist_with(tmp / "i2", gz_huge, gz=True)), "format": "idx"},
        "more than a gzip file",
    )
    bomb = _gzip_bomb(idx_bytes(np.zeros((40, 6, 5), np.uint8)), 64 << 20)
    add(
        "gzip bomb after the idx data",
        {"path": str(_mnist_with(tmp / "i3", bomb, gz=True)), "format": "idx"},
        "has bytes after the data",
    )
    npz = _npz(tmp / "claims.npz", {"x.npy": _npy_header((1 << 40,)), "y.npy": b""})
    add("npz header claiming 2^40 elements", {"path": str(npz)}, "header promises shape")
    add(
        "npz member claiming a deflate ratio no data has",
        {"path": str(_npz_claiming(tmp / "ratio.npz", 2**31))},
        "more than its",
    )
    labels = [0, 1] * 10
    add(
        "csv label 1e15",
        {"path": str(_csv(tmp, "e15.csv", [*labels, 10**15]))},
        "at most 100000 classes",
    )
    add(
        "csv label 1e7",
        {"path": str(_csv(tmp, "e7.csv", [*labels, 10**7]))},
        "at most 100000 classes",
    )
    wide = tmp / "wide.csv"
    wide.write_text(",".join(f"c{i}" for i in range(10**6)) + ",label\n" + "0," * 10**6 + "1\n")
    add("csv of a million columns", {"path": str(wide)}, "columns (at most 100000)")
    np.savez(tmp / "scalar.npz", x=np.float64(3.0), y=np.arange(4) % 2)
    add("npz 0-d inputs", {"path": str(tmp / "scalar.npz")}, "a single value")

    # 8. one validation for every door: float32's range, before anything is written
    big = pd.DataFrame({"a": [1e39 if i == 7 else float(i) for i in range(20)], "label": labels})
    big.to_csv(tmp / "f32.csv", index=False)
    add("csv value beyond float32", {"path": str(tmp / "f32.csv")}, "row 7 has an input beyond")
    big.assign(a=[(-1) ** i * 1e31 for i in range(20)]).to_csv(tmp / "span.csv", index=False)
    add("csv feature spanning 2e31", {"path": str(tmp / "span.csv")}, "feature 0 spans 2e+31")
    add("the same, not scaled", {"path": str(tmp / "span.csv"), "normalize": "none"}, None)

    # 2. special files
    add("/dev/zero as a csv", {"path": "/dev/zero", "format": "csv"}, "not a regular file")
    fifo = tmp / "fifo.csv"
    os.mkfifo(fifo)
    add("a fifo as a csv", {"path": str(fifo)}, "not a regular file")
    (tmp / "zero.csv").symlink_to("/dev/zero")
    add("a link to /dev/zero", {"path": str(tmp / "zero.csv")}, "not a regular file")
    write_cifar10_folder(tmp / "cifar-fifo")
    (tmp / "cifar-fifo" / "data_batch_2.bin").unlink()
    os.mkfifo(tmp / "cifar-fifo" / "data_batch_2.bin")
    add(
        "a fifo among cifar batches",
        {"path": str(tmp / "cifar-fifo"), "format": "cifar10"},
        "not a regular file",
    )

    add("a name too long for the system", {"path": str(tmp / ("a" * 300 + ".csv"))}, "too long")

    # 4. markup in a path
    marked = tmp / "[red]x[" / "red][" / "bold]"  # the path holds '[red]x[/red][/bold]'
    marked.mkdir(parents=True)
    add("markup in a path", {"path": str(marked / "missing.csv")}, "[red]x[/red][/bold]/")
    if importlib.util.find_spec("datasets") is not None:  # the optional hf extra
        cases += [
            (name, {"name": "d", **entry}, fragment) for name, entry, fragment in hf_cases(tmp)
        ]
    return cases


def hf_cases(tmp: Path) -> list[Case]:
    """``datasets`` folders that hang a loader (2) or make it read outside (3)."""
    cases: list[Case] = []

    def add(name: str, entry: dict, expected: str | None) -> None:
        cases.append((name, entry, expected))

    hf_fifo = _hf_folder(tmp / "hf-fifo")
    (hf_fifo / "dataset_info.json").unlink()
    os.mkfifo(hf_fifo / "dataset_info.json")  # which load_from_disk would open and wait on
    add("a fifo in an hf folder", {"path": str(hf_fifo), "format": "hf"}, "not a regular file")

    # 3. data outside the data
    outside = tmp / "other"
    outside.mkdir()
    _hf_folder(outside / "x")
    arrow = next((outside / "x").glob("*.arrow"))
    state = _hf_state_naming(tmp / "h1", f"../other/x/{arrow.name}")
    add("hf state naming ../other", {"path": str(state), "format": "hf"}, "outside the dataset")
    state = _hf_state_naming(tmp / "h2", "../../../../../../../../etc/passwd")
    add("hf state naming /etc/passwd", {"path": str(state), "format": "hf"}, "outside the dataset")
    linked = _hf_folder(tmp / "h3")
    (linked / "extra.arrow").symlink_to(arrow)
    add("hf folder linking outside", {"path": str(linked), "format": "hf"}, "outside the dataset")

    state = _hf_state_naming(tmp / "h4", "data\x00.arrow")
    add("hf state naming a file with a NUL", {"path": str(state), "format": "hf"}, "h4")
    looped = _hf_folder(tmp / "h5")
    (looped / "a").symlink_to(looped / "b")
    (looped / "b").symlink_to(looped / "a")
    add("hf folder with a link loop", {"path": str(looped), "format": "hf"}, "cannot follow")

    by_path = _hf_images_by_path(tmp / "h6", outside / "image.png")
    add(
        "hf images stored as paths",
        {"path": str(by_path), "format": "hf", "image_column": "img"},
        "not stored in the folder",
    )
    return cases


def _argv(tmp: Path, index: int, entry: dict, dry_run: bool) -> tuple[list[str], Path]:
    config = tmp / f"study-{index}.yaml"
    config.write_text(yaml.safe_dump({"datasets": [entry], "archs": ["logreg"]}))
    out = tmp / f"out-{index}"
    return ["run", str(config), "--out", str(out), *(["--dry-run"] if dry_run else [])], out


def other_doors(tmp: Path) -> list[tuple[dict, str | None]]:
    """The Python API's ``register_dataset`` and ``query``, hostile, as child cases."""
    from tests.store.test_query import _make_run

    x = np.zeros((6, 4))
    arrays = {
        "one class": (x, np.zeros(6, int), "a single class"),
        "complex inputs": (x + 1j, np.arange(6) % 2, "expected real numbers"),
        "a label of 2^40": (x, np.array([0, 0, 1, 1, 2**40, 2**40]), "at most 100000"),
        "inputs beyond float32": (x + 1e39, np.arange(6) % 2, "beyond float32"),
        "valid": (x + np.arange(6)[:, None], np.arange(6) % 2, None),
    }
    doors: list[tuple[dict, str | None]] = []
    for name, (inputs, labels, fragment) in arrays.items():
        path = tmp / f"register-{len(doors)}.npz"
        np.savez(path, x=inputs, y=labels)
        doors.append(({"name": f"register_dataset: {name}", "register": str(path)}, fragment))
    run_dir = _make_run(tmp / "query-run")
    endless = "SELECT * FROM range(1000000000000) ORDER BY random()"
    for name, sql, fragment in [
        ("query: an endless sort", endless, "time limit of 1 s"),
        ("query: markup in the SQL", 'SELECT "[/bold]" FROM scores', '"[/bold]" not found'),
        ("query: a valid select", "SELECT * FROM scores", None),
    ]:
        argv = ["query", str(run_dir), sql, "--limit", "1", "--timeout", "1"]
        doors.append(({"name": name, "argv": argv}, fragment))
    # a full disk, as the file-size limit: the data stage's ≈ 30 KB safetensors file is the
    # first write over 16 KB, failing inside safetensors' Rust code
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    argv = ["run", str(config), "--out", str(tmp / "out-full")]
    door = {"name": "a write over the file-size limit", "argv": argv, "file_size_limit": 16384}
    doors.append((door, "digits.safetensors: File too large"))
    # a run the machine could hold but the address-space limit cannot: refused, unwritten
    config = tmp / "needs-5-gib.yaml"
    config.write_text(yaml.safe_dump(NEEDS_5_GIB))
    for dry in (True, False):
        argv = ["run", str(config), "--out", str(tmp / "out-5-gib"), *(["--dry-run"] * dry)]
        door = {"name": f"a run of 5 GiB{' (dry run)' * dry}", "argv": argv}
        doors.append((door, "the address-space limit (ulimit -v) leaves this process"))
    return doors


def _check_all(tmp_path: Path, make: Callable[[Path], list[Case]], timeout: float) -> None:
    cases = make(tmp_path)
    runs, outs, expected = [], {}, {}
    for index, (name, entry, fragment) in enumerate(cases):
        # every case as a dry run; the refused ones also as a real run, which writes nothing
        for dry in (True,) if fragment is None else (True, False):
            argv, out = _argv(tmp_path, index, entry, dry)
            label = f"{name}{' (dry run)' if dry else ''}"
            runs.append({"name": label, "argv": argv})
            outs[label], expected[label] = out, fragment
    for run, fragment in other_doors(tmp_path):
        runs.append(run)
        outs[run["name"]], expected[run["name"]] = tmp_path / "out-5-gib", fragment
    outs["a write over the file-size limit"] = None  # the run started: it has its directory
    results = run_cases(runs, tmp_path, timeout)
    for run in runs:
        check(results[run["name"]], expected[run["name"]], outs[run["name"]])
    # nothing half-written where the disk was full, and the same config resumes there
    full = tmp_path / "out-full"
    assert not any(p.name.endswith(".tmp") for p in full.rglob("*"))
    resumed = Study(parse_config(TINY), full).execute(only=[])  # the data stages alone
    assert [o.name for o in resumed.outcomes if o.ran] == ["data/digits"]


def test_hostile_files_exit_2_in_one_line_under_an_address_space_limit(tmp_path):
    _check_all(tmp_path, hostile_cases, timeout=240)


def test_standardising_values_whose_squares_overflow_float32_is_exact():
    """float32 sums of squares overflow past 1.8e19 (the spread once came out as inf and
    every value as 0): the statistics are then taken in float64."""
    from mnemoscope.data.files import normalise

    x = np.array([[1e25, 1.0], [-1e25, 2.0], [3e25, 3.0], [0.0, 4.0]])
    train, test = normalise(x, x[:2], "standard", pixels=False)
    expected = (x - x.mean(0)) / (x.std(0) + 1e-8)
    np.testing.assert_allclose(train, expected, rtol=1e-6)
    np.testing.assert_allclose(test, expected[:2], rtol=1e-6)
    assert train.dtype == np.float32
