"""The memory a process may use: the least of physical memory, the cgroup's limit and the
address-space limit, each read from where Linux keeps it."""

from __future__ import annotations

from pathlib import Path

from mnemoscope import resources


def _cgroup(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text + "\n")
    return folder


def test_the_tightest_cgroup_limit_binds_and_max_means_none(tmp_path, monkeypatch):
    inner = _cgroup(tmp_path / "a" / "b", {"memory.max": "max", "memory.current": "5"})
    outer = _cgroup(tmp_path / "a", {"memory.max": str(2**30), "memory.current": str(2**20)})
    v1 = _cgroup(tmp_path / "v1", {"memory.limit_in_bytes": str(2**63 - 4096)})  # no limit
    monkeypatch.setattr(resources, "_cgroup_dirs", lambda: [inner, outer, v1])
    assert resources.cgroup_memory() == (2**30, 2**20)
    limit = resources.memory_limit()
    if resources.physical_memory() > 2**30:
        assert limit == resources.MemoryLimit(2**30, "the cgroup's memory limit")
    assert resources.available_memory() <= 2**30 - 2**20


def test_no_cgroup_limit_leaves_physical_memory(monkeypatch):
    monkeypatch.setattr(resources, "_cgroup_dirs", lambda: [])
    monkeypatch.setattr(resources, "address_space_limit", lambda: None)
    assert resources.memory_limit() == resources.MemoryLimit(
        resources.physical_memory(), resources.PHYSICAL
    )


def test_the_address_space_limit_counts_what_the_process_maps(monkeypatch):
    monkeypatch.setattr(resources, "_cgroup_dirs", lambda: [])
    monkeypatch.setattr(resources, "address_space_limit", lambda: 3 * 2**30)
    sizes = {"VmSize": 2 * 2**30, "VmRSS": 2**29}
    monkeypatch.setattr(resources, "_proc_status", lambda field: sizes[field])
    limit = resources.memory_limit()
    if resources.physical_memory() > 3 * 2**30:
        # 3 GiB less the 1.5 GiB mapped but not resident
        assert limit.bytes == 3 * 2**30 - (2 * 2**30 - 2**29) and "ulimit -v" in limit.what
    assert resources.available_memory() <= 2**30
