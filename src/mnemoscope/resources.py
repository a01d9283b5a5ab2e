"""How much memory this process may use: the least of the machine's physical memory, the
address-space limit (``ulimit -v``, ``RLIMIT_AS``) and the cgroup's memory limit (a
container's or a systemd slice's), so a refusal happens here, with one line, rather
than as a crash inside numpy or torch.

Linux reads ``/proc`` and ``/sys/fs/cgroup``; elsewhere only what ``os.sysconf`` and
``resource`` tell is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

try:
    import resource
except ImportError:  # not on POSIX: no address-space limit to read
    resource = None  # type: ignore[assignment]

PHYSICAL = "this machine's memory"
_CGROUP = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 62  # cgroup v1 writes "no limit" as a number near 2⁶³


@dataclass(frozen=True)
class MemoryLimit:
    """Bytes, and what sets them (for the message that refuses a run)."""

    bytes: int
    what: str


def _proc_status(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmSize``, ``VmRSS``) in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None  # "max": no limit
    value = int(text)
    return value if value < _UNLIMITED else None


def _cgroup_dirs() -> list[Path]:
    """This process's cgroup folders (v2 unified and v1 memory), innermost first, with
    every parent up to the root (a parent's limit binds too)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, relative = parts
        if controllers == "":
            base = _CGROUP
        elif "memory" in controllers.split(","):
            base = _CGROUP / "memory"
        else:
            continue
        folder = base / relative.lstrip("/")
        while True:
            found.append(folder)
            if folder == base or folder.parent == folder:
                break
            folder = folder.parent
    return found


def cgroup_memory() -> tuple[int, int] | None:
    """``(limit, in use)`` in bytes of the tightest cgroup memory limit, or None."""
    tightest: tuple[int, int] | None = None
    for folder in _cgroup_dirs():
        for limit_name, usage_name in (
            ("memory.max", "memory.current"),
            ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        ):
            limit = _read_int(folder / limit_name)
            if limit is None:
                continue
            usage = _read_int(folder / usage_name) or 0
            if tightest is None or limit - usage < tightest[0] - tightest[1]:
                tightest = (limit, usage)
    return tightest


def physical_memory() -> int:
    """Physical memory of this machine, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def address_space_limit() -> int | None:
    """The soft ``RLIMIT_AS`` in bytes, or None when there is none."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def memory_limit() -> MemoryLimit:
    """The memory a run's process may hold at its peak: the least of physical memory, the
    cgroup limit and the address-space limit less the address space this process maps
    without holding it (libraries and reservations: ``VmSize − VmRSS`` now)."""
    limits = [MemoryLimit(physical_memory(), PHYSICAL)]
    cgroup = cgroup_memory()
    if cgroup is not None:
        limits.append(MemoryLimit(cgroup[0], "the cgroup's memory limit"))
    address_space = address_space_limit()
    if address_space is not None:
        mapped = (_proc_status("VmSize") or 0) - (_proc_status("VmRSS") or 0)
        limits.append(
            MemoryLimit(
                max(address_space - max(mapped, 0), 0), "the address-space limit (ulimit -v)"
            )
        )
    return min(limits, key=lambda limit: limit.bytes)


def available_memory() -> int:
    """Bytes this process can still allocate: the least of the memory the system has
    available, what the cgroup leaves and what the address-space limit leaves."""
    room = [physical_memory()]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cgroup = cgroup_memory()
    if cgroup is not None:
        room.append(max(cgroup[0] - cgroup[1], 0))
    address_space = address_space_limit()
    if address_space is not None:
        room.append(max(address_space - (_proc_status("VmSize") or 0), 0))
    return min(room)
