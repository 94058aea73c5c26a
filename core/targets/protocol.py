"""What the engine, recovery, drift and the rehearsals ask of a target (DESIGN §1, §7).

A target is one of the four things a migration changes: the schema of state.db
(`database`), the records inside it (`state`), flywall.hcl (`config`) and api.json
(`api`). Each answers the same questions, so no caller branches on a component's name:

- `open`: what a step's `up`/`down` receives;
- `apply`: do one step and leave the evidence recovery reads;
- `evidence`: after a crash, which side of its step an interrupted migration is on;
- `verify`: run a migration's post-condition against the target as it is now;
- `backup` / `restore`: a copy of the target's file, and putting it back.

Two kinds of evidence exist, and `marked` says which a target leaves (DESIGN §7's
decision table): a marker row committed in state.db's transaction together with the step
(`database`, `state`: "present" is exact proof the step committed), or the file's digest
compared with a durable `WriteIntent` (`config`, `api`). The engine asks `marked` where
that difference is the point: steps with a marker can share one transaction (the `full`
strategy), and only they have a marker to move (`force`, `repair`) or compare (drift).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from flywall.core.model.projection import MigrationRecord
    from flywall.core.runtime import fileio


def _no_batches(_last_key: str, _rows: int, _total: int) -> None:
    """A step nobody journals (a test, a rehearsal's check)."""


def _no_progress(_done: int, _total: int) -> None:
    """A step nobody watches."""


def _no_intent(_before: bytes | None, _after: bytes) -> None:
    """A file step nobody journals."""


class Step(NamedTuple):
    """One migration's step in one direction, as a target runs it."""

    version: str
    direction: str
    """"up" or "down"."""
    checksum: str = ""
    run_id: str = ""
    schema_version: str | None = None
    previous: tuple[str, str] | None = None
    """(version, checksum) the component returns to after a down; None: no older one."""
    on_batch: Callable[[str, int, int], None] = _no_batches
    """A batched `state` step: journal one committed batch (last key, rows, total)."""
    progress: Callable[[int, int], None] = _no_progress
    atomic: bool = False
    """The `full` strategy: every row in one transaction, batch sizes ignored."""
    intend: Callable[[bytes | None, bytes], None] = _no_intent
    """A file step: make its `WriteIntent` (both contents) durable before the replace.

    May raise to refuse the change (the firmware's `check_command`): nothing is written.
    """

    @property
    def name(self) -> str:
        """The key of a batched step's checkpoints: "VERSION:up" or "VERSION:down"."""
        return f"{self.version}:{self.direction}"


class Evidence(NamedTuple):
    """What a target shows about an interrupted step; recovery turns it into a decision."""

    done: bool
    """The step happened (the marker moved; the file holds the intended content)."""
    evidence: dict[str, str]
    """What was read, for the `Recovered` event."""
    action: str | None = None
    """A side effect recovery must finish: "roll_forward" (rename the temp file that
    holds the intended content) or "rewrite" (the file is missing)."""
    half_done: bool = False
    """A batched step cut between batches: some committed, its marker not moved."""


class Copy(NamedTuple):
    """A target's file as backed up: its size and blake3 digest."""

    size: int
    digest: str


class Target(Protocol):
    """One thing a migration changes; see the module docstring for what each method means."""

    component: str
    """"database", "state", "config" or "api": the migration's `component`."""
    marked: bool
    """True: a step commits with a marker row in state.db; False: a journaled file write."""

    @property
    def path(self) -> Path:
        """The file the target lives in (state.db for both of its targets)."""
        ...

    def open(self, step: Step) -> Any:
        """Return what the step's function receives, on the target as it is now."""
        ...

    def apply(self, step: Step, change: Callable[[Any], None]) -> str | None:
        """Run `change` on what `open` gives and make it durable with its evidence.

        All or nothing: `change` raising leaves the target as it was. Returns the schema
        fingerprint after the step where the target has one (state.db), else None.
        """
        ...

    def evidence(self, record: MigrationRecord) -> Evidence:
        """Read, never write, which side of its step an interrupted `record` is on.

        :raises ValidationFailed: a file holds neither the before nor the after content.
        """
        ...

    def verify(self, check: Callable[[Any], None]) -> None:
        """Run `check` on the target as a migration's `verify(ctx, target)` receives it.

        That is the connection for both state.db targets (a `state` verify reads rows
        with SQL, not through the batched helper its up used) and the document for files.
        It may look but never change anything. One semantics for `validate` (the live box)
        and `test` (a rehearsal copy), which had two: SQL runs inside a savepoint that is
        always rolled back, a document is parsed fresh from the file and never written.
        The copy needed no such care for its own sake, but a check that wrote there could
        make the `validate` run next on the same copy pass.

        :raises: whatever `check` raises: that is the finding.
        """
        ...

    def backup(
        self, copy: Path, io: fileio.IO, alongside: Callable[[], None], *, held: bool = False
    ) -> Copy:
        """Write a consistent copy of the target's file to `copy` (new, fsynced, 0600).

        `alongside` (a run's validate_before) may be called, at most once, while a long
        copy is written, so its CPU overlaps the copy's I/O (state.db's); the caller runs
        it afterwards when the target did not. `held`: the run's own transaction holds
        state.db's write lock (its first step runs beside the backup).
        """
        ...

    def restore(self, copy: Path | None) -> None:
        """Put `copy` back as the target's file, atomically; None: the file was absent.

        Idempotent, so recovery can simply do an interrupted restore again.
        """
        ...
