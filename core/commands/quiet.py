"""A quiet `migrate`: one that did nothing, and whose answer only files and a probe decide.

Every boot runs `migrate`, and on all but the boots after a firmware update it ends in
"nothing to do". The CLI keeps that answer (flywall.cli.bootmemo) and gives it again while
nothing it was computed from changed. Which runs may be kept, and what they were computed
from, is the core's knowledge, said here: `is_quiet` (the run changed nothing, and nothing
in its answer depends on the clock, another process or a key) and `inputs` (every file
and folder it read or could have written). The argument, check by check: docs/caches.md,
"The boot memo".
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flywall.core.appliance.workspace import Workspace
    from flywall.core.runtime.engine import Engine, RunReport


class Inputs:
    """What a quiet run's answer was computed from (paths as strings, absent ones too)."""

    __slots__ = ("caches", "dirs", "files", "lock", "pid_file")

    def __init__(
        self, files: list[str], dirs: list[str], lock: str, pid_file: str, caches: list[str]
    ) -> None:
        self.files = files
        """Files whose identity stands for what the run read (or would have written)."""
        self.caches = caches
        """Derived files the run may have written (then it was not quiet), not keyed on:
        each is valid only for inputs among `files`, so a later rewrite changes no answer."""
        self.dirs = dirs
        """Folders whose every entry counts (the migrations; the backups, for partials)."""
        self.lock = lock
        """The writer lock: taken, not stamped (every writer rewrites its holder line)."""
        self.pid_file = pid_file
        """Flywall's pid file: stamped, and its process probed again at every answer."""


def is_quiet(e: Engine, report: RunReport, journaled: int) -> bool:
    """True if this `migrate` changed nothing and a later one would answer the same.

    Nothing journaled, recovered or noted; nothing pending; no run awaiting confirmation
    (its window closes with the clock, not a file); no delivery (channels reach other
    hosts), no signature check (its keys are files the settings name) and no device key
    (a memo cannot carry its MAC); not a sandbox. Files the run wrote besides events (a
    cache, the verified point) are caught by the memo's racy rule.
    """
    ws, settings = e.ws, e.ws.settings
    return (
        report.outcome == "nothing_to_do"
        and journaled == 0
        and not e.recorder.started
        and not report.recovered
        and report.note is None
        and not report.done
        and not e.state.unconfirmed
        and not settings.notification_channels
        and not settings.require_signatures
        and not settings.dry_run
        and ws.paths.device_key_file is None
        and not ws.sandbox
        and settings.layout != "none"
    )


def inputs(ws: Workspace) -> Inputs:
    """Every file and folder a quiet `migrate` read, or would have written had it not been.

    The layout's candidates (which layout is found), the settings and config, api.json, the
    journal and state.db with their -wal and -journal (by name and real path), each file
    target's leftover temp (recovery removes one), Flywall's pid file; the caches a run
    may write (checked as unwritten, not keyed on); folders: the migrations (every file's
    checksum) and the backups (a cut backup's partial files are removed by recovery).
    """
    from flywall.core.appliance.daemon import PID_FILE
    from flywall.core.appliance.layout import candidates
    from flywall.core.runtime.fileio import resolve, temp_path

    paths = ws.paths
    files: list[str] = list(candidates(str(ws.settings.root)))
    for path in (paths.config, paths.settings, paths.api_document):
        if path is not None:
            files += dict.fromkeys((str(path), os.path.realpath(path)))
    for path in (paths.journal, paths.state_db):
        for name in dict.fromkeys((str(path), os.path.realpath(path))):
            files += [name, name + "-wal", name + "-journal"]
    files += [str(temp_path(resolve(p))) for p in ws.file_targets().values()]
    cache = ws.settings.root / "var/cache/flywall"
    caches = [str(cache / "migrations.msgpack"), str(cache / "settings.msgpack")]
    assert paths.run_dir is not None  # a box with a layout has one
    pid_file = str(paths.run_dir / PID_FILE)
    files.append(pid_file)
    dirs = [str(d) for d in ws.directories()] + [str(paths.backups)]
    return Inputs(files, dirs, str(paths.lock), pid_file, caches)
