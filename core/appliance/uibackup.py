"""A copy of flywall.hcl where Flywall's own UI lists its config backups (FLYWALL.md §1).

Our backups live in `migration-backups/`, which Flywall's UI knows nothing about. An
operator who opens the UI after an upgrade should find the config as it was before the
run there, ready to restore the way they restore any other: so every backup a run takes
of flywall.hcl is also written as a UI backup, `<config dir>/backups/config.<N>.<time>.hcl`
with its `config.<N>.<time>.meta.json`, pinned (Flywall keeps 20 and prunes the rest, never
a pinned one) and described with the run that took it.

Both files go through `fileio.IO` like every plain file we write: a temp name, fsync,
rename, fsync of the folder; the meta file last, so a listed backup is always complete.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import msgspec

from flywall.core.runtime import fileio
from flywall.core.runtime.crash import crashpoint

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["UiBackupMeta", "write"]

_NUMBERED = re.compile(r"config\.(\d+)\.")
_SCHEMA_VERSION = re.compile(r'^schema_version\s*=\s*"([^"]*)"', re.MULTILINE)


class UiBackupMeta(msgspec.Struct, frozen=True, kw_only=True):
    """The `.meta.json` Flywall's UI reads beside each backup."""

    version: int
    timestamp: str
    description: str
    path: str
    size: int
    is_auto: bool
    pinned: bool
    schema_version: str


def write(
    folder: Path, data: bytes, *, description: str, shown_folder: str, io: fileio.IO = fileio.REAL
) -> Path:
    """Write `data` as the next numbered UI backup in `folder`; return the backup's path.

    :param shown_folder: `folder` as the box names it (without a `--root` prefix), for
        the meta file's `path`, which Flywall reads on the box itself.
    """
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    number = 1 + max(
        (int(m[1]) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))), default=0
    )
    now = time.time()
    stem = f"config.{number}.{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}"
    backup, meta_path = folder / f"{stem}.hcl", folder / f"{stem}.meta.json"
    version = _SCHEMA_VERSION.search(data.decode("utf-8", "replace"))
    meta = UiBackupMeta(
        version=number,
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        description=description,
        path=f"{shown_folder.rstrip('/')}/{backup.name}",
        size=len(data),
        is_auto=True,
        pinned=True,
        schema_version=version[1] if version else "1.0",
    )
    _put(folder, backup, data, io)
    crashpoint("ui-backup-config-written")
    _put(folder, meta_path, msgspec.json.encode(meta), io)
    crashpoint("ui-backup-completed")
    return backup


def _put(folder: Path, path: Path, data: bytes, io: fileio.IO) -> None:
    """Write `path` whole or not at all: temp file, fsync, rename, fsync the folder."""
    temp = folder / f".{path.name}.partial"
    io.write_new(temp, data, 0o600)
    io.rename(temp, path)
    io.fsync_dir(folder)
