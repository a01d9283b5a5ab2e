"""Reading a user's files within bounds: regular files only, and no size a file claims
allocated before it is checked against the file's size, the most deflate can expand it
and the memory left to this process."""

from __future__ import annotations

import gzip
import os
import stat
import zlib
from pathlib import Path
from typing import BinaryIO

from mnemoscope.errors import DataError
from mnemoscope.resources import available_memory

MAX_DATA_BYTES = 1 << 34
"""A file (after gunzipping) or an array larger than this (16 GiB) is refused unread."""
DEFLATE_RATIO = 1032
"""Deflate (gzip, zip) never expands data by more than this factor (RFC 1951: a
258-byte match costs at least 2 bits), so a claim beyond it is a crafted header."""

_CHUNK = 1 << 20


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading, or :class:`DataError` unless it is a regular file (a
    device such as ``/dev/zero`` never ends, a FIFO blocks; both are refused without
    waiting: the file is opened non-blocking and checked before a byte is read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "a device, FIFO or socket"
        raise DataError(f"{path}: not a regular file ({kind}); only regular files are read")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def fits_in_memory(path: Path, nbytes: int, what: str) -> None:
    """:class:`DataError` when ``what`` needs more than :data:`MAX_DATA_BYTES` or than the
    memory this process can still allocate: checked before anything is allocated."""
    budget = min(MAX_DATA_BYTES, available_memory())
    if nbytes > budget:
        raise DataError(
            f"{path}: {what} needs {nbytes} bytes, more than the {budget} this process can "
            f"hold (at most {MAX_DATA_BYTES} and the memory left to it)"
        )


def read_bytes(path: Path, limit: int, excess: str) -> bytes | bytearray:
    """The file's bytes (gunzipped when it starts with the gzip magic), or
    :class:`DataError` ``path: excess`` when there are more than ``limit``: a plain file's
    size is checked first, gzipped data is read in blocks as it comes (never allocated
    from ``limit`` up front) and never beyond :data:`DEFLATE_RATIO` times the file."""
    try:
        with open_regular(path) as file:
            size = os.fstat(file.fileno()).st_size
            gzipped = file.read(2) == b"\x1f\x8b"
            file.seek(0)
            if not gzipped:
                if size > limit:
                    raise DataError(f"{path}: {excess}")
                return file.read(size)
            bound = min(limit, DEFLATE_RATIO * size)
            out = bytearray()
            with gzip.GzipFile(fileobj=file, mode="rb") as stream:
                while block := stream.read(min(_CHUNK, bound + 1 - len(out))):
                    out += block
                    if len(out) > bound:
                        raise DataError(f"{path}: {excess}")
            return out
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DataError(f"{path}: corrupt or truncated gzip data ({error})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None


def read_head(path: Path, n: int) -> bytes:
    """The first ``n`` bytes of the file (of its gunzipped data when gzipped)."""
    try:
        with open_regular(path) as file:
            if file.read(2) != b"\x1f\x8b":
                file.seek(0)
                return file.read(n)
            file.seek(0)
            with gzip.GzipFile(fileobj=file, mode="rb") as stream:
                return stream.read(n)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DataError(f"{path}: corrupt or truncated gzip data ({error})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None


def stored_size(path: Path) -> tuple[int, bool]:
    """The file's size on disk and whether it is gzipped."""
    with open_regular(path) as file:
        return os.fstat(file.fileno()).st_size, file.read(2) == b"\x1f\x8b"
