"""Which target a component names: the one place that maps `component` to its `Target`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from flywall.core.targets.files import ApiTarget, ConfigTarget, FileTarget
from flywall.core.targets.statedb import RecordsTarget, SchemaTarget

if TYPE_CHECKING:
    from collections.abc import Mapping

    from flywall.core.targets.database import DatabaseTarget
    from flywall.core.targets.protocol import Target

__all__ = ["TARGETS", "file_target", "marked", "target_for"]

TARGETS: dict[str, type[SchemaTarget | RecordsTarget | ConfigTarget | ApiTarget]] = {
    "database": SchemaTarget,
    "state": RecordsTarget,
    "config": ConfigTarget,
    "api": ApiTarget,
}
"""Every component a migration may name, with its target."""


def marked(component: str) -> bool:
    """Tell whether `component`'s steps leave a marker row in state.db (see `Target.marked`)."""
    target = TARGETS.get(component)
    return target is not None and target.marked


def file_target(component: str, files: Mapping[str, Path]) -> FileTarget:
    """The document target of `component` ("config" or "api"), at `files[component]`."""
    return ConfigTarget(files["config"]) if component == "config" else ApiTarget(files["api"])


def target_for(
    component: str,
    files: Mapping[str, Path],
    db: DatabaseTarget | None = None,
    *,
    state_db: Path | None = None,
    vfs: str | None = None,
) -> Target:
    """The target of `component`.

    `files` maps "config" and "api" to where those documents live now (from settings).
    A state.db target reads through `db`, the run's connection (None: state.db does not
    exist, which is evidence too); its path is `state_db`, else `db`'s.
    """
    cls = TARGETS.get(component)
    if cls is None or issubclass(cls, FileTarget):
        return file_target(component, files)
    if state_db is None:  # neither open nor named: only its absence is evidence then
        state_db = db.path if db is not None else Path("state.db")
    return cls(state_db, db, vfs=vfs)
