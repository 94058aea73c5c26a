"""Power cuts under the plain-file replace (config, api documents), by a recording IO.

SIGKILL keeps the page cache, so it cannot show what a power cut loses. Here every step of
`fileio.replace` goes through a recording `IO` that models what POSIX promises: a file's
data is durable after its fsync; a directory entry (create, rename, unlink) only after an
fsync of the directory. A cut after any step, with any subset of the not-yet-durable
directory operations surviving, must leave the target holding exactly its old or its new
bytes; and once `replace` has returned, the new bytes. Two negative controls (a replace
that skips the directory fsync, and one that skips the file fsync) must be caught by the
same checker, or the checker is broken.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flywall.core.runtime import fileio

OLD = b'schema_version = "1.0"\n# comment\nzone "lan" {}\n'
NEW = b'schema_version = "1.1"\n# comment\nzone "lan" {}\n\nebpf {\n  enabled = false\n}\n'


@dataclass
class Disk:
    """What survives a power cut: durable data per inode, durable names per directory."""

    names: dict[str, int] = field(default_factory=dict)
    data: dict[int, bytes] = field(default_factory=dict)


@dataclass
class RecordingIO(fileio.IO):
    """Does the real operations and logs what each one makes durable."""

    sync_file: bool = True
    sync_dir: bool = True
    log: list[tuple[str, ...]] = field(default_factory=list)

    def write_new(self, path: Path, data: bytes, mode: int) -> None:
        super().write_new(path, data, mode)
        self.log.append(("write", path.name, data if self.sync_file else b""))

    def rename(self, source: Path, target: Path) -> None:
        super().rename(source, target)
        self.log.append(("rename", source.name, target.name))

    def fsync_dir(self, directory: Path) -> None:
        if self.sync_dir:
            super().fsync_dir(directory)
            self.log.append(("fsync_dir",))

    def unlink(self, path: Path) -> None:
        super().unlink(path)
        self.log.append(("unlink", path.name))


def cut_states(initial: Disk, log: list[tuple[str, ...]], upto: int) -> list[Disk]:
    """Every disk a cut after `upto` logged steps can leave: each subset of pending names."""
    durable = Disk(dict(initial.names), dict(initial.data))
    pending: list[tuple[str, ...]] = []
    inode = max(durable.data, default=0)
    for op in log[:upto]:
        if op[0] == "write":
            inode += 1
            durable.data[inode] = op[2]  # file data: durable at its fsync
            pending.append(("link", op[1], inode))
        elif op[0] == "fsync_dir":
            durable = apply_names(durable, pending)
            pending = []
        else:
            pending.append(op)
    return [
        apply_names(durable, [op for op, keep in zip(pending, mask, strict=True) if keep])
        for mask in itertools.product((False, True), repeat=len(pending))
    ]


def apply_names(disk: Disk, ops: list[tuple]) -> Disk:
    names = dict(disk.names)
    for op in ops:
        if op[0] == "link":
            names[op[1]] = op[2]
        elif op[0] == "rename" and op[1] in names:
            names[op[2]] = names.pop(op[1])
        elif op[0] == "unlink":
            names.pop(op[1], None)
    return Disk(names, disk.data)


def violations(io: RecordingIO, tmp_path: Path, *, existed: bool) -> tuple[int, list[str]]:
    """Replace a file through `io`; return (cut states checked, invariant violations)."""
    target = tmp_path / "flywall.hcl"
    initial = Disk()
    if existed:
        target.write_bytes(OLD)
        initial = Disk({"flywall.hcl": 1}, {1: OLD})
    fileio.replace(target, NEW, io=io)
    checked, found = 0, []
    for step in range(len(io.log) + 1):
        for disk in cut_states(initial, io.log, step):
            checked += 1
            inode = disk.names.get("flywall.hcl")
            content = None if inode is None else disk.data[inode]
            allowed = {NEW} if step == len(io.log) else {NEW, OLD if existed else None}
            if content not in allowed:
                found.append(f"cut after step {step}: target holds {content!r}")
    return checked, found


@pytest.mark.parametrize("existed", [True, False], ids=["replace", "create"])
def test_a_cut_at_any_step_leaves_the_old_or_the_new_bytes_never_a_mix(
    tmp_path: Path, existed: bool
) -> None:
    checked, found = violations(RecordingIO(), tmp_path, existed=existed)
    print(
        f"\nfile replace ({'replace' if existed else 'create'}): {checked} cut states, 0 violations"
    )
    assert checked >= 4
    assert found == []


def test_the_checker_catches_a_replace_that_skips_the_directory_fsync(tmp_path: Path) -> None:
    """Negative control: without the directory fsync an acknowledged rename can vanish."""
    _, found = violations(RecordingIO(sync_dir=False), tmp_path, existed=True)
    assert found, "a replace without a directory fsync passed: the checker is broken"


def test_the_checker_catches_a_replace_that_skips_the_file_fsync(tmp_path: Path) -> None:
    """Negative control: renaming an unsynced temp file can leave an empty target."""
    _, found = violations(RecordingIO(sync_file=False), tmp_path, existed=True)
    assert found, "a replace without a file fsync passed: the checker is broken"


def test_replace_keeps_the_mode_and_writes_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.hcl"
    real.write_bytes(OLD)
    real.chmod(0o640)
    link = tmp_path / "flywall.hcl"
    link.symlink_to(real)
    fileio.replace(link, NEW)
    assert link.is_symlink()
    assert real.read_bytes() == NEW
    assert real.stat().st_mode & 0o777 == 0o640
    assert not fileio.temp_path(real).exists()
