"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from mnemoscope.store.tables import to_arrow


def _file_mode() -> int:
    """0666 less the process's umask (read by setting it and putting it back)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    The temporary file lives in the same directory so the final ``os.replace`` is
    atomic on POSIX. On error the temporary file is removed and ``path`` is untouched.
    The file gets the mode a plain ``open`` would give it (0666 less the user's umask),
    not ``mkstemp``'s 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    mode = _file_mode()
    os.fchmod(fd, mode)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)  # writers that replace the file keep the mode too
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _write_with(path: Path, write: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    return _write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: Path, data: bytes) -> Path:
    return _write_with(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: Path, obj: Any) -> Path:
    """Strict JSON (no NaN or Infinity, which other readers reject)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str, allow_nan=False)
    return write_text(path, text + "\n")


def write_parquet(path: Path, frame: pd.DataFrame, schema=None) -> Path:
    """Write ``frame`` as Parquet; with ``schema`` the columns are checked and cast."""
    table = to_arrow(frame, schema) if schema is not None else None

    def write(tmp: Path) -> None:
        if table is not None:
            pq.write_table(table, tmp)
        else:
            frame.to_parquet(tmp, index=False)

    return _write_with(path, write)


def write_safetensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors``; a failed write (a full disk, a file-size limit) is the
    :class:`OSError` it was in Rust, naming ``path``, not a ``SafetensorError``."""
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        try:
            save_file(contiguous, str(tmp), metadata=metadata)
        except SafetensorError as error:
            code = re.search(r"os error (\d+)|code: (\d+)", str(error))
            number = int(next(g for g in code.groups() if g)) if code else errno.EIO
            raise OSError(number, os.strerror(number), str(path)) from None

    return _write_with(path, write)
