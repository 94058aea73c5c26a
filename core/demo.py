"""`flywall-migration demo DIR`: a sample appliance tree to try every command on.

The tree is what a Flywall box looks like before the shipped migrations: a realistic
pre-1.1 flywall.hcl (comments throughout), our settings in migration.hcl beside it, an
empty vendor migrations folder, an api.json, and a state.db at the pre-migration schema
holding a few hundred DHCP leases, hosts and JSON lease records: all four components have
work to do. Laid out as Flywall lays out a box (`opt/flywall/etc`, `opt/flywall/var/lib`,
and a `flywall.pid` in `opt/flywall/var/run` left by a daemon that is no longer running),
or with `layout="seed"` as the seed does (`etc/flywall`, `var/lib/flywall`).
Deterministic (a seeded generator), so two demos are byte-for-byte comparable.
"""

from __future__ import annotations

import random
from pathlib import Path

import apsw
import msgspec

from flywall.core.errors import UsageError
from flywall.core.layout import detect

CONFIG = """\
# Flywall appliance configuration (demo tree built by `flywall migration demo`).
# A pre-1.1 layout: zone membership on interfaces, the legacy dns_server block,
# listeners inside api { }, and vpn_link groups.
schema_version = "1.0"

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

SETTINGS = """\
# How firmware upgrades migrate this box (flywall-migration's settings; Flywall itself
# never reads this file). Paths left out sit beside Flywall's own files.
migration {
  enabled       = true
  backup_before = true
  timeout       = "30m"
  strategy      = "incremental"

  validate_before = true
  validate_after  = true

  backup_retention = "7d"

  # The seed's example in migrations/ (add_zone_services) stamps "1.2" to show a
  # versioned config migration. A real Flywall v0.3 box keeps the default ceiling,
  # "1.1", what its loader accepts: a run that would go above it is refused.
  max_config_version = "1.2"
}
"""

LAYOUTS = {
    # layout: (config folder, state folder, run folder), relative to the root
    "flywall": ("opt/flywall/etc", "opt/flywall/var/lib", "opt/flywall/var/run"),
    "seed": ("etc/flywall", "var/lib/flywall", None),
}

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


def build(directory: Path, layout: str = "flywall") -> dict[str, str]:
    """Create the tree under `directory` in `layout` ("flywall" or "seed"); return the paths.

    :raises UsageError: `directory` already holds an appliance, or the layout is unknown.
    """
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    config_dir, state_dir, run_dir = (directory / d if d else None for d in LAYOUTS[layout])
    assert config_dir is not None
    assert state_dir is not None
    if detect(str(directory), {}).found or (state_dir / "state.db").exists():
        raise UsageError(f"{directory} already holds an appliance; choose an empty folder")
    config, settings, state = (
        config_dir / "flywall.hcl",
        config_dir / "migration.hcl",
        state_dir / "state.db",
    )
    (config_dir / "migrations").mkdir(parents=True, exist_ok=True)
    write_examples(config_dir / "migrations")
    state.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(CONFIG, encoding="utf-8")
    settings.write_text(SETTINGS, encoding="utf-8")
    api = state_dir / "api.json"
    api.write_bytes(msgspec.json.format(msgspec.json.encode(API_DOCUMENT), indent=2) + b"\n")
    _state_db(state)
    made = {
        "root": str(directory),
        "layout": layout,
        "config": str(config),
        "settings": str(settings),
        "state_db": str(state),
        "api_document": str(api),
        "migrations": str(config_dir / "migrations"),
    }
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        pid_file = run_dir / "flywall.pid"
        pid_file.write_text(f"{_dead_pid()}\n", encoding="utf-8")
        made["pid_file"] = str(pid_file)
    return made


def _dead_pid() -> int:
    """A pid no process can have: the kernel hands out pids below `pid_max`.

    The demo box's daemon "stopped" without removing its pid file, as a crashed one does;
    the tool must tell such a file from a running daemon.
    """
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 4_194_304  # the largest pid_max Linux allows


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
