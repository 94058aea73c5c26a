"""The migration lifecycle as a `transitions` state machine (DESIGN §6).

One machine, shared by every migration: replay and the live engine set a cursor model to a
migration's current state, fire the trigger an event stands for, and read the new state.
Binding a machine per migration would cost ~72 ms per 1000 migrations (DESIGN §6); a shared
cursor costs one dictionary walk per event and keeps the one rule book.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from flywall.core.model import events as ev
from flywall.core.model.errors import IllegalTransition

if TYPE_CHECKING:
    from transitions.core import TransitionConfigDict

    from flywall.core.model.events import Event


class State(StrEnum):
    """A migration's state; the values are the names used in JSON output."""

    PENDING = "pending"
    RUNNING = "running"
    APPLIED = "applied"
    FAILED = "failed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


S = State
_FORCE: list[TransitionConfigDict] = [
    {"trigger": f"force_{s.value}", "source": "*", "dest": s} for s in State
]
_TRANSITIONS: list[TransitionConfigDict] = [
    {"trigger": "start_up", "source": [S.PENDING, S.FAILED, S.ROLLED_BACK], "dest": S.RUNNING},
    {"trigger": "apply", "source": S.RUNNING, "dest": S.APPLIED},
    {"trigger": "fail", "source": S.RUNNING, "dest": S.FAILED},
    # A failed batched state migration may have committed batches; it can be rolled back.
    {"trigger": "start_down", "source": [S.APPLIED, S.FAILED], "dest": S.ROLLING_BACK},
    {"trigger": "roll_back", "source": S.ROLLING_BACK, "dest": S.ROLLED_BACK},
    # A down that fails is undone with its transaction: the migration stays applied.
    {"trigger": "fail_down", "source": S.ROLLING_BACK, "dest": S.APPLIED},
    # Facts recorded while a migration runs (logs, write intents, batches) change nothing,
    # but are only legal while it runs: elsewhere they betray a corrupt journal.
    {"trigger": "note", "source": [S.RUNNING, S.ROLLING_BACK], "dest": None},
    # `repair` binds an applied migration to its edited file: only an applied one is bound.
    {"trigger": "repair", "source": S.APPLIED, "dest": None},
    *_FORCE,
]


_REFUSED = object()
"""The machine's answer to a trigger it refuses."""


class _Cursor:
    """The model the machine moves; it only ever holds one migration's state at a time."""

    state: State


_RECOVERED_TRIGGER = {
    ("up", "applied"): "apply",
    ("up", "failed"): "fail",
    ("down", "rolled_back"): "roll_back",
    ("down", "applied"): "fail_down",
}


def trigger_for(event: Event) -> str | None:  # noqa: C901, PLR0911 - one case per event kind
    """Name the trigger a migration event fires; None for events outside the lifecycle."""
    match event:
        case ev.MigrationStarted(direction="up"):
            return "start_up"
        case ev.MigrationStarted():
            return "start_down"
        case ev.MigrationApplied():
            return "apply"
        case ev.MigrationFailed(direction="up"):
            return "fail"
        case ev.MigrationFailed():
            return "fail_down"
        case ev.MigrationRolledBack():
            return "roll_back"
        case ev.MigrationLog() | ev.WriteIntent() | ev.BatchCommitted():
            return "note"
        case ev.MigrationRepaired():
            return "repair"
        case ev.StateForced(to_state=to_state):
            return f"force_{to_state}"
        case ev.Recovered(direction=direction, decision=decision):
            return _RECOVERED_TRIGGER.get((direction, decision), f"recover_{decision}")
    return None


class Lifecycle:
    """The rule book: which trigger may move a migration from which state to which."""

    def __init__(self) -> None:
        self._answers: dict[tuple[State, str], State | object] = {}
        self._cursor = _Cursor()
        self._built: Any = None

    @property
    def _machine(self) -> Any:
        """The `transitions` Machine, built when first asked.

        Importing `transitions` costs ~6 ms; a writer that ends up writing no event (a
        `migrate` with nothing pending) never asks, so never pays it. Every answer still
        comes from this machine.
        """
        if self._built is None:
            from transitions import Machine

            self._built = Machine(
                model=self._cursor,
                states=State,
                transitions=_TRANSITIONS,
                initial=State.PENDING,
                auto_transitions=False,
            )
        return self._built

    def step(self, version: str, state: State, trigger: str) -> State:
        """Return the state after `trigger`.

        Each (state, trigger) is asked of the machine once and its answer remembered:
        the machine stays the only rule book, and a replay of 100,000 events costs
        dictionary lookups instead of ~30 µs of `transitions` dispatch each.

        :raises IllegalTransition: the trigger is not allowed from `state`.
        """
        key = (state, trigger)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answers[key] = self._ask(state, trigger)
        if answer is _REFUSED:
            raise IllegalTransition(version, state.value, trigger)
        return answer  # type: ignore[return-value]  # not _REFUSED, so the State _ask found

    def _ask(self, state: State, trigger: str) -> State | object:
        """Fire `trigger` from `state` on the machine; the new state, or _REFUSED."""
        from transitions import MachineError

        self._machine.set_state(state, model=self._cursor)
        try:
            self._cursor.trigger(trigger)  # type: ignore[attr-defined]
        except (MachineError, AttributeError):
            return _REFUSED
        return State(self._cursor.state)
