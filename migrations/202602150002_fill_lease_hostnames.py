"""Fill an empty DHCP lease hostname from the reservation of the same MAC."""

import json

from flywall.core.targets.database import NOTES

component = "state"
depends_on = ["202602150001"]

VERSION = "202602150002"


def up(ctx, records):
    if not _has_buckets(records.db):
        ctx.log("no dhcp_leases in a Flywall store: nothing to fill")
        return
    reserved = _reserved_hostnames(records.db)
    filled = []

    def fill(lease):
        hostname = reserved.get(str(lease.get("mac", "")).lower())
        if lease.get("hostname") or not hostname:
            return None
        filled.append(lease["mac"].lower())
        return {**lease, "hostname": hostname}

    # One transaction: the leases and the list of what was filled commit together.
    changed = records.bucket("dhcp_leases").transform(fill)
    # Our bookkeeping (not Flywall's tables): which leases were filled, for `down`.
    records.db.execute(
        f"CREATE TABLE IF NOT EXISTS {NOTES} (version TEXT, item TEXT, PRIMARY KEY (version, item))"
    )
    records.db.executemany(
        f"INSERT OR IGNORE INTO {NOTES} VALUES (?, ?)", [(VERSION, mac) for mac in filled]
    )
    ctx.log(f"filled the hostname of {changed} lease(s) from their reservation")


def down(ctx, records):
    if not _has_buckets(records.db) or not _exists(records.db, NOTES):
        return
    notes = records.db.execute(f"SELECT item FROM {NOTES} WHERE version = ?", (VERSION,))
    macs = {mac for (mac,) in notes}

    def empty(lease):
        if str(lease.get("mac", "")).lower() not in macs:
            return None
        return {**lease, "hostname": ""}

    changed = records.bucket("dhcp_leases").transform(empty)
    records.db.execute(f"DELETE FROM {NOTES} WHERE version = ?", (VERSION,))
    ctx.log(f"emptied the hostname of {changed} lease(s) again")


def _reserved_hostnames(db):
    hostnames = {}
    for key, value in db.execute("SELECT key, value FROM entries WHERE bucket = 'dhcp_reserved'"):
        try:
            reservation = json.loads(value)
            hostname, mac = reservation.get("hostname"), reservation.get("mac") or key
        except (ValueError, AttributeError):  # not a JSON object: not a reservation we know
            continue
        if hostname:
            hostnames[str(mac).lower()] = hostname
    return hostnames


def _has_buckets(db):
    return _exists(db, "entries") and _exists(db, "changes")


def _exists(db, table):
    found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
    return found.fetchone() is not None
