"""Reshape stored DHCP lease records: group address and client fields, in batches."""

component = "state"
schema_version = "2.0"

TABLE = "lease_records"


def up(ctx, records):
    if not _exists(records.db, TABLE):
        ctx.log(f"no {TABLE} table: nothing to reshape")
        return
    changed = records.transform(TABLE, _to_v2, batch_size=500)
    ctx.log(f"reshaped {changed} lease record(s)")


def down(ctx, records):
    if not _exists(records.db, TABLE):
        return
    changed = records.transform(TABLE, _to_v1, batch_size=500)
    ctx.log(f"restored {changed} lease record(s) to the old shape")


def _to_v2(record):
    if "address" in record:  # already reshaped: a resumed or repeated run skips it
        return None
    reshaped = {
        "address": {"ipv4": record["ip"], "scope": record.get("scope", "lan")},
        "client": {"mac": record["mac"], "hostname": record.get("hostname")},
        "expires_at": record["expires"],
    }
    extra = {
        k: v for k, v in record.items() if k not in {"ip", "scope", "mac", "hostname", "expires"}
    }
    return {**reshaped, **extra}


def _to_v1(record):
    if "address" not in record:
        return None
    old = {
        "ip": record["address"]["ipv4"],
        "scope": record["address"]["scope"],
        "mac": record["client"]["mac"],
        "hostname": record["client"]["hostname"],
        "expires": record["expires_at"],
    }
    extra = {k: v for k, v in record.items() if k not in {"address", "client", "expires_at"}}
    return {**old, **extra}


def _exists(db, table):
    found = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    return found is not None
