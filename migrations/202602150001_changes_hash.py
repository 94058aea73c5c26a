"""Give Flywall's change log its hash chain, as Flywall v0.3 does when it opens a v0.2 store."""

from flywall.core.targets.store import change_hash, has_hash, is_store, parse_go_time

component = "database"


def up(ctx, db):
    if not is_store(db):
        ctx.log("no Flywall store (buckets, entries, changes) in state.db: nothing to do")
        return
    if not has_hash(db):
        db.execute("ALTER TABLE changes ADD COLUMN hash TEXT")
    filled = _fill(db)
    ctx.log(f"chained {filled} change row(s)")


def down(ctx, db):
    """Back to v0.2's shape: the log without its hashes (v0.3 would fill them again)."""
    if is_store(db) and has_hash(db):
        db.execute("ALTER TABLE changes DROP COLUMN hash")


def _fill(db):
    """Hash every row that has none, in version order, each on the row before it.

    A row that already has a hash is kept (the chain goes on from it): a store v0.3
    already opened, or a fill a power cut interrupted (its transaction was undone).
    """
    previous, filled = "", []
    rows = db.execute(
        "SELECT id, bucket, key, value, change_type, version, timestamp, hash "
        "FROM changes ORDER BY version, id"
    )
    for row_id, bucket, key, value, change_type, version, timestamp, stored in rows:
        current = stored
        if current is None:
            current = change_hash(
                previous, bucket, key, value, change_type, version, parse_go_time(timestamp)
            )
            filled.append((current, row_id))
        previous = current
    db.executemany("UPDATE changes SET hash = ? WHERE id = ?", filled)
    return len(filled)


def verify(ctx, db):
    from flywall.core.targets.store import check_chain

    if is_store(db):
        problem = check_chain(db)
        assert problem is None, problem
