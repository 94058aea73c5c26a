"""`flywall migration demo DIR`: a sample appliance tree to try every command on.

The tree is what a Flywall box looks like before the shipped migrations: a realistic
pre-1.1 flywall.hcl (comments throughout) with a `migration { }` block, an empty vendor
migrations folder, an api.json, and a state.db at the pre-migration schema holding a few
hundred DHCP leases, hosts and JSON lease records: all four components have work to do.
Deterministic (a seeded generator), so two demos are byte-for-byte comparable.
"""

from __future__ import annotations

import random
from pathlib import Path

import apsw
import msgspec

from flywall.core.errors import UsageError

CONFIG = """\
# Flywall appliance configuration (demo tree built by `flywall migration demo`).
# A pre-1.1 layout: zone membership on interfaces, the legacy dns_server block,
# listeners inside api { }, and vpn_link groups.
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
  description = "Uplink to the ISP"
  zone        = "wan" # moves to zone "wan" { match { } } in 1.3
  dhcp        = true
}

interface "eth1" {
  description   = "Office LAN"
  zone          = "lan"
  ipv4          = ["192.168.1.1/24"]
  access_web_ui = true
}

interface "eth2" {
  description = "Servers"
  ipv4        = ["10.0.20.1/24"]
}

zone "wan" {
  # Untrusted.
}

zone "lan" {
  # Trusted devices.
  description = "Office"
}

zone "dmz" {
  interface = "eth2"
}

// Legacy resolver block (replaced by dns { } in 1.4).
dns_server {
  enabled      = true
  listen_on    = ["192.168.1.1"]
  forwarders   = ["1.1.1.1", "9.9.9.9"]
  local_domain = "office.lan"
}

api {
  listen                = ":8080"
  tls_listen            = ":8443"
  tls_cert              = "/etc/flywall/tls/cert.pem"
  tls_key               = "/etc/flywall/tls/key.pem"
  disable_http_redirect = false
  require_auth          = true
}

/* Site-to-site links, grouped for failover. */
vpn_link_group "hq" {
  vpn_link "primary" {
    peer = "hq.example.net"
  }
  vpn_link "backup" {
    peer = "hq-backup.example.net"
  }
}

dhcp {
  scope "lan" {
    interface   = "eth1"
    range_start = "192.168.1.100"
    range_end   = "192.168.1.250"
    lease_time  = "24h"
    domain      = "${LOCAL_DOMAIN}"
  }
}
"""

API_DOCUMENT = {
    "schema_version": "1.0",
    "clients": [
        {"name": "fleet-agent", "scopes": ["status", "migrate"]},
        {"name": "dashboard", "scopes": ["status"]},
    ],
    "webhooks": [
        {"name": "pager", "route": "/api/v1/alerts", "events": ["failure"]},
        {"name": "audit", "route": "/api/v1/audit", "events": ["start", "complete"]},
    ],
    "route_versions": {"/api/v1/alerts": "v1", "/api/v1/audit": "v1"},
}

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
CREATE TABLE lease_records (
    mac TEXT PRIMARY KEY,
    data TEXT NOT NULL
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
    write_examples(directory / "etc/flywall/migrations")
    state.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(CONFIG, encoding="utf-8")
    api = directory / "var/lib/flywall/api.json"
    api.write_bytes(msgspec.json.format(msgspec.json.encode(API_DOCUMENT), indent=2) + b"\n")
    _state_db(state)
    return {
        "root": str(directory),
        "config": str(config),
        "state_db": str(state),
        "api_document": str(api),
        "migrations": str(directory / "etc/flywall/migrations"),
    }


def write_examples(folder: Path) -> list[Path]:
    """Copy the seed's sample migrations (`flywall.core.examples`) into `folder`.

    They are the box's own migrations, as a vendor would add them; the shipped set stays
    what Flywall's firmware accepts.
    """
    import importlib.resources

    written = []
    examples = importlib.resources.files("flywall.core.examples")
    for source in sorted(examples.iterdir(), key=lambda entry: entry.name):
        if source.name[:1].isdigit() and source.name.endswith((".py", ".sql", ".hcl")):
            target = folder / source.name
            target.write_bytes(source.read_bytes())
            written.append(target)
    return written


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
            for i, mac in enumerate(macs):
                record = {
                    "ip": f"192.168.{1 + i // 200}.{10 + i % 200}",
                    "scope": "lan",
                    "mac": mac,
                    "hostname": f"device-{i:03d}" if i < HOSTS else None,
                    "expires": _EPOCH + 86_400 + i,
                }
                db.execute(
                    "INSERT INTO lease_records VALUES (?, ?)",
                    (mac, msgspec.json.encode(record).decode()),
                )
    finally:
        db.close()
