"""gen.py - generate every scenario's inputs; one SQL text for every tool.

Adapted from ../shared/peers (migsql.py, gen_*.py): the same trivial migrations and the same
1,000,000-row data migration, so our numbers sit next to the peers' from the same run.

Usage (run with the bench venv's python; `alembic` needs it):
    gen.py TOOL DIR N              N trivial migrations (TOOL: flywall yoyo alembic dbmate sql)
                                   migration i: up CREATE TABLE t_i, down DROP TABLE t_i
    gen.py TOOL DIR --data         migration 1 CREATE hosts, migration 2 ADD COLUMN + UPDATE
    gen.py flywall DIR --state B   migration 1 CREATE lease_records, migration 2 a `state`
                                   migration reshaping every JSON record (batch_size=B, or
                                   "atomic" for none; "sql:B": the same reshape written
                                   with records.transform_sql, batch_size=B)
    gen.py sql DIR --state         the same reshape as one plain SQLite UPDATE (the floor)
    gen.py fill DB hosts|leases N  load N deterministic rows (creating the table if missing)
    gen.py blob DB MIB             a SQLite file of about MIB MiB (backup scenario)
Prints the id of the last migration (for yoyo's rollback -r).
"""

from __future__ import annotations

import re
import sqlite3
import sys
from pathlib import Path

FLYWALL_HCL = 'schema_version = "1.0"\n'
MIGRATION_HCL = "migration {\n  include_shipped = false\n}\n"  # settings: beside, never inside


def up(i: int) -> str:
    return f"CREATE TABLE t_{i}(id INTEGER PRIMARY KEY, v TEXT)"


def down(i: int) -> str:
    return f"DROP TABLE t_{i}"


HOSTS_UP = "CREATE TABLE hosts(id INTEGER PRIMARY KEY, mac TEXT, hostname TEXT NULL)"
HOSTS_DOWN = "DROP TABLE hosts"
DATA_UP = [
    "ALTER TABLE hosts ADD COLUMN label TEXT",
    "UPDATE hosts SET label = coalesce(hostname, 'host-' || lower(replace(mac, ':', '')))",
]
DATA_DOWN = ["ALTER TABLE hosts DROP COLUMN label"]
HOSTS_FILL = """
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows})
INSERT INTO hosts(id, mac, hostname)
SELECT x,
       printf('02:00:%02x:%02x:%02x:%02x', (x >> 24) & 255, (x >> 16) & 255, (x >> 8) & 255, x & 255),
       CASE WHEN x % 3 = 0 THEN NULL ELSE 'host-' || x || '.example.net' END
FROM c
"""

# The state scenario: JSON lease records shaped like the demo tree's `lease_records`
# (flywall.core.appliance.demo), reshaped as the shipped 202312010008_reshape_lease_records does.
LEASES_UP = "CREATE TABLE lease_records(mac TEXT PRIMARY KEY, data TEXT NOT NULL)"
LEASES_DOWN = "DROP TABLE lease_records"
LEASES_FILL = """
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}),
m(x, mac) AS (SELECT x, printf('02:00:%02x:%02x:%02x:%02x', (x >> 24) & 255, (x >> 16) & 255,
                               (x >> 8) & 255, x & 255) FROM c)
INSERT INTO lease_records(mac, data)
SELECT mac, json_object(
    'ip', printf('10.%d.%d.%d', (x >> 16) & 255, (x >> 8) & 255, x & 255),
    'scope', CASE WHEN x % 5 = 0 THEN 'dmz' ELSE 'lan' END,
    'mac', mac,
    'hostname', CASE WHEN x % 3 = 0 THEN NULL ELSE 'device-' || x END,
    'expires', 1764086400 + x)
FROM m
"""
# The same reshape done by SQLite alone: "a plain SQLite UPDATE of the same data".
STATE_FLOOR = """UPDATE lease_records SET data = json_object(
    'address', json_object('ipv4', data ->> '$.ip', 'scope', coalesce(data ->> '$.scope', 'lan')),
    'client', json_object('mac', data ->> '$.mac', 'hostname', data ->> '$.hostname'),
    'expires_at', data -> '$.expires')
WHERE json_type(data, '$.address') IS NULL"""

STATE_MIGRATION = '''"""Bench: reshape every lease record (address and client fields grouped)."""

component = "state"
schema_version = "2.0"

BATCH = {batch}
TABLE = "lease_records"


def up(ctx, records):
    changed = records.transform(TABLE, _to_v2, batch_size=BATCH)
    ctx.log(f"reshaped {{changed}} lease record(s)")


def down(ctx, records):
    changed = records.transform(TABLE, _to_v1, batch_size=BATCH)
    ctx.log(f"restored {{changed}} lease record(s)")


def _to_v2(record):
    if "address" in record:
        return None
    reshaped = {{
        "address": {{"ipv4": record["ip"], "scope": record.get("scope", "lan")}},
        "client": {{"mac": record["mac"], "hostname": record.get("hostname")}},
        "expires_at": record["expires"],
    }}
    extra = {{
        k: v for k, v in record.items() if k not in {{"ip", "scope", "mac", "hostname", "expires"}}
    }}
    return {{**reshaped, **extra}}


def _to_v1(record):
    if "address" not in record:
        return None
    old = {{
        "ip": record["address"]["ipv4"],
        "scope": record["address"]["scope"],
        "mac": record["client"]["mac"],
        "hostname": record["client"]["hostname"],
        "expires": record["expires_at"],
    }}
    extra = {{k: v for k, v in record.items() if k not in {{"address", "client", "expires_at"}}}}
    return {{**old, **extra}}
'''


# The same migration as an author writes it with records.transform_sql: the floor's SQL
# expression, and the `where` that makes a resumed or repeated run skip reshaped rows.
STATE_MIGRATION_SQL = '''"""Bench: reshape every lease record (address and client fields grouped), in SQL."""

component = "state"
schema_version = "2.0"

BATCH = {batch}
TABLE = "lease_records"
TO_V2 = """json_object(
    'address', json_object('ipv4', data ->> '$.ip', 'scope', coalesce(data ->> '$.scope', 'lan')),
    'client', json_object('mac', data ->> '$.mac', 'hostname', data ->> '$.hostname'),
    'expires_at', data -> '$.expires')"""
TO_V1 = """json_object(
    'ip', data -> '$.address.ipv4', 'scope', data -> '$.address.scope',
    'mac', data -> '$.client.mac', 'hostname', data -> '$.client.hostname',
    'expires', data -> '$.expires_at')"""


def up(ctx, records):
    where = "json_type(data, '$.address') IS NULL"
    changed = records.transform_sql(TABLE, TO_V2, where=where, batch_size=BATCH)
    ctx.log(f"reshaped {{changed}} lease record(s)")


def down(ctx, records):
    where = "json_type(data, '$.address') IS NOT NULL"
    changed = records.transform_sql(TABLE, TO_V1, where=where, batch_size=BATCH)
    ctx.log(f"restored {{changed}} lease record(s)")
'''


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def statements(stmts: list[str]) -> str:
    return "".join(s + ";\n" for s in stmts)


# -- one function per tool: (DIR, items) where items = [(name, up stmts, down stmts)] ------


def trivial(n: int) -> list[tuple[str, list[str], list[str]]]:
    return [(f"t_{i}", [up(i)], [down(i)]) for i in range(1, n + 1)]


def data_items() -> list[tuple[str, list[str], list[str]]]:
    return [("hosts", [HOSTS_UP], [HOSTS_DOWN]), ("hosts_label", DATA_UP, DATA_DOWN)]


def gen_flywall(d: Path, items: list[tuple[str, list[str], list[str]]]) -> str:
    write(d / "etc/flywall/flywall.hcl", FLYWALL_HCL)
    write(d / "etc/flywall/migration.hcl", MIGRATION_HCL)
    m = d / "etc/flywall/migrations"
    m.mkdir(parents=True, exist_ok=True)
    last = ""
    for i, (name, upl, dnl) in enumerate(items, 1):
        last = f"{i:012d}"
        body = f"-- migrate:up\n{statements(upl)}\n-- migrate:down\n{statements(dnl)}"
        write(m / f"{last}_{name}.sql", body)
    return last


def gen_flywall_state(d: Path, batch: str) -> str:
    gen_flywall(d, [("lease_records", [LEASES_UP], [LEASES_DOWN])])
    template = STATE_MIGRATION_SQL if batch.startswith("sql:") else STATE_MIGRATION
    batch = batch.removeprefix("sql:")
    size = "None" if batch == "atomic" else str(int(batch))
    path = d / "etc/flywall/migrations/000000000002_reshape_lease_records.py"
    write(path, template.format(batch=size))
    return "000000000002"


def gen_yoyo(d: Path, items: list[tuple[str, list[str], list[str]]]) -> str:
    last = ""
    for i, (name, upl, dnl) in enumerate(items, 1):
        last = f"{i:04d}_{name}"
        write(d / "migrations" / f"{last}.sql", statements(upl))
        write(d / "migrations" / f"{last}.rollback.sql", statements(dnl))
    return last


def gen_dbmate(d: Path, items: list[tuple[str, list[str], list[str]]]) -> str:
    last = ""
    for i, (name, upl, dnl) in enumerate(items, 1):
        last = f"{i:05d}"
        body = f"-- migrate:up\n{statements(upl)}\n-- migrate:down\n{statements(dnl)}"
        write(d / "migrations" / f"{last}_{name}.sql", body)
    return last


ALEMBIC_REV = '''"""{name}"""
from alembic import op

revision = "{rev}"
down_revision = {down}
branch_labels = None
depends_on = None


def upgrade():
{up}


def downgrade():
{dn}
'''


def gen_alembic(d: Path, items: list[tuple[str, list[str], list[str]]]) -> str:
    from alembic import command
    from alembic.config import Config

    d.mkdir(parents=True, exist_ok=True)
    ini = d / "alembic.ini"
    if not ini.exists():
        command.init(Config(str(ini)), str(d / "alembic"), template="generic")
    text = ini.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^sqlalchemy\.url = .*$", "sqlalchemy.url = sqlite:///db.sqlite", text)
    ini.write_text(text, encoding="utf-8")
    prev = None
    for i, (name, upl, dnl) in enumerate(items, 1):
        rev = f"r{i:04d}"
        body_up = "\n".join(f"    op.execute({s!r})" for s in upl)
        body_dn = "\n".join(f"    op.execute({s!r})" for s in dnl)
        text = ALEMBIC_REV.format(name=name, rev=rev, down=repr(prev), up=body_up, dn=body_dn)
        write(d / "alembic" / "versions" / f"{rev}_{name}.py", text)
        prev = rev
    return prev or ""


def gen_sql(d: Path, arg: str) -> str:
    d.mkdir(parents=True, exist_ok=True)
    if arg == "--data":
        write(d / "data_up.sql", "BEGIN;\n" + statements(DATA_UP) + "COMMIT;\n")
        return ""
    if arg == "--state":
        write(d / "state_up.sql", "BEGIN;\n" + STATE_FLOOR + ";\nCOMMIT;\n")
        return ""
    stmts = statements([up(i) for i in range(1, int(arg) + 1)])
    write(d / "up_one_tx.sql", "BEGIN;\n" + stmts + "COMMIT;\n")
    write(d / "up_each_tx.sql", stmts)
    return ""


def fill(db: Path, what: str, rows: int) -> None:
    con = sqlite3.connect(db)
    create, sql = {"hosts": (HOSTS_UP, HOSTS_FILL), "leases": (LEASES_UP, LEASES_FILL)}[what]
    con.execute(create.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
    con.execute(sql.format(rows=rows))
    con.commit()
    con.close()


def blob(db: Path, mib: int) -> None:
    if db.exists():
        db.unlink()
    con = sqlite3.connect(db)
    con.execute("PRAGMA page_size = 4096")
    con.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, at INTEGER, body BLOB)")
    rows = mib * 1024 * 1024 // 4096
    con.execute(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
        "INSERT INTO blobs SELECT x, 1764000000 + x, randomblob(3900) FROM c",
        (rows,),
    )
    con.commit()
    con.close()


GENERATORS = {
    "flywall": gen_flywall,
    "yoyo": gen_yoyo,
    "dbmate": gen_dbmate,
    "alembic": gen_alembic,
}


def main() -> int:
    tool, target, arg = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    if tool == "fill":
        fill(target, arg, int(sys.argv[4]))
        return 0
    if tool == "blob":
        blob(target, int(arg))
        return 0
    if tool == "sql":
        print(gen_sql(target, arg))
        return 0
    if arg == "--state":
        print(gen_flywall_state(target, sys.argv[4]))
        return 0
    items = data_items() if arg == "--data" else trivial(int(arg))
    print(GENERATORS[tool](target, items))
    return 0


if __name__ == "__main__":
    sys.exit(main())
