"""A power-cut VFS for SQLite (CRASH-TESTING.md, "Power-cut simulation").

SIGKILL keeps the page cache, so it never shows what a power cut shows: writes that were
acknowledged by `write()` but never reached the platter. This module models the platter.

Model
-----
The real files under the VFS play the page cache: every write, truncate and unlink passes
straight through, so SQLite reads back exactly what it wrote (no read overlay to get wrong).
Beside them the simulation keeps the *platter*:

- per file (inode): its durable bytes, and the list of writes and truncates issued since its
  last `xSync`. `xSync` applies that list to the durable bytes; nothing else does.
- per directory: the durable names (path -> inode) and the list of creates and unlinks since
  the directory's last sync. A directory is synced by `xDelete(name, syncdir=True)` and, as
  the unix VFS does, by the first `xSync` of a journal or WAL file opened with
  SQLITE_OPEN_CREATE (unix fsyncs the directory then, so the new name is durable).

I/O events are counted: each xWrite, xTruncate, xSync and xDelete. At the k-th event the
power goes: that event does not happen, it and every later write, truncate, sync and
delete fail with SQLITE_IOERR and every later open with SQLITE_CANTOPEN (the process's
SQLite and Python code see an error and unwind), and nothing more reaches the files. The
refusals SQLite meets where nothing can report them (a connection torn down after the cut)
are kept out of `sys.unraisablehook` while the run lasts. `settle()` then closes whatever connections
the dead run left open and rewrites the files as the platter has them, after a *fate* for
the unsynced work:

- ``drop``: none of it survives (unlinks and creates not yet synced are undone, so a
  deleted rollback journal comes back, hot);
- ``tear``: a prefix of each file's unsynced operations survives, the last surviving write
  cut at a 512-byte sector boundary; a prefix of each directory's unsynced name changes;
- ``reorder``: a random (seeded) subset of 512-byte sectors of the unsynced writes, and of
  the truncates and name changes, survives (a sector holds any version written since the
  last sync).

Not modelled: shared memory (`-shm`) passes through to the default VFS untouched: it is
rebuilt from the WAL by the first connection to open the database after the cut, since the
crashed connections are closed first; SQLite's nameless temp files (written through, not
kept); garbage-filled sectors (test6.c's third fate); a sync that reports success without
persisting (lying disks); other processes. The real fsync is skipped: the platter is the
model, so it would only cost time.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import apsw

if TYPE_CHECKING:
    from collections.abc import Callable

NAME = "powercut"
SECTOR = 512
Fate = Literal["drop", "tear", "reorder"]
FATES: tuple[Fate, ...] = ("drop", "tear", "reorder")

_DIRSYNC_TYPES = (
    apsw.SQLITE_OPEN_MAIN_JOURNAL | apsw.SQLITE_OPEN_WAL | apsw.SQLITE_OPEN_SUPER_JOURNAL
)

Op = tuple[str, int, bytes]
"""("w", offset, data) or ("t", size, b"")."""


@dataclass(eq=False)
class _Inode:
    """One file's platter: durable bytes plus what was written since its last sync."""

    path: str
    durable: bytearray
    ops: list[Op] = field(default_factory=list)


@dataclass
class Simulation:
    """One simulated run: counts I/O events, cuts at `cut_at`, then settles with `fate`.

    `cut_at=None` never cuts during the run (a dry run counts the events); `settle()` after
    such a run still applies `fate` to what is unsynced at the end ("cut after the run").
    """

    cut_at: int | None = None
    fate: Fate = "drop"
    seed: int | str = 0
    events: int = 0
    dead: bool = False
    cut_event: str | None = None
    settled: bool = False
    inodes: dict[str, _Inode] = field(default_factory=dict)
    names: dict[str, _Inode | None] = field(default_factory=dict)
    pending: dict[str, list[tuple[str, str, _Inode]]] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)
    """(event, path) of every counted event, in order: event k is log[k - 1]."""
    _order: list[_Inode] = field(default_factory=list)
    _hook: Callable[[sys.UnraisableHookArgs], object] | None = None

    # -- the run ---------------------------------------------------------------------

    def event(self, what: str, path: str) -> None:
        """Count one I/O event; at `cut_at`, cut the power instead of doing it."""
        if self.dead:
            raise _refused(what)
        self.events += 1
        self.log.append((what, path))
        if self.cut_at is not None and self.events >= self.cut_at:
            self.dead, self.cut_event = True, f"#{self.events} {what}"
            raise _refused(what)

    def opened(self, path: str, existed: bool) -> _Inode:
        """Return the inode a newly opened handle of `path` writes to."""
        inode = self.inodes.get(path)
        if inode is not None:
            return inode
        if existed:  # on disk before this run touched it: durable, name and bytes
            inode = _Inode(path, bytearray(Path(path).read_bytes()))
            self.names.setdefault(path, inode)
        else:
            inode = _Inode(path, bytearray())
            self.names.setdefault(path, None)
            self._dir_op("create", path, inode)
        self.inodes[path] = inode
        self._order.append(inode)
        return inode

    def deleting(self, path: str) -> None:
        """Before an unlink of a file this run never opened: its bytes are on the platter."""
        if path not in self.inodes and Path(path).exists():
            self.opened(path, existed=True)

    def deleted(self, path: str, syncdir: bool) -> None:
        """Record an unlink (already done on the page cache); durable only with the dir."""
        inode = self.inodes.pop(path, None)
        if inode is not None:
            self._dir_op("unlink", path, inode)
        if syncdir:
            self.sync_dir(str(Path(path).parent))

    def synced(self, inode: _Inode) -> None:
        """fsync: the file's unsynced operations reach the platter."""
        for op in inode.ops:
            _apply(inode.durable, op)
        inode.ops.clear()

    def sync_dir(self, directory: str) -> None:
        """fsync of a directory: its name changes reach the platter."""
        for kind, path, inode in self.pending.pop(directory, []):
            self.names[path] = inode if kind == "create" else None

    def _dir_op(self, kind: str, path: str, inode: _Inode) -> None:
        self.pending.setdefault(str(Path(path).parent), []).append((kind, path, inode))

    # -- after the cut -----------------------------------------------------------------

    def settle(self) -> None:
        """Cut the power if the run ended first, close the dead run's connections, and
        rewrite every file the run touched as the platter has it after `fate`."""
        if self.settled:
            return
        self.dead, self.settled = True, True
        if self.cut_event is None:
            self.cut_event = f"after the run (#{self.events + 1})"
        for conn in apsw.connections():
            if conn.open_vfs == NAME:
                with contextlib.suppress(apsw.Error):  # SQLite's last words hit the dead disk
                    conn.close(True)
        if self._hook is not None:
            sys.unraisablehook, self._hook = self._hook, None
        rng = random.Random(f"{self.seed}:{self.cut_at}:{self.fate}")
        content = {id(inode): self._survivor(inode, rng) for inode in self._order}
        names = dict(self.names)
        for directory in sorted(self.pending):
            for kind, path, inode in _choose(self.pending[directory], self.fate, rng):
                names[path] = inode if kind == "create" else None
        for path, inode in sorted(names.items()):
            if inode is None:
                Path(path).unlink(missing_ok=True)
            else:
                Path(path).write_bytes(content[id(inode)])

    def _unraisable(self, args: sys.UnraisableHookArgs) -> None:
        """Swallow the refusals SQLite meets where nothing can report them (a connection
        torn down after the cut); anything else goes to the hook that was there before."""
        if self.dead and _is_cut(args.exc_value):
            return
        if self._hook is not None:
            self._hook(args)

    def _survivor(self, inode: _Inode, rng: random.Random) -> bytes:
        data = bytearray(inode.durable)
        ops = inode.ops
        if not ops or self.fate == "drop":
            return bytes(data)
        if self.fate == "tear":
            last = rng.randint(1, len(ops))
            for op in ops[: last - 1]:
                _apply(data, op)
            kind, offset, payload = ops[last - 1]
            if kind == "t":
                _apply(data, ops[last - 1])
            else:
                cuts = list(range(_next_sector(offset), offset + len(payload), SECTOR))
                keep = (rng.choice(cuts) - offset) if cuts else 0
                _apply(data, ("w", offset, payload[:keep]))
            return bytes(data)
        for op in ops:  # reorder: each sector (and each truncate) survives or not
            if op[0] == "t":
                if rng.random() < 0.5:
                    _apply(data, op)
                continue
            for piece in _sectors(op):
                if rng.random() < 0.5:
                    _apply(data, piece)
        return bytes(data)


def _choose(
    ops: list[tuple[str, str, _Inode]], fate: Fate, rng: random.Random
) -> list[tuple[str, str, _Inode]]:
    if fate == "drop" or not ops:
        return []
    if fate == "tear":
        return ops[: rng.randint(0, len(ops))]
    return [op for op in ops if rng.random() < 0.5]


def _apply(data: bytearray, op: Op) -> None:
    kind, offset, payload = op
    if kind == "t":
        del data[offset:]
        data.extend(b"\0" * (offset - len(data)))
        return
    if not payload:
        return
    if len(data) < offset:
        data.extend(b"\0" * (offset - len(data)))
    data[offset : offset + len(payload)] = payload


def _next_sector(offset: int) -> int:
    return (offset // SECTOR + 1) * SECTOR


def _sectors(op: Op) -> list[Op]:
    _, offset, payload = op
    pieces, start = [], offset
    while start < offset + len(payload):
        end = min(_next_sector(start), offset + len(payload))
        pieces.append(("w", start, payload[start - offset : end - offset]))
        start = end
    return pieces


_CUT = "power cut"


def _refused(what: str) -> apsw.Error:
    return apsw.IOError(f"{_CUT} ({what})")


def _is_cut(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, apsw.Error) and str(exc).startswith(_CUT):
            return True
        exc = exc.__context__
    return False


def _path_of(name: str | apsw.URIFilename | None) -> str | None:
    if name is None:
        return None
    return name.filename() if isinstance(name, apsw.URIFilename) else name


class PowerCutFile(apsw.VFSFile):
    """A file of the default VFS whose writes, truncates and syncs the simulation sees."""

    def __init__(
        self, vfs: PowerCutVFS, name: str | apsw.URIFilename | None, flags: list[int]
    ) -> None:
        sim = vfs.simulation
        path = _path_of(name)
        if sim.dead:
            raise apsw.CantOpenError("power cut (open)")
        existed = path is not None and Path(path).exists()
        super().__init__("", name, flags)
        self._sim = sim
        self._path = path or ""
        self._inode = None if path is None else sim.opened(path, existed)
        self._dirsync = bool(flags[0] & apsw.SQLITE_OPEN_CREATE) and bool(flags[0] & _DIRSYNC_TYPES)

    def xWrite(self, data: bytes, offset: int) -> None:  # noqa: N802 - APSW's name
        self._sim.event("write", self._path)
        super().xWrite(data, offset)
        if self._inode is not None:
            self._inode.ops.append(("w", offset, bytes(data)))

    def xTruncate(self, newsize: int) -> None:  # noqa: N802 - APSW's name
        self._sim.event("truncate", self._path)
        super().xTruncate(newsize)
        if self._inode is not None:
            self._inode.ops.append(("t", newsize, b""))

    def xSync(self, flags: int) -> None:  # noqa: N802, ARG002 - APSW's signature
        # The platter is modelled, so the real fsync would only cost time.
        self._sim.event("sync", self._path)
        if self._inode is not None:
            self._sim.synced(self._inode)
            if self._dirsync:
                self._dirsync = False
                self._sim.sync_dir(str(Path(self._inode.path).parent))

    def excepthook(
        self,
        etype: type[BaseException] | None,
        evalue: BaseException | None,
        etraceback: object,
    ) -> bool:
        # After the cut, SQLite calls us from places that cannot report an error (close);
        # those refusals are the simulation working, not a failure to report.
        return self._sim.dead or super().excepthook(etype, evalue, etraceback)  # type: ignore[arg-type]


class PowerCutVFS(apsw.VFS):
    """The default VFS with a platter model under it; `simulation` is swapped per run."""

    def __init__(self) -> None:
        self.simulation = Simulation(settled=True)
        super().__init__(NAME, "")

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> PowerCutFile:  # noqa: N802 - APSW's name
        return PowerCutFile(self, name, flags)

    def xDelete(self, filename: str, syncdir: bool) -> None:  # noqa: N802 - APSW's name
        sim, path = self.simulation, os.path.abspath(filename)  # noqa: PTH100
        sim.event("delete", path)
        sim.deleting(path)
        super().xDelete(filename, syncdir)
        sim.deleted(path, syncdir)

    def excepthook(
        self,
        etype: type[BaseException] | None,
        evalue: BaseException | None,
        etraceback: object,
    ) -> bool:
        return self.simulation.dead or super().excepthook(etype, evalue, etraceback)  # type: ignore[arg-type]


_VFS: PowerCutVFS | None = None


def install() -> PowerCutVFS:
    """Register the VFS (once per process) and return it."""
    global _VFS  # noqa: PLW0603 - SQLite's VFS registry is process-wide too
    if _VFS is None:
        _VFS = PowerCutVFS()
    return _VFS


def start(cut_at: int | None = None, fate: Fate = "drop", seed: int | str = 0) -> Simulation:
    """Begin a simulated run: files on disk now are taken as durable."""
    vfs = install()
    if not vfs.simulation.settled:
        vfs.simulation.settle()
    sim = vfs.simulation = Simulation(cut_at=cut_at, fate=fate, seed=seed)
    sim._hook, sys.unraisablehook = sys.unraisablehook, sim._unraisable
    return sim
