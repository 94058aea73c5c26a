"""Which components keep their migrations' evidence inside state.db (DESIGN §1, §7).

A `database` or `state` migration commits together with a marker row in state.db, so
recovery, drift and the dry run read that row; a `config` or `api` migration is a file
replace, told apart by digests. This is the one definition of that split.
"""

MARKED = ("database", "state")
"""Components whose migrations leave a marker row in state.db."""
