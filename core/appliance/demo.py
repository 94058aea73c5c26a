"""`flywall-migration demo DIR`: a sample v0.2 appliance to try every command on.

The tree is what a Flywall v0.2 box looks like before an upgrade: a flywall.hcl using every
legacy shape Flywall v0.3 still rewrites in memory (comments throughout), our settings in
migration.hcl beside it, the seed's example migrations in the migrations folder, an
api.json, and a state.db holding Flywall's v0.2 store (buckets of JSON entries and their
change log, no `hash` column: ~3,500 entries, ~4,000 changes) beside the seed's sample
tables (DHCP leases, hosts and JSON lease records) that the examples work on: every
component has work to do. Laid out as Flywall lays out a box (`opt/flywall/etc`,
`opt/flywall/var/lib`, and a `flywall.pid` in `opt/flywall/var/run` left by a daemon that
is no longer running), or with `layout="seed"` as the seed does (`etc/flywall`,
`var/lib/flywall`). Deterministic (seeded generators), so two demos are byte-for-byte
comparable.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import apsw
import msgspec

from flywall.core.appliance.layout import detect
from flywall.core.model.errors import UsageError
from flywall.core.targets.store import SCHEMA_V02, go_time

CONFIG = """\
# Flywall appliance configuration (demo tree built by `flywall migration demo`).
# A v0.2-era layout: zone membership on interfaces and in zones (v0.2's interfaces
# list too), unlabelled protection blocks, the legacy dns_server block, listeners
# inside api { }, and vpn_link groups: every shape Flywall still rewrites in memory.
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
  management { web = true } # admins reach the UI from the server room
}

interface "eth3" {
  description = "Guest Wi-Fi"
  ipv4        = ["192.168.50.1/24"]
}

interface "eth4" {
  description = "Guest wired ports"
  ipv4        = ["192.168.51.1/24"]
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

# v0.2 listed a zone's interfaces in the zone itself (v0.3 no longer loads this).
zone "guest" {
  interfaces = ["eth3", "eth4"]
}

# Packet sanity on every interface, as written before protection blocks had labels.
protection {
  invalid_packets = true
}

global_protection {
  syn_flood_protection = true
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
    domain      = "office.lan"
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
STORE_BUCKETS = (
    "dhcp_leases",
    "dhcp_reserved",
    "dns_cache",
    "dns_blocked",
    "sessions",
    "metrics",
    "config",
)
STORE_LEASES, STORE_DNS, STORE_SESSIONS = 1200, 1500, 60
"""Flywall's v0.2 store in the demo's state.db: ~3,500 entries, ~4,000 changes."""
STORE_START_NS = 1_771_146_000_000_000_000
"""2026-02-15 09:00:00 UTC: when the demo store's history begins."""
_EPOCH = 1_764_000_000


def build(directory: Path, layout: str = "flywall") -> dict[str, str]:
    """Create the tree under `directory` in `layout` ("flywall" or "seed"); return the paths.

    :raises UsageError: `directory` already holds an appliance, the layout is unknown, or
        the tree cannot be written there.
    """
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    config_dir, state_dir, run_dir = (directory / d if d else None for d in LAYOUTS[layout])
    assert config_dir is not None
    assert state_dir is not None
    if detect(str(directory), {}).found or (state_dir / "state.db").exists():
        raise UsageError(f"{directory} already holds an appliance; choose an empty folder")
    try:
        return _build(directory, layout, config_dir, state_dir, run_dir)
    except OSError as e:  # /proc/x, a read-only disk, a file in the way: one line, not a traceback
        where = e.filename or directory
        raise UsageError(f"{where}: cannot build the demo there: {e.strerror}") from e


def _build(
    directory: Path, layout: str, config_dir: Path, state_dir: Path, run_dir: Path | None
) -> dict[str, str]:
    """Write the tree; `build` has checked the layout and that `directory` holds no appliance."""
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
    """Copy the seed's sample migrations (`flywall.core.scripts.examples`) into `folder`.

    They are the box's own migrations, as a vendor would add them; the shipped set stays
    what Flywall's firmware accepts.
    """
    import importlib.resources

    written = []
    examples = importlib.resources.files("flywall.core.scripts.examples")
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
            db.execute(SCHEMA_V02)
            _StoreWriter(db, random.Random(20260215)).fill()  # noqa: S311 - sample data
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


class _StoreWriter:
    """Writes Flywall's v0.2 store as the daemon would have: entries and their change log.

    Every write takes the store's next version (one counter for the whole store) and
    appends one `changes` row in the same transaction; v0.2 has no `hash` column (the
    shipped 202602150001 adds it and fills the chain, as v0.3 does at open). Leases are
    renewed and some expire (deleted), so the log holds inserts, updates and deletes.
    """

    def __init__(self, db: apsw.Connection, rng: random.Random) -> None:
        self.db, self.rng = db, rng
        self.version = 0
        self.clock_ns = STORE_START_NS

    def fill(self) -> None:
        for bucket in STORE_BUCKETS:
            self.db.execute(
                "INSERT INTO buckets (name, created_at) VALUES (?, ?)",
                (bucket, "2026-01-05 09:00:00"),
            )
        macs = [self._mac() for _ in range(STORE_LEASES)]
        for i, mac in enumerate(macs):
            self.put("dhcp_leases", mac, self._lease(i, mac), expires=True)
            if i % 4 == 0:  # a reservation: every fourth device, half of them nameless
                self.put(
                    "dhcp_reserved",
                    mac,
                    {"mac": mac, "ip": self._ip(i), "hostname": f"desk-{i:04d}"},
                )
        for i in range(0, STORE_LEASES, 3):  # renewals, and clients gone for good
            if i % 9 == 0:
                self.delete("dhcp_leases", macs[i])
            else:
                self.put(
                    "dhcp_leases", macs[i], self._lease(i, macs[i], renewed=True), expires=True
                )
        for i in range(STORE_DNS):
            name = (
                f"{('www', 'api', 'cdn', 'mail')[i % 4]}{i}.example.{('com', 'net', 'org')[i % 3]}"
            )
            qtype = ("A", "AAAA")[i % 2]
            answer = f"93.184.{i % 250}.{1 + i % 200}" if qtype == "A" else f"2606:2800::{i:x}"
            self.put(
                "dns_cache",
                f"{name}:{qtype}",
                {"name": name, "type": qtype, "ttl": 300, "answers": [answer]},
                expires=True,
            )
        for i in range(STORE_SESSIONS):
            self.put(
                "sessions",
                f"sess-{i:05d}",
                {"user": ("admin", "operator")[i % 2], "created": "2026-02-14T08:00:00Z"},
            )

    def put(self, bucket: str, key: str, value: dict[str, Any], *, expires: bool = False) -> None:
        exists = self.db.execute(
            "SELECT 1 FROM entries WHERE bucket = ? AND key = ?", (bucket, key)
        ).fetchone()
        raw = msgspec.json.encode(value)
        self.version, self.clock_ns = (
            self.version + 1,
            self.clock_ns + self.rng.randrange(10**6, 10**9),
        )
        now = go_time(self.clock_ns)
        until = go_time(self.clock_ns + 86_400 * 10**9) if expires else None
        self.db.execute(
            "INSERT INTO entries (bucket, key, value, version, updated_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (bucket, key) DO UPDATE SET "
            "value = excluded.value, version = excluded.version, "
            "updated_at = excluded.updated_at, expires_at = excluded.expires_at",
            (bucket, key, raw, self.version, now, until),
        )
        self._log(bucket, key, raw, "update" if exists else "insert", now)

    def delete(self, bucket: str, key: str) -> None:
        self.db.execute("DELETE FROM entries WHERE bucket = ? AND key = ?", (bucket, key))
        self.version, self.clock_ns = (
            self.version + 1,
            self.clock_ns + self.rng.randrange(10**6, 10**9),
        )
        self._log(bucket, key, None, "delete", go_time(self.clock_ns))

    def _log(self, bucket: str, key: str, raw: bytes | None, change_type: str, now: str) -> None:
        self.db.execute(
            "INSERT INTO changes (bucket, key, value, change_type, version, timestamp) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (bucket, key, raw, change_type, self.version, now),
        )

    def _mac(self) -> str:
        return ":".join(f"{b:02x}" for b in (0x02, *(self.rng.randrange(256) for _ in range(5))))

    def _ip(self, i: int) -> str:
        return f"192.168.{1 + i // 240}.{10 + i % 240}"

    def _lease(self, i: int, mac: str, *, renewed: bool = False) -> dict[str, Any]:
        lease = {
            "mac": mac,
            "ip": self._ip(i),
            "hostname": "" if i % 3 == 0 else f"client-{i:04d}",
            "interface": ("eth1", "eth3")[i % 5 == 0],
            "lease_start": "2026-02-15T08:00:00Z",
            "lease_end": "2026-02-17T08:00:00Z" if renewed else "2026-02-16T08:00:00Z",
        }
        if i % 6 == 1:
            lease["vendor_id"] = "MSFT 5.0"
        return lease
