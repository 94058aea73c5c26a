"""floors.py - reference runs with no migration tool: what the work costs by itself.

Usage:
    floors.py data DB    the (e) data migration (ADD COLUMN + UPDATE) with Python's sqlite3,
                         in one transaction (the peers' ref_pysqlite.py)
    floors.py state DB   the state reshape done the way a Python migration does it: read each
                         JSON record, call the same function, write it back, one transaction
"""

from __future__ import annotations

import json
import sqlite3
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import gen


def data(db: str) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN")
    for s in gen.DATA_UP:
        con.execute(s)
    con.execute("COMMIT")
    con.close()


def to_v2(record: dict) -> dict | None:
    """The same function as the generated state migration's `_to_v2`."""
    if "address" in record:
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


def state(db: str) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN")
    rows = con.execute("SELECT rowid, data FROM lease_records ORDER BY rowid").fetchall()
    changes = []
    for key, raw in rows:
        new = to_v2(json.loads(raw))
        if new is not None:
            changes.append((json.dumps(new, separators=(",", ":")), key))
    con.executemany("UPDATE lease_records SET data = ? WHERE rowid = ?", changes)
    con.execute("COMMIT")
    con.close()


if __name__ == "__main__":
    {"data": data, "state": state}[sys.argv[1]](sys.argv[2])
