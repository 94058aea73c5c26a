"""Atomic, durable replacement of a plain file (config, api document, backups); caches' writes.

The one place that writes plain files, so a power cut can be simulated under it: every
step goes through an `IO` object, and the tests swap in one that keeps only what was
fsynced. The protocol (DESIGN §7): write a temp file in the same directory → fsync it →
rename over the target → fsync the directory. Symlinks are resolved first, and the
target's mode and owner are kept. The temp file has a fixed name beside its target, so
recovery can find it (roll forward) or remove it (stale).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from flywall.core.runtime.crash import crashpoint


class IO:
    """The real file system. Tests substitute a recording implementation."""

    def write_new(self, path: Path, data: bytes, mode: int) -> None:
        """Create (or truncate) `path` with `data`, and fsync it."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def copy_new(
        self, source: int, size: int, path: Path, mode: int, patch: tuple[int, bytes] | None = None
    ) -> None:
        """Create (or truncate) `path` with the first `size` bytes of the open file `source`.

        The bytes move inside the kernel (see `copy_range`), so a 1 GB state.db never passes
        through this process's memory. `patch` = (offset, bytes) is written over the copy
        before the fsync.
        """
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            copy_range(source, fd, size)
            if patch is not None:
                os.pwrite(fd, patch[1], patch[0])
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, source: Path, target: Path) -> None:
        """Atomically rename `source` over `target` (same directory)."""
        source.replace(target)

    def fsync_dir(self, directory: Path) -> None:
        """Make the directory's entries (a rename, a create, an unlink) durable."""
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def unlink(self, path: Path) -> None:
        """Remove `path` if it exists."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


REAL = IO()

CHUNK = 4 << 20
"""Bytes per step when a copy or a digest streams a file through a buffer."""

_UNSUPPORTED = frozenset({errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM})


def copy_range(source: int, target: int, size: int, methods: tuple[str, ...] = ()) -> str:
    """Copy bytes [0, size) of fd `source` to the same offsets of fd `target`; name the way.

    Tries `copy_file_range` (in-kernel, a reflink where the file system has them), then
    `sendfile`, then a bounded read/write loop: the first two may be refused between file
    systems or by old kernels, and a refusal before any byte moved falls through to the
    next. `methods` restricts the ways tried (the tests exercise each one).

    :raises OSError: the source ended early (it was changed under us), or a real I/O error.
    """
    for method in methods or ("copy_file_range", "sendfile", "buffer"):
        done = 0
        try:
            while done < size:
                if method == "copy_file_range":
                    n = os.copy_file_range(source, target, size - done, done, done)
                elif method == "sendfile":
                    os.lseek(target, done, os.SEEK_SET)
                    n = os.sendfile(target, source, done, size - done)
                else:
                    n = _buffer_step(source, target, size - done, done)
                if n == 0:
                    raise OSError(errno.EIO, f"source ended at byte {done} of {size}")
                done += n
        except OSError as e:
            if done == 0 and e.errno in _UNSUPPORTED and method != "buffer":
                continue
            raise
        return method
    msg = f"no copy method among {methods}"
    raise ValueError(msg)


def _buffer_step(source: int, target: int, left: int, offset: int) -> int:
    data = os.pread(source, min(left, CHUNK), offset)
    view = memoryview(data)
    at = offset
    while view:
        written = os.pwrite(target, view, at)
        view, at = view[written:], at + written
    return len(data)


def resolve(path: Path) -> Path:
    """Follow symlinks: the replace must land on the real file, not replace the link."""
    return Path(os.path.realpath(path))


def temp_path(path: Path) -> Path:
    """Return the fixed temp name beside `path` that a replace writes first."""
    return path.with_name(f".{path.name}.flywall-tmp")


def read(path: Path) -> bytes | None:
    """Return the file's bytes, or None if it does not exist."""
    try:
        return resolve(path).read_bytes()
    except FileNotFoundError:
        return None


def replace(path: Path, data: bytes, io: IO = REAL) -> None:
    """Replace `path` with `data` atomically and durably; crash points between steps."""
    target = resolve(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = target.stat()
        mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
    except FileNotFoundError:
        mode, owner = 0o644, None
    temp = temp_path(target)
    io.write_new(temp, data, mode)
    crashpoint("file-temp-written")
    if owner is not None and hasattr(os, "chown"):
        with contextlib.suppress(PermissionError):
            os.chown(temp, *owner)
    os.chmod(temp, mode)  # noqa: PTH101 - the umask must not change the target's mode
    io.rename(temp, target)
    crashpoint("file-renamed")
    io.fsync_dir(target.parent)
    crashpoint("file-dir-synced")


def replace_cache(path: str, data: bytes, point: str, mode: int = 0o666) -> None:
    """Replace a derived file (a cache) atomically, not durably: a temp file, then rename.

    A cache is safe to lose, so it is not fsynced: after a power cut its reader finds the
    old entry, none, or a torn one that its seal rejects (`caches.Cache`). The temp file is
    named by process, so two writers racing never share one, and opened O_NOFOLLOW, so a
    link planted at its name is not written through. Crash points `{point}-before-replace`
    (a stray temp file; the old entry or none) and `{point}-after-replace`.

    :raises OSError: the folder or the file cannot be written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with open(fd, "wb") as f:  # noqa: PTH123
        f.write(data)
    crashpoint(f"{point}-before-replace")
    temp.replace(target)
    crashpoint(f"{point}-after-replace")


def remove_stale_temp(path: Path, io: IO = REAL) -> bool:
    """Remove a leftover temp file of `path`; True if there was one."""
    temp = temp_path(resolve(path))
    if not temp.exists():
        return False
    io.unlink(temp)
    io.fsync_dir(temp.parent)
    return True
