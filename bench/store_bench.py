"""Flywall's store: a bucket transform against a plain SQLite UPDATE, and the chain check.

    .venv/bin/python bench/store_bench.py [ROWS]     # default 1,000,000 dhcp_leases entries

Builds one v0.3 store (entries plus their chained `insert` changes) under bench/.work/,
then, each on a fresh copy and with the engine's durability (rollback journal,
synchronous = EXTRA):
  - plain UPDATE: `UPDATE entries SET value = json_set(value, '$.tag', 1)` in one
    transaction: no version, no change row, no chain (what a migration must not do, and
    the floor of any tool);
  - bucket transform (Python fn) and transform_sql (the same json_set), atomic and in
    batches of 10,000: each entry gets its version and updated_at, and a chained
    `changes` row;
  - check_chain on the store before (N rows of log) and after a transform (2N).
Prints one line per figure. Nothing here asserts a time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import apsw

from flywall.core.targets.records import Records
from flywall.core.targets.store import SCHEMA_V03, check_chain, go_time

WORK = Path(__file__).resolve().parent / ".work" / "store"
BATCH = 10_000


def build(path: Path, rows: int) -> None:
    """N leases and their chained insert changes, written in bulk (not through the helper)."""
    db = apsw.Connection(str(path))
    db.execute(SCHEMA_V03)
    db.execute("INSERT INTO buckets (name) VALUES ('dhcp_leases')")
    start = 1_771_149_845_000_000_000
    prev = ""
    with db:
        for first in range(0, rows, 100_000):
            entry_rows, change_rows = [], []
            for i in range(first, min(rows, first + 100_000)):
                mac = ":".join(
                    f"{b:02x}" for b in (2, 0x42, i >> 16 & 255, i >> 8 & 255, i & 255, 7)
                )
                value = json.dumps(
                    {
                        "mac": mac,
                        "ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                        "hostname": f"host-{i}" if i % 3 else "",
                        "interface": "lan0",
                        "lease_start": "2026-02-15T10:00:00Z",
                        "lease_end": "2026-02-16T10:00:00Z",
                    },
                    separators=(",", ":"),
                ).encode()
                ns = start + i * 1_000
                stamp = go_time(ns)
                version = i + 1
                raw = (
                    f"{prev}|dhcp_leases|{mac}|".encode()
                    + value
                    + f"|insert|{version}|{ns}".encode()
                )
                prev = hashlib.sha256(raw).hexdigest()
                entry_rows.append(("dhcp_leases", mac, value, version, stamp, None))
                change_rows.append(("dhcp_leases", mac, value, "insert", version, stamp, prev))
            db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)", entry_rows)
            db.executemany(
                "INSERT INTO changes (bucket, key, value, change_type, version, timestamp, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                change_rows,
            )
    db.close()


def fresh(template: Path, name: str) -> apsw.Connection:
    path = WORK / f"{name}.db"
    shutil.copyfile(template, path)
    db = apsw.Connection(str(path))
    db.execute("PRAGMA synchronous = EXTRA")  # the engine's, in rollback-journal mode
    return db


def timed(label: str, rows: int, work) -> float:
    """Wall and CPU time (the machine is shared: CPU is the steadier figure); returns CPU."""
    t0, c0 = time.perf_counter(), time.process_time()
    work()
    took, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"{label:<50} wall {took:7.2f} s {rows / took:>10,.0f} rows/s | "
        f"cpu {cpu:7.2f} s {rows / cpu:>10,.0f} rows/s"
    )
    return cpu


def in_transaction(db: apsw.Connection, work) -> None:
    db.execute("BEGIN IMMEDIATE")
    work()
    db.execute("COMMIT")


def bucket_run(db: apsw.Connection, method: str, argument, batch: int | None) -> None:
    records = Records(db, "000000000001:up", on_batch=lambda *_: None, progress=lambda *_: None)
    in_transaction(
        db, lambda: getattr(records.bucket("dhcp_leases"), method)(argument, batch_size=batch)
    )


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    WORK.mkdir(parents=True, exist_ok=True)
    template = WORK / f"template-{rows}.db"
    if not template.exists():
        t0 = time.perf_counter()
        build(template, rows)
        print(f"built {rows:,} entries + chained log in {time.perf_counter() - t0:.1f} s")
    print(
        f"rows = {rows:,}; batches of {BATCH:,}; python {sys.version.split()[0]}, SQLite {apsw.sqlite_lib_version()}"
    )

    db = fresh(template, "plain")
    plain = timed(
        "plain UPDATE json_set (no version, no log)",
        rows,
        lambda: in_transaction(
            db,
            lambda: db.execute(
                "UPDATE entries SET value = json_set(value, '$.tag', 1) WHERE bucket = 'dhcp_leases'"
            ),
        ),
    )
    db.close()

    tag = lambda v: v | {"tag": 1}  # noqa: E731 - the vendor's fn
    expression = "json_set(value, '$.tag', 1)"
    figures = {}
    for label, method, argument, batch in [
        ("bucket transform_sql, atomic", "transform_sql", expression, None),
        ("bucket transform_sql, batches", "transform_sql", expression, BATCH),
        ("bucket transform (Python fn), atomic", "transform", tag, None),
        ("bucket transform (Python fn), batches", "transform", tag, BATCH),
    ]:
        db = fresh(template, method)
        figures[label] = timed(
            label, rows, lambda db=db, m=method, a=argument, b=batch: bucket_run(db, m, a, b)
        )
        db.close()
    for label, took in figures.items():
        print(f"  {label}: {took / plain:.1f}x the plain UPDATE (cpu)")

    db = apsw.Connection(str(template))
    timed(f"check_chain, {rows:,} changes", rows, lambda: check_chain(db))
    db.close()
    db = apsw.Connection(str(WORK / "transform.db"))
    (total,) = db.execute("SELECT count(*) FROM changes").fetchone()
    problem = []
    timed(
        f"check_chain, {total:,} changes (after a transform)",
        total,
        lambda: problem.append(check_chain(db)),
    )
    print(f"chain after the transform: {problem[0] or 'intact'}")
    db.close()


if __name__ == "__main__":
    main()
