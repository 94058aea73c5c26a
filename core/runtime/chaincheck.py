"""The writers' check of the journal's chain: the tail since its verified point (issue 18.1).

Every writer refuses a journal whose chain is broken (DESIGN §7 pre-flight). Walking the
whole chain made each boot's `migrate`/`recover` grow with the box's history; a writer now
walks the events after the chain's verified point (`flywall.journal.verified`), which is
what earlier writers walked already. `journal verify` and `validate` still walk it all.

The point moves on once a walk covered `RECORD_AFTER` events: a boot after a short run walks
that run's few events and writes nothing, so a small command pays no extra durable commit,
and no boot walks much more than that many events plus what the last runs appended.
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
