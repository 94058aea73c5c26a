"""The writers' check of the journal's chain: the tail since its verified point (issue 18.1).

Every writer refuses a journal whose chain is broken (DESIGN §7 pre-flight). Walking the
whole chain made each boot's `migrate`/`recover` grow with the box's history; a writer now
walks the events after the chain's verified point (`flywall.journal.verified`), which is
what earlier writers walked already. `journal verify` and `validate` still walk it all.

The point moves on once a walk covered `RECORD_AFTER` events: a boot after a short run walks
that run's few events and writes nothing, so a small command pays no extra durable commit,
and no boot walks much more than that many events plus what the last runs appended.

A run that itself appended that many events records the point at its end, under its writer
lock (`record_after_run`): its own events were hashed by this process right after its walk,
so the next writer does not walk them again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flywall.core.runtime.crash import crashpoint

if TYPE_CHECKING:
    from flywall.journal import ChainEnd, Journal

RECORD_AFTER = 1000
"""Events a walk must have covered before it records a new verified point (~5 ms of walk)."""


def check_chain(journal: Journal) -> ChainEnd:
    """Walk the chain after its verified point; record the end as the new point after a long walk.

    :raises JournalTampered: naming the first bad seq (the workspace's journal translates it).
    """
    point = journal.verified_point()
    end = journal.verify(since=point)
    if end.seq - (0 if point is None else point.seq) >= RECORD_AFTER:
        crashpoint("before-verified-point")
        journal.record_verified(end)
        crashpoint("after-verified-point")
    return end


def record_after_run(journal: Journal) -> None:
    """At the end of a writing run: record the chain's end if the run carried it far enough.

    The end is where this run's pre-flight walk ended, carried over the events the run
    appended right after it (`Journal.walked_end`); None (nothing recorded) if another
    process appended in between. Recorded only once it is `RECORD_AFTER` events past the
    recorded point, like a long walk's: a short run adds no durable commit.
    """
    end = journal.walked_end()
    if end is None:
        return
    point = journal.verified_point()
    if end.seq - (0 if point is None else point.seq) >= RECORD_AFTER:
        crashpoint("before-run-verified-point")
        journal.record_verified(end)
        crashpoint("after-run-verified-point")
