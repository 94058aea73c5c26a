"""The one pen: the only code that writes to the journal, and the owner of a run's lifecycle.

Only this module appends to a Journal and constructs `RunStarted` and `RunFinished`
(tests/test_owners.py): a run starts on its first write and ends in `finish`, so no caller
can open a run it never closes or close one twice. Events outside any run (a notice's
cursor) go through `append_events`, a run with no projection (rescue) through `append_run`.

It guards each event with the lifecycle before anything is written (an illegal transition
never appends), writes events in one durable transaction per `append`, folds them into the
live projection (so the live state *is* the replayed state), and defers events that
recovery does not need before the next side effect (applied markers, logs) so they share
the next write: group commit as DESIGN §5 allows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flywall.core.model import events as ev
from flywall.core.model.lifecycle import trigger_for
from flywall.core.runtime.crash import crashpoint
from flywall.journal import ADOPTED, Entry

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from flywall.core.model.lifecycle import Lifecycle, State
    from flywall.core.model.projection import Projection
    from flywall.journal import Journal, StoredEvent

Item = tuple[str, ev.Event]
"""(migration version or "", event)."""


class Recorder:
    """Writes one run's events; starts the run lazily, on its first event."""

    def __init__(
        self,
        journal: Journal,
        projection: Projection,
        lifecycle: Lifecycle,
        run_id: str,
        *,
        command: str,
        actor: ev.Actor,
        on_event: Callable[[StoredEvent, ev.Event], None] | None = None,
    ) -> None:
        self.journal = journal
        self.projection = projection
        self.lifecycle = lifecycle
        self.run_id = run_id
        self.command = command
        self.actor = actor
        self._run_started = ev.RunStarted(command=command, actor=actor)
        self._on_event = on_event
        self._deferred: list[Item] = []
        self._deferred_states: dict[str, State] = {}  # each deferred item checked once
        self.started = False

    def describe_run(
        self, *, planned: list[str], target: str | None, accepted_drift: list[str]
    ) -> None:
        """Say what the run plans, in its RunStarted, if the run has not written anything yet."""
        if not self.started:
            self._run_started = ev.RunStarted(
                command=self.command,
                actor=self.actor,
                planned=planned,
                target=target,
                accepted_drift=accepted_drift,
            )

    def defer(self, version: str, event: ev.Event) -> None:
        """Queue an event that may wait for the next write (never one recovery needs)."""
        # One item, stepped in place: its state is stored only once the lifecycle allowed
        # it (copying the dict per deferred event cost O(n**2) over a `full` run).
        trigger = trigger_for(event)
        if trigger is not None:
            current = self._deferred_states.get(version, self.projection.state_of(version))
            self._deferred_states[version] = self.lifecycle.step(version, current, trigger)
        self._deferred.append((version, event))

    def append(
        self, items: Sequence[Item], sources: Iterable[tuple[str, bytes]] = ()
    ) -> list[StoredEvent]:
        """Write deferred events and `items` durably, in one transaction, in order.

        :raises IllegalTransition: the lifecycle refuses one of them; nothing is written.
        """
        return self._write([(v, e, self.run_id) for v, e in items], sources)

    def flush(self) -> None:
        """Write the deferred events now, so the live projection includes them."""
        if self._deferred:
            self._write([], ())

    def append_aside(self, event: ev.Event) -> StoredEvent:
        """Write one event at once, under this run's id, without starting the run.

        For what is not a step of the run (the daemon stopped or started, a dry run's
        audit event): no RunStarted before it, nothing deferred written with it.
        """
        (row,) = append_events(self.journal, [event], self.run_id)
        crashpoint(f"after-{row.kind}")
        self.projection.apply(row, self.lifecycle, event)
        if self._on_event is not None:
            self._on_event(row, event)
        return row

    def close_interrupted_run(self, run_id: str) -> None:
        """Write the RunFinished that a run killed mid-way never wrote (recovery only)."""
        self.append_for_run(run_id, ev.RunFinished(outcome="interrupted"))

    def append_for_run(self, run_id: str, event: ev.Event) -> None:
        """Write an event about another run (its closing, confirmation or expiry)."""
        self._write([("", event, run_id)], ())

    def finish(
        self,
        outcome: str,
        done: list[str],
        error: str | None = None,
        confirm_by_ns: int | None = None,
        *,
        always: bool = False,
    ) -> None:
        """Write RunFinished (with anything deferred), if the run wrote anything at all.

        `always` writes it (and so the run's RunStarted) even when nothing else was: a run
        ended by a signal must show in status as the last one.
        """
        if always or self.started or self._deferred:
            finished = ev.RunFinished(
                outcome=outcome,  # type: ignore[arg-type]
                done=done,
                error=error,
                confirm_by_ns=confirm_by_ns,
            )
            self.append([("", finished)])

    def _write(
        self, items: list[tuple[str, ev.Event, str]], sources: Iterable[tuple[str, bytes]]
    ) -> list[StoredEvent]:
        batch: list[tuple[str, ev.Event, str]] = (
            [] if self.started else [("", self._run_started, self.run_id)]
        )
        batch += [(v, e, self.run_id) for v, e in self._deferred]
        batch += items
        self._check([(v, e) for v, e, _ in batch])
        entries = [Entry(ev.kind_of(e), ev.encode(e), run_id, v) for v, e, run_id in batch]
        if not entries:
            return []
        rows = self.journal.append(entries, sources)
        crashpoint(f"after-{entries[-1].kind}")
        self.started = True
        self._deferred.clear()
        self._deferred_states = {}
        for row, (_, event, _) in zip(rows, batch, strict=True):
            self.projection.apply(row, self.lifecycle, event)
            if self._on_event is not None:
                self._on_event(row, event)
        return rows

    def _check(
        self, items: Sequence[Item], start: dict[str, State] | None = None
    ) -> dict[str, State]:
        """Step each item's trigger from the projected (or `start`) state; return the states.

        :raises IllegalTransition: before anything is written.
        """
        states: dict[str, State] = dict(start or {})
        for version, event in items:
            trigger = trigger_for(event)
            if trigger is None:
                continue
            current = states.get(version, self.projection.state_of(version))
            states[version] = self.lifecycle.step(version, current, trigger)
        return states


def append_run(
    journal: Journal, run_id: str, command: str, actor: ev.Actor, events: Sequence[ev.Event]
) -> list[StoredEvent]:
    """Write a whole run in one transaction: RunStarted, `events`, RunFinished (completed).

    For a run with no projection to fold into (the journal was just replaced from a
    backup); returns the stored rows, the run's own first and last included.
    """
    run = [
        ev.RunStarted(command=command, actor=actor),
        *events,
        ev.RunFinished(outcome="completed"),
    ]
    return append_events(journal, run, run_id)


def append_events(
    journal: Journal, events: Sequence[ev.Event], run_id: str = ""
) -> list[StoredEvent]:
    """Write `events` durably in one transaction, outside any run's lifecycle.

    For events no lifecycle guards and no live projection holds (a channel's delivery
    cursor); the caller names its own crash point.
    """
    return journal.append([Entry(ev.kind_of(e), ev.encode(e), run_id) for e in events])


def adopt_key(journal: Journal, event: ev.DeviceKeyAdopted) -> StoredEvent:
    """Append `event` as the first keyed link of a plain chain (`Journal.adopt_key`).

    :raises JournalKeyedAlready: the journal is keyed already.
    :raises JournalCorrupt: the plain chain is broken; nothing is adopted over it.
    """
    return journal.adopt_key(Entry(ADOPTED, ev.encode(event)))
