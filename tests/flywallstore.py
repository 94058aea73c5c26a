"""A Flywall-shaped state.db for tests: the store's schema, realistic entries, a chained log.

Written from FLYWALL.md §5 alone (never from Flywall's code). The change log is built the
way the daemon writes one: every write takes the next version of one store-wide counter
and appends a `changes` row, its `hash` the SHA-256 of
`prev_hash|bucket|key|value|change_type|version|timestamp_unix_ns`. The formula and the Go
time text are written here a second time, on purpose, apart from core/targets/store.py: a
store built by one and checked by the other cannot share a mistake.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

import apsw

from flywall.core.targets.store import SCHEMA_V02, SCHEMA_V03

if TYPE_CHECKING:
    from pathlib import Path

START_NS = 1_771_149_845_123_456_789
"""2026-02-15 10:04:05.123456789 UTC: when the fixture's history begins."""


def go_text(ns: int) -> str:
    """Go's time.Time.String() of an instant in UTC (trailing fraction zeros dropped)."""
    whole = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns // 10**9))
    fraction = str(ns % 10**9).rjust(9, "0").rstrip("0")
    return f"{whole}{'.' + fraction if fraction else ''} +0000 UTC"


def chain_hash(prev: str, bucket: str, key: str, value: bytes | None, kind: str, version: int, ns: int) -> str:  # fmt: skip
    raw = f"{prev}|{bucket}|{key}|".encode() + (value or b"") + f"|{kind}|{version}|{ns}".encode()
    return hashlib.sha256(raw).hexdigest()


def lease(i: int) -> tuple[str, dict[str, Any]]:
    """The i-th DHCP lease: lower-case colon MAC key; every third has no hostname."""
    mac = ":".join(f"{b:02x}" for b in (0x02, 0x42, (i >> 16) & 255, (i >> 8) & 255, i & 255, 7))
    value: dict[str, Any] = {
        "mac": mac,
        "ip": f"192.168.{1 + i // 250 % 200}.{10 + i % 240}",
        "hostname": "" if i % 3 == 0 else f"host-{i}",
        "interface": "lan0" if i % 4 else "guest0",
        "lease_start": "2026-02-15T10:00:00Z",
        "lease_end": "2026-02-16T10:00:00Z",
    }
    if i % 5 == 0:
        value["client_id"] = f"01:{mac}"
    if i % 7 == 0:
        value["vendor_id"] = "android-dhcp-14"
    return mac, value


def reservation(i: int) -> tuple[str, dict[str, Any]]:
    """A reservation for lease i's MAC (every third lease, the ones without a hostname)."""
    mac, leased = lease(i)
    return mac, {"mac": mac, "ip": leased["ip"], "hostname": f"reserved-{i}"}


def dns_record(i: int) -> tuple[str, dict[str, Any]]:
    name = f"svc{i}.example.net"
    qtype = ("A", "AAAA", "MX")[i % 3]
    return f"{name}:{qtype}", {"name": name, "type": qtype, "ttl": 300, "answers": [f"10.9.{i % 256}.1"]}  # fmt: skip


class Writer:
    """Writes the store as the daemon does: entry upsert plus chained change, one counter."""

    def __init__(self, db: apsw.Connection, *, hashed: bool) -> None:
        self.db = db
        self.hashed = hashed
        self.version = db.execute(
            "SELECT max(coalesce((SELECT max(version) FROM entries), 0), "
            "coalesce((SELECT max(version) FROM changes), 0))"
        ).fetchone()[0]
        row = db.execute("SELECT * FROM changes ORDER BY id DESC LIMIT 1").fetchone()
        self.prev = "" if row is None or not hashed else row[-1]
        self.ns = START_NS

    def put(self, bucket: str, key: str, value: Any, expires: str | None = None) -> None:
        data = json.dumps(value, separators=(",", ":")).encode()
        exists = self.db.execute(
            "SELECT 1 FROM entries WHERE bucket = ? AND key = ?", (bucket, key)
        ).fetchone()
        self._log(bucket, key, data, "update" if exists else "insert")
        self.db.execute(
            "INSERT INTO entries (bucket, key, value, version, updated_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (bucket, key) DO UPDATE SET "
            "value = excluded.value, version = excluded.version, "
            "updated_at = excluded.updated_at, expires_at = excluded.expires_at",
            (bucket, key, data, self.version, go_text(self.ns), expires),
        )

    def delete(self, bucket: str, key: str) -> None:
        self._log(bucket, key, None, "delete")
        self.db.execute("DELETE FROM entries WHERE bucket = ? AND key = ?", (bucket, key))

    def _log(self, bucket: str, key: str, data: bytes | None, kind: str) -> None:
        self.version += 1
        self.ns += 1_000_100  # a millisecond and a bit: fractions of every length
        row = [bucket, key, data, kind, self.version, go_text(self.ns)]
        if self.hashed:
            self.prev = chain_hash(self.prev, bucket, key, data, kind, self.version, self.ns)
            row.append(self.prev)
        self.db.execute(
            f"INSERT INTO changes (bucket, key, value, change_type, version, timestamp"
            f"{', hash' if self.hashed else ''}) VALUES (?, ?, ?, ?, ?, ?{', ?' if self.hashed else ''})",
            row,
        )


def create_store(
    path: Path, leases: int = 60, *, hashed: bool = True, dns: int | None = None
) -> None:
    """A Flywall store at `path`: v0.3 (`hashed`) or v0.2, in rollback-journal mode.

    `leases` DHCP leases (some renewed, so their last change is an update; every 11th
    lease of a departed client inserted then deleted), a reservation for every third MAC,
    and `dns` DNS cache records (default a third of the leases).
    """
    db = apsw.Connection(str(path))
    db.execute(SCHEMA_V03 if hashed else SCHEMA_V02)
    with db:
        for bucket in ("dhcp_leases", "dhcp_reserved", "dns_cache", "metrics"):
            db.execute("INSERT INTO buckets (name) VALUES (?)", (bucket,))
        w = Writer(db, hashed=hashed)
        for i in range(leases):
            mac, value = lease(i)
            w.put("dhcp_leases", mac, value, "2026-02-16 10:00:00 +0000 UTC")
            if i % 3 == 0:
                w.put("dhcp_reserved", *reservation(i))
            if i % 11 == 10:
                w.delete("dhcp_leases", mac)
        for i in range(0, leases, 4):  # renewals
            mac, value = lease(i)
            if i % 11 != 10:
                w.put("dhcp_leases", mac, value | {"lease_end": "2026-02-17T10:00:00Z"})
        for i in range(leases // 3 if dns is None else dns):
            w.put("dns_cache", *dns_record(i), "2026-02-15 10:09:05 +0000 UTC")
    db.close()


def entries(db: apsw.Connection) -> dict[tuple[str, str], tuple[Any, int, Any]]:
    """(bucket, key) -> (decoded value, version, expires_at) of every entry."""
    return {
        (b, k): (json.loads(v), ver, exp)
        for b, k, v, ver, exp in db.execute(
            "SELECT bucket, key, value, version, expires_at FROM entries"
        )
    }


def replay(db: apsw.Connection) -> dict[tuple[str, str], tuple[Any, int]]:
    """The entries `changes` describes, replayed in id order from an empty store."""
    store: dict[tuple[str, str], tuple[Any, int]] = {}
    for b, k, v, kind, ver in db.execute(
        "SELECT bucket, key, value, change_type, version FROM changes ORDER BY id"
    ):
        if kind == "delete":
            store.pop((b, k), None)
        else:
            store[(b, k)] = (json.loads(v), ver)
    return store


def log(db: apsw.Connection) -> list[tuple[Any, ...]]:
    """The change log but for its timestamps and hashes (which differ from run to run)."""
    return db.execute(
        "SELECT bucket, key, value, change_type, version FROM changes ORDER BY id"
    ).fetchall()


def independent_chain_problem(db: apsw.Connection) -> str | None:
    """This module's own walk of the chain (from row 1): the first row whose hash is wrong."""
    from flywall.core.targets.store import parse_go_time

    prev = ""
    for row_id, b, k, v, kind, ver, stamp, stored in db.execute(
        "SELECT id, bucket, key, value, change_type, version, timestamp, hash FROM changes ORDER BY id"
    ):
        want = chain_hash(prev, b, k, v, kind, ver, parse_go_time(stamp))
        if stored != want:
            return f"row {row_id}: {stored} != {want}"
        prev = want
    return None
