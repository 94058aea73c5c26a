"""`flywall migration demo DIR`: a sample appliance tree to try every command on.

The tree is what a Flywall box looks like before the shipped migrations: a realistic
flywall.hcl with a `migration { }` block, an empty vendor migrations folder, and a
state.db at the pre-migration schema holding a few hundred DHCP leases and hosts.
Deterministic (a seeded generator), so two demos are byte-for-byte comparable.
"""

from __future__ import annotations

import random
from pathlib import Path

import apsw

from flywall.core.errors import UsageError

CONFIG = """\
# Flywall appliance configuration (demo tree built by `flywall migration demo`).
schema_version = "1.0"

# How firmware upgrades migrate this box. Paths are placed under --root.
migration {
  enabled       = true
  directory     = "/etc/flywall/migrations"
  backup_before = true
  timeout       = "30m"
  strategy      = "incremental"

  validate_before = true
  validate_after  = true

  backup_retention = "7d"
  backup_location  = "/var/lib/flywall/migration-backups"
}

interface "eth0" {
  description = "Uplink"
  zone        = "wan"
  dhcp        = true
}

interface "eth1" {
  description = "Office LAN"
  zone        = "lan"
  ipv4        = ["192.168.1.1/24"]
}

zone "wan" {}

zone "lan" {
  # Trusted devices.
  interfaces = ["eth1"]
}

dhcp {
  scope "lan" {
    interface   = "eth1"
    range_start = "192.168.1.100"
    range_end   = "192.168.1.250"
    lease_time  = "24h"
  }
}
"""

SCHEMA = """
CREATE TABLE dhcp_leases (
    mac_address TEXT PRIMARY KEY,
    ip_address TEXT NOT NULL UNIQUE,
    scope TEXT NOT NULL,
    lease_time INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX idx_dhcp_leases_expires ON dhcp_leases(expires_at);
CREATE TABLE dhcp_hosts (
    mac_address TEXT PRIMARY KEY,
    hostname TEXT NOT NULL
);
"""

LEASES = 300
HOSTS = 200
_EPOCH = 1_764_000_000


def build(directory: Path) -> dict[str, str]:
    """Create the tree under `directory`; return the paths made.

    :raises UsageError: `directory` already holds an appliance.
    """
    config = directory / "etc/flywall/flywall.hcl"
    state = directory / "var/lib/flywall/state.db"
    if config.exists() or state.exists():
        raise UsageError(f"{directory} already holds an appliance; choose an empty folder")
    (directory / "etc/flywall/migrations").mkdir(parents=True, exist_ok=True)
    state.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(CONFIG, encoding="utf-8")
    _state_db(state)
    return {
        "root": str(directory),
        "config": str(config),
        "state_db": str(state),
        "migrations": str(directory / "etc/flywall/migrations"),
    }


def _state_db(path: Path) -> None:
    rng = random.Random(20231201)  # noqa: S311 - sample data, not secrets
    macs = [":".join(f"{rng.randrange(256):02x}" for _ in range(6)) for _ in range(LEASES)]
    db = apsw.Connection(str(path))
    try:
        with db:
            db.execute(SCHEMA)
            for i, mac in enumerate(macs):
                issued = _EPOCH + rng.randrange(86_400)
                db.execute(
                    "INSERT INTO dhcp_leases VALUES (?, ?, 'lan', 86400, ?, ?)",
                    (mac, f"192.168.{1 + i // 200}.{10 + i % 200}", issued, issued + 86_400),
                )
            for i, mac in enumerate(macs[:HOSTS]):
                db.execute("INSERT INTO dhcp_hosts VALUES (?, ?)", (mac, f"device-{i:03d}"))
    finally:
        db.close()
