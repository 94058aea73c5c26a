"""Add hostname and vendor_class to DHCP leases; fill hostname from dhcp_hosts by MAC."""

component = "database"
schema_version = "1.2.0"
depends_on = ["202312010002"]

ADDED = ("hostname", "vendor_class")


def up(ctx, db):
    if not _exists(db, "dhcp_leases"):
        msg = "state.db has no dhcp_leases table; is this a Flywall state database?"
        raise RuntimeError(msg)
    db.execute("ALTER TABLE dhcp_leases ADD COLUMN hostname TEXT")
    db.execute("ALTER TABLE dhcp_leases ADD COLUMN vendor_class TEXT")
    if not _exists(db, "dhcp_hosts"):
        ctx.log("no dhcp_hosts table: hostnames left empty")
        return
    db.execute(
        "UPDATE dhcp_leases SET hostname = h.hostname "
        "FROM dhcp_hosts AS h WHERE dhcp_leases.mac_address = h.mac_address"
    )
    filled = db.changes()
    ctx.log(f"filled hostname on {filled} lease(s) from dhcp_hosts")


def down(ctx, db):
    # SQLite cannot drop a column everywhere (indexes, constraints, old versions), so the
    # table is rebuilt without the two columns, from its own definition minus what `up`
    # appended: the schema ends exactly as it was before `up`.
    (sql,) = db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'dhcp_leases'"
    ).fetchone()
    original = sql.replace(", hostname TEXT", "").replace(", vendor_class TEXT", "")
    keep = [row[1] for row in db.execute("PRAGMA table_info(dhcp_leases)") if row[1] not in ADDED]
    ctx.recreate_table("dhcp_leases", original, keep)
    ctx.log(f"rebuilt dhcp_leases without {', '.join(ADDED)}")


def verify(ctx, db):
    columns = {row[1] for row in db.execute("PRAGMA table_info(dhcp_leases)")}
    missing = set(ADDED) - columns
    if missing:
        msg = f"dhcp_leases lacks {', '.join(sorted(missing))}"
        raise AssertionError(msg)


def _exists(db, table):
    found = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    return found is not None
