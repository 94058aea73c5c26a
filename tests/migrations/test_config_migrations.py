"""Flywall's shipped config migrations on Flywall-shaped configs (FLYWALL.md §2-§3, DESIGN §8).

The shipped config migrations make once, on disk, what Flywall v0.3 does in memory at every
load, and keep `schema_version` within what the firmware accepts ("1.1"): the 1.0 -> 1.1
step adds `ebpf { enabled = false }`; the shape fixes are version-neutral, idempotent and
guarded by the shapes they fix.

The fixtures are ours (tests/fixtures/flywall_configs/NAME.hcl), written to reproduce the
shapes FLYWALL.md describes: comments full-line and trailing, tabs, CRLF, one-line blocks,
object literals nested deep, labels like "*", MACs and IPs. For each fixture and migration,
NAME.after.SLUG.hcl is the reviewed text that migration alone makes of the fixture (no file:
the migration leaves it as it is), and NAME.after.all.hcl what the whole chain makes of it,
as the engine runs it. Reviewing a change means reading those diffs line by line against
FLYWALL.md §3; regenerating them from the code would defeat them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest
from conftest import FLYWALL
from hclgraft import every_graft_checked
from templates import build_demo

from flywall.core import commands
from flywall.core.appliance import demo
from flywall.core.appliance.workspace import Workspace
from flywall.core.formats.hcl import Body, Document
from flywall.core.model.errors import ConfigParseError, DiscoveryError
from flywall.core.scripts.discovery import discover, from_source, load_module, shipped_directory
from flywall.core.services.validate import validate

EBPF, ZONES, DNS, WEB, UPLINK, PROTECTION = VERSIONS = [
    "202311300001",
    "202312010004",
    "202312010005",
    "202312010006",
    "202312010007",
    "202312010010",
]
CONFIG_MIGRATIONS = [m for m in discover([shipped_directory()]) if m.component == "config"]
MODULES = {m.version: load_module(m) for m in CONFIG_MIGRATIONS}
SLUGS = {m.version: m.slug for m in CONFIG_MIGRATIONS}
FIXTURES = Path(__file__).parents[1] / "fixtures" / "flywall_configs"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.hcl") if ".after." not in p.name)
CEILING = (1, 1)  # what Flywall v0.3 accepts


def original(name: str) -> str:
    return (FIXTURES / f"{name}.hcl").read_bytes().decode("utf-8")


def expected(name: str, step: str) -> str:
    """The reviewed text after `step` (a slug, or "all"); no file means no change."""
    path = FIXTURES / f"{name}.after.{step}.hcl"
    return path.read_bytes().decode("utf-8") if path.exists() else original(name)


class Context:
    """What a config migration uses of MigrationContext: a log, kept to look at."""

    def __init__(self) -> None:
        self.logged: list[tuple[str, str]] = []

    def log(self, message: str, level: str = "info") -> None:
        self.logged.append((level, message))


def step(version: str, direction: str, text: str, ctx: Context | None = None) -> str:
    """Run one migration's up or down on `text`, as the engine does, and return the result."""
    document = Document.parse(text, "flywall.hcl")
    getattr(MODULES[version], direction)(ctx or Context(), document)
    return document.text()


def migrated(text: str) -> str:
    for version in VERSIONS:
        text = step(version, "up", text)
    return text


def rolled_back(text: str) -> str:
    for version in reversed(VERSIONS):
        text = step(version, "down", text)
    return text


def pairs(*, exact: bool = False, changed: bool = False) -> list[object]:
    """Every (fixture, migration); with `exact`, the INEXACT ones are strict xfails.

    With `changed`, only those where the migration changes the fixture: the engine runs no
    down after an up that wrote nothing (test_a_rollback_runs_no_down_where_up_wrote_nothing).
    """
    params = []
    for name in NAMES:
        for version in VERSIONS:
            if changed and not (FIXTURES / f"{name}.after.{SLUGS[version]}.hcl").exists():
                continue
            reason = INEXACT.get((name, version)) if exact else None
            marks = [pytest.mark.xfail(reason=f"down cannot know: {reason}")] if reason else []
            params.append(pytest.param(name, version, marks=marks, id=f"{name}-{SLUGS[version]}"))
    return params


# Where down right after up cannot give back the original bytes, because the new shape no
# longer says where or how a line was written, or which spelling it had. Down then restores
# a config Flywall reads the same way (checked below: migrating it again means the same).
INEXACT = {
    ("home_v01", EBPF): 'an absent schema_version comes back as "1.0", which it means',
    ("datacenter_crlf", UPLINK): 'uplink_group "internet" was already spelled the v0.3 way',
    ("home_v01", ZONES): "the zone lines sat mid-block, padded, with inline comments",
    ("home_v01", DNS): "enabled and listen_on (dropped) sat above the upstream lines",
    ("branch_v02", ZONES): "interfaces = [...] lists, which Flywall v0.3 refuses, never come back",
    ("branch_v02", DNS): "local_domain and cache_size were dropped: dns_server was not enabled",
    ("branch_v02", PROTECTION): "global_protection comes back as the unlabelled protection",
    ("datacenter_crlf", ZONES): "a zone line sat after a nested block; eth2 was named twice",
    ("datacenter_crlf", DNS): "dns's own mode and dnssec were replaced by dns_server's",
    ("edge_tabs", ZONES): "zone core's one-line body was expanded to hold its match",
}


# -- the migrations as shipped ---------------------------------------------------------------


def test_the_shipped_config_migrations_are_the_ebpf_step_and_version_neutral_shape_fixes():
    described = [(m.version, m.schema_version, m.depends_on, m.has_down) for m in CONFIG_MIGRATIONS]
    assert described == [
        (EBPF, "1.1", (), True),
        (ZONES, None, (), True),
        (DNS, None, (), True),
        (WEB, None, (), True),
        (UPLINK, None, (), True),
        (PROTECTION, None, (), True),
    ]
    assert all(m.description and not m.description.endswith(" ") for m in CONFIG_MIGRATIONS)


def test_no_shipped_migration_stamps_a_config_version_flywall_v03_refuses():
    for m in discover([shipped_directory()]):
        if m.component == "config" and m.schema_version is not None:
            assert tuple(map(int, m.schema_version.split("."))) <= CEILING, m.name
    assert "add_zone_services" not in {m.slug for m in discover([shipped_directory()])}


def test_the_seed_example_ships_as_package_data_and_demo_writes_it_into_the_box(tmp_path):
    """add_zone_services stamps 1.2, which Flywall v0.3 refuses: an example, not shipped."""
    written = demo.write_examples(tmp_path)

    assert [p.name for p in written] == [
        "202312010001_add_zone_services.py",
        "202312010002_add_dns_cache_table.sql",
        "202312010003_migrate_dhcp_leases.py",
        "202312010008_reshape_lease_records.py",
        "202312010009_rename_webhook_route.py",
    ]
    examples = discover([tmp_path])
    [zone_services] = [m for m in examples if m.component == "config"]
    assert (zone_services.component, zone_services.schema_version) == ("config", "1.2")
    shipped = {m.version for m in discover([shipped_directory()])}
    assert not shipped & {m.version for m in examples}
    paths = demo.build(tmp_path / "box")
    assert (Path(paths["migrations"]) / "202312010001_add_zone_services.py").is_file()


def test_the_fixtures_are_flywall_shaped_and_cover_every_legacy_shape():
    """Each fixture parses; together they hold every shape of FLYWALL.md §3."""
    assert len(NAMES) >= 5
    assert all(Document.parse(original(name)).body.blocks() for name in NAMES)
    everything = "\n".join(original(n) for n in NAMES)
    for shape in [
        r"(?m)^protection \{",
        r"(?m)^global_protection \{",
        r'(?m)^protection "legacy_global" \{',
        r'vpn_link_group "',
        r'vpn_link "',
        r'(?m)^\s+zone\s+= "',
        r'(?m)^\s+interface\s+= "',
        r"(?m)^\s+interfaces = \[",
        r"(?m)^dns_server \{",
        r"(?m)^\s+listen_on",
        r"(?m)^\s+access_web_ui\s+= true",
        r"management \{ web_ui = true \}",
        r"disable_http_redirect",
        r"\r\n",
        r'"\*"',
        r"[0-9a-f]{2}(:[0-9a-f]{2}){5}",
        r"= \{[^}]*= \{[^}]*= \{[^}]*= \{[^}]*= \{",  # object literals five deep
    ]:
        assert re.search(shape, everything), shape


# -- up: the reviewed text, once ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "version"), pairs())
def test_each_migration_makes_the_reviewed_text_of_each_fixture(name, version):
    assert step(version, "up", original(name)) == expected(name, SLUGS[version])


@pytest.mark.parametrize("name", NAMES)
def test_the_whole_chain_makes_the_reviewed_text_and_ends_at_1_1(name):
    done = migrated(original(name))

    assert done == expected(name, "all")
    assert Document.parse(done).schema_version == "1.1"


@pytest.mark.parametrize(("name", "version"), pairs())
def test_up_twice_is_up_once(name, version):
    once = step(version, "up", original(name))

    assert step(version, "up", once) == once


@pytest.mark.parametrize("name", NAMES)
def test_every_up_leaves_a_migrated_config_untouched(name):
    done = expected(name, "all")
    for version in VERSIONS:
        document = Document.parse(done)
        MODULES[version].up(Context(), document)
        assert not document.changed, version


def test_a_config_in_flywall_v03_spelling_is_left_alone_by_every_migration():
    """Guarded by the shapes they fix: nothing to fix, nothing written."""
    assert not (set(FIXTURES.glob("current_v03.after.*")))
    for version in VERSIONS:
        assert step(version, "up", original("current_v03")) == original("current_v03")


def test_crlf_and_a_missing_final_newline_survive_the_chain():
    crlf = expected("datacenter_crlf", "all")
    assert crlf.count("\n") == crlf.count("\r\n") > original("datacenter_crlf").count("\r\n")
    assert not expected("edge_tabs", "all").endswith("\n")


# -- what Flywall v0.3's strict loader would see ------------------------------------------------


def leftovers(text: str) -> list[str]:
    """Shapes Flywall v0.3 would still rewrite in memory, or refuse, in a migrated config.

    Our own check, from FLYWALL.md §2-§3: a version above 1.1, a legacy shape, a duplicate
    labelled block or attribute. A dns_server left because dns already serves or forwards is
    Flywall's skip rule, not a leftover.
    """
    document = Document.parse(text)
    root = document.body
    found = []
    version = document.schema_version or "1.0"
    if tuple(map(int, version.split("."))) > CEILING:
        found.append(f"schema_version {version}")
    found += [
        f"unlabelled {b.type}" for b in root.blocks() if b.type in _PROTECTIONS and not b.labels
    ]
    found += [f"interface {i.labels} zone" for i in root.blocks("interface") if i.get("zone")]
    for zone in root.blocks("zone"):
        found += [f"zone {zone.labels} {a}" for a in ("interface", "interfaces") if zone.has(a)]
    dns = root.block("dns")
    skipped = dns is not None and (dns.blocks("serve") or dns.get("forwarders"))
    found += ["dns_server"] * (len(root.blocks("dns_server")) if not skipped else 0)
    found += _duplicates(root, "")
    return found


_PROTECTIONS = ("protection", "global_protection")


def _duplicates(body: Body, path: str) -> list[str]:
    found = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for block in body.blocks():
        key = (block.type, block.labels)
        if block.type in {"vpn_link_group", "vpn_link"}:
            found.append(f"{path}{block.type}")
        if block.labels and key in seen:
            found.append(f"duplicate {path}{block.type} {block.labels}")
        seen.add(key)
        found += _duplicates(block.body, f"{path}{block.type}.")
    names = [item for item in body.items() if isinstance(item, str)]
    found += [f"duplicate {path}{n}" for n in sorted(set(names)) if names.count(n) > 1]
    return found


@pytest.mark.parametrize("name", NAMES)
def test_a_migrated_config_holds_no_shape_flywall_v03_would_rewrite_or_refuse(name):
    assert leftovers(original(name)) if name != "current_v03" else True
    assert leftovers(expected(name, "all")) == []


# -- down right after up --------------------------------------------------------------------------


def meaning(text: str) -> list[object]:
    """What a config says, without layout: its attributes and blocks, each level sorted."""
    return _meaning(Document.parse(text).body)


def _meaning(body: Body) -> list[object]:
    said: list[object] = [("=", name, repr(value)) for name, value in body.attributes.items()]
    said += [(b.type, b.labels, _meaning(b.body)) for b in body.blocks()]
    return sorted(said, key=repr)


@pytest.mark.parametrize(("name", "version"), pairs(exact=True, changed=True))
def test_down_right_after_up_returns_the_original_bytes(name, version):
    assert step(version, "down", step(version, "up", original(name))) == original(name)


@pytest.mark.parametrize(("name", "version"), pairs(changed=True))
def test_down_restores_a_shape_that_migrates_to_the_same_meaning(name, version):
    """Where the bytes cannot come back, what Flywall reads does: migrating the restored
    config again says what up made of the original (blocks may sit elsewhere)."""
    up = step(version, "up", original(name))
    down = step(version, "down", up)

    assert down != up
    assert meaning(step(version, "up", down)) == meaning(up)


@pytest.mark.parametrize(("name", "version"), pairs(changed=True))
def test_down_twice_is_down_once(name, version):
    once = step(version, "down", step(version, "up", original(name)))

    assert step(version, "down", once) == once


@pytest.mark.parametrize("name", NAMES)
def test_each_edit_the_chain_makes_reparses_as_the_whole_file_does(name, monkeypatch):
    """Most edits re-parse only the block they fall in (hcl._grafted): each such parse must
    be the whole file's parse, token for token and offset for offset."""
    with every_graft_checked(monkeypatch) as grafted:
        rolled_back(migrated(original(name)))
    assert grafted, "no edit went through the graft: this test would check nothing"


@pytest.mark.parametrize("name", NAMES)
def test_the_chain_rolled_back_migrates_to_the_same_meaning(name):
    done = migrated(original(name))

    assert meaning(migrated(rolled_back(done))) == meaning(done)


# -- what each migration decides, as Flywall does (FLYWALL.md §3) ----------------------------------


def test_several_unlabelled_protections_get_distinct_labels_next_to_a_taken_one():
    config = (
        "protection {\n  anti_spoofing = true\n}\n\n"
        'protection "legacy_global" {\n  interface = "eth0"\n}\n\n'
        "global_protection { invalid_packets = true }\n\n"
        'protection {\n  interface = "eth1" # kept: it names its own\n}\n'
    )
    ctx = Context()

    up = step(PROTECTION, "up", config, ctx)

    assert up == (
        'protection "legacy_global_2" {\n  interface = "*"\n  anti_spoofing = true\n}\n\n'
        'protection "legacy_global" {\n  interface = "eth0"\n}\n\n'
        'protection "legacy_global_3" {\n  interface = "*"\n  invalid_packets = true\n}\n\n'
        'protection "legacy_global_4" {\n  interface = "eth1" # kept: it names its own\n}\n'
    )
    assert ctx.logged[-1] == (
        "warning",
        'protection { } is now protection "legacy_global_4"; kept interface = "eth1"',
    )
    assert leftovers(up) == []
    assert step(PROTECTION, "down", up) == (
        "protection {\n  anti_spoofing = true\n}\n\n"
        'protection "legacy_global" {\n  interface = "eth0"\n}\n\n'
        "protection {\n  invalid_packets = true\n}\n\n"
        'protection "legacy_global_4" {\n  interface = "eth1" # kept: it names its own\n}\n'
    )


def test_a_nested_unlabelled_protection_is_not_the_global_one():
    config = 'interface "eth0" {\n  protection {\n    anti_spoofing = true\n  }\n}\n'

    assert step(PROTECTION, "up", config) == config


def test_membership_goes_into_a_zone_made_for_it_and_a_match_naming_it_counts_as_one():
    config = (
        'interface "wg0" {\n  mtu = 1420\n  zone = "vpn"\n}\n\n'
        'interface "eth4" {\n  zone = "dmz"\n}\n\n'
        'zone "dmz" {\n  match {\n    interface = "eth4"\n    vlan      = 30\n  }\n}\n'
    )

    up = step(ZONES, "up", config)

    assert up == (
        'interface "wg0" {\n  mtu = 1420\n}\n\n'
        'interface "eth4" {\n}\n\n'
        'zone "dmz" {\n  match {\n    interface = "eth4"\n    vlan      = 30\n  }\n}\n\n'
        'zone "vpn" {\n  match {\n    interface = "wg0"\n  }\n}\n'
    )
    assert step(ZONES, "down", up) == (
        'interface "wg0" {\n  mtu = 1420\n  zone = "vpn"\n}\n\n'
        'interface "eth4" {\n}\n\n'
        'zone "dmz" {\n  match {\n    interface = "eth4"\n    vlan      = 30\n  }\n}\n'
    )


def test_a_v02_interfaces_list_gives_one_match_per_new_entry_and_anything_else_is_left():
    config = (
        'zone "lan" {\n  interfaces = ["eth1", "eth2", "eth1"]\n'
        '  match { interface = "eth2" }\n}\n\n'
        'zone "odd" {\n  interfaces = var.lan_ports\n}\n'
    )
    ctx = Context()

    up = step(ZONES, "up", config, ctx)

    assert up == (
        'zone "lan" {\n  match { interface = "eth2" }\n\n'
        '  match {\n    interface = "eth1"\n  }\n}\n\n'
        'zone "odd" {\n  interfaces = var.lan_ports\n}\n'
    )
    assert ("warning", 'zone "odd": interfaces = var.lan_ports left as is') in ctx.logged


def test_dns_server_is_skipped_when_dns_already_serves_or_forwards():
    serves = 'dns {\n  serve "lan" {\n  }\n}\n\ndns_server {\n  enabled = true\n}\n'
    forwards = 'dns {\n  forwarders = ["9.9.9.9"]\n}\n\ndns_server {\n  enabled = true\n}\n'
    ctx = Context()

    assert step(DNS, "up", serves, ctx) == serves
    assert step(DNS, "up", forwards) == forwards
    assert ctx.logged == [
        (
            "warning",
            (
                "dns_server at line 6 left as is: dns already has a serve block or forwarders, "
                "so Flywall ignores dns_server"
            ),
        )
    ]


@pytest.mark.parametrize("forwarders", ["[]", "null"])
def test_no_forwarders_does_not_skip_and_dns_server_overwrites_the_upstream_settings(forwarders):
    config = (
        f'dns {{\n  forwarders = {forwarders}\n  mode = "recursive"\n  egress_filter = true\n}}\n\n'
        'dns_server {\n  forwarders = ["1.1.1.1"]\n  listen_port = 5353\n}\n'
    )
    ctx = Context()

    up = step(DNS, "up", config, ctx)

    assert up == 'dns {\n  egress_filter = true\n  forwarders = ["1.1.1.1"]\n}\n'
    assert ctx.logged == [
        ("warning", "dns forwarders dropped: Flywall takes it from dns_server"),
        ("warning", "dns mode dropped: Flywall takes it from dns_server"),
        ("warning", "dns_server was not enabled: dropped listen_port"),
        ("info", "dns_server is now dns, not serving"),
    ]


def test_enabled_dns_server_splits_into_upstream_and_serve_and_listen_on_is_dropped_with_a_warning():
    config = (
        "dns_server { # the resolver\n"
        "  enabled      = true\n"
        '  listen_on    = ["10.0.0.1"]\n'
        '  forwarders   = ["1.1.1.1"]\n'
        "  dnssec       = true\n"
        "  rate_limit_per_sec = 50\n"
        '  zone "corp.example" {\n    record "www" {\n      type  = "A"\n'
        '      value = "10.0.0.80"\n    }\n  }\n'
        '  upstream_dot "quad9" { server = "9.9.9.9:853" }\n'
        "}\n"
    )
    ctx = Context()

    up = step(DNS, "up", config, ctx)

    assert up == (
        "dns { # the resolver\n"
        '  forwarders   = ["1.1.1.1"]\n'
        "  dnssec       = true\n"
        '  upstream_dot "quad9" { server = "9.9.9.9:853" }\n\n'
        '  serve "*" {\n'
        "    rate_limit_per_sec = 50\n\n"
        '    zone "corp.example" {\n      record "www" {\n        type  = "A"\n'
        '        value = "10.0.0.80"\n      }\n    }\n'
        "  }\n"
        "}\n"
    )
    assert ctx.logged == [
        ("warning", 'dropped listen_on = ["10.0.0.1"]: serve listens on every address'),
        ("info", 'dns_server is now dns serving "*"'),
    ]
    assert leftovers(up) == []


def test_dns_comes_back_as_dns_server_and_keeps_only_what_dns_server_cannot_say():
    serving = 'dns {\n  forwarders = ["1.1.1.1"]\n\n  serve "*" {\n    cache_size = 100\n  }\n}\n'
    inspecting = 'dns {\n  mode = "forward"\n\n  inspect "lan" {\n    mode = "passive"\n  }\n}\n'
    zoned = 'dns {\n  serve "lan" {\n    cache_size = 100\n  }\n}\n'
    ctx = Context()

    assert step(DNS, "down", serving) == (
        'dns_server {\n  enabled = true\n  forwarders = ["1.1.1.1"]\n\n  cache_size = 100\n}\n'
    )
    assert step(DNS, "down", inspecting) == (
        'dns {\n  inspect "lan" {\n    mode = "passive"\n  }\n}\n\n'
        'dns_server {\n  enabled = false\n  mode = "forward"\n}\n'
    )
    assert step(DNS, "down", zoned, ctx) == zoned
    assert ctx.logged == [("warning", 'dns kept: dns_server cannot say serve "lan"')]


def test_the_api_listener_is_copied_where_web_is_empty_and_a_web_flywall_invents_serves_both():
    config = (
        'interface "eth1" {\n  access_web_ui = true\n  management { web = true }\n}\n\n'
        'interface "eth2" {\n  access_web_ui = false\n}\n\n'
        'api {\n  listen = ":8080"\n  tls_listen = ""\n  disable_http_redirect = true\n}\n'
    )

    up = step(WEB, "up", config)

    assert up == config + (
        '\nweb {\n  listen = ":8080"\n  disable_redirect = true\n'
        "  serve_ui = true\n  serve_api = true\n\n"
        '  allow {\n    interfaces = ["eth1"]\n  }\n}\n'
    )
    assert step(WEB, "down", up) == config


def test_an_existing_web_keeps_its_values_and_gains_an_allow_rule_only_without_allow_or_deny():
    config = (
        'interface "eth1" {\n  access_web_ui = true\n}\n\n'
        'api {\n  listen = ":8080"\n  tls_cert = "/opt/flywall/etc/tls/api.pem"\n}\n\n'
        'web {\n  listen = ":80"\n}\n'
    )
    ruled = config.replace(
        'listen = ":80"\n', 'listen = ":80"\n  deny { sources = ["0.0.0.0/0"] }\n'
    )

    up = step(WEB, "up", config)

    assert up == config.replace(
        'listen = ":80"\n',
        'listen = ":80"\n  tls_cert = "/opt/flywall/etc/tls/api.pem"\n\n'
        '  allow {\n    interfaces = ["eth1"]\n  }\n',
    )
    assert step(WEB, "down", up) == config
    assert "allow" not in step(WEB, "up", ruled)


def test_nothing_to_copy_or_allow_writes_no_web_block():
    config = 'api {\n  require_auth = true\n}\n\ninterface "eth0" {\n  dhcp = true\n}\n'

    assert step(WEB, "up", config) == config


def test_renaming_touches_block_types_only_never_comments_strings_or_heredocs():
    config = (
        '# vpn_link_group "a" { }\nnote = "vpn_link"\n'
        "motd = <<EOT\nvpn_link_group\nEOT\n"
        'vpn_link_group "a" { vpn_link "b" { peer = "vpn_link.example" } }\n'
    )

    up = step(UPLINK, "up", config)

    assert up == config.replace(
        'vpn_link_group "a" { vpn_link "b"', 'uplink_group "a" { uplink "b"'
    )


def test_the_ebpf_step_bumps_1_0_and_its_down_keeps_an_ebpf_block_that_says_more():
    assert step(EBPF, "up", '# box 7\n\nzone "lan" {\n}\n') == (
        '# box 7\n\nschema_version = "1.1"\n\nzone "lan" {\n}\n\nebpf {\n  enabled = false\n}\n'
    )
    tuned = 'schema_version = "1.1"\n\nebpf {\n  enabled = true\n}\n'
    ctx = Context()
    assert step(EBPF, "down", tuned, ctx) == tuned
    assert ctx.logged == [("warning", "kept ebpf at line 3: it holds settings; config stays 1.1")]


# -- through the engine ---------------------------------------------------------------------------


def config_appliance(root: Path, text: str) -> Workspace:
    """An appliance whose flywall.hcl is `text`, running only the shipped config migrations.

    The files are copied into its migrations folder and the shipped ones are left out, so
    a config without a state.db does not meet the shipped database migrations.
    """
    config = root / "etc/flywall/flywall.hcl"
    config.parent.mkdir(parents=True)
    config.write_bytes(text.encode())
    (root / "etc/flywall/migrations").mkdir()
    for m in CONFIG_MIGRATIONS:
        shutil.copy(m.path, root / "etc/flywall/migrations")
    settings = Workspace.load(root).settings
    return Workspace(msgspec.structs.replace(settings, include_shipped=False))


def events(ws: Workspace, kind: str) -> list[dict[str, object]]:
    return [e for e in commands.history(ws) if e["kind"] == kind]


# An operator's edit after the upgrade: the engine then cannot restore journaled bytes, so
# rolling back runs the downs (of the migrations whose up wrote something).
EDIT = "\n# reviewed by ops after the upgrade\n"


@pytest.mark.parametrize("name", NAMES)
def test_the_engine_migrates_each_fixture_to_1_1_and_rolls_it_back(tmp_path, name):
    """Right after migrate, rollback gives back the original bytes (the engine restores
    what it journaled before each up); after an edit, it runs the downs."""
    ws = config_appliance(tmp_path, original(name))
    config = ws.paths.config
    wrote = [v for v in VERSIONS if (FIXTURES / f"{name}.after.{SLUGS[v]}.hcl").exists()]

    report = commands.migrate(ws)

    assert report.done == VERSIONS
    assert config.read_bytes() == expected(name, "all").encode()
    assert commands.status(ws).components == {"config": "1.1"}
    assert [e["migration"] for e in events(ws, "WriteIntent")] == wrote
    commands.rollback(ws, to="000000000000")
    assert config.read_bytes() == original(name).encode()
    commands.migrate(ws)
    config.write_bytes((expected(name, "all") + EDIT).encode())
    commands.rollback(ws, to="000000000000")
    edited = expected(name, "all") + EDIT
    for version in reversed(wrote):
        edited = step(version, "down", edited)
    assert config.read_bytes() == edited.encode()


def test_a_rollback_runs_no_down_where_up_wrote_nothing(tmp_path):
    """A box already in v0.3's spelling: migrate writes nothing, so rollback, even after an
    edit, leaves its native shapes alone (a down would respell them the legacy way)."""
    ws = config_appliance(tmp_path, original("current_v03"))
    commands.migrate(ws)
    edited = original("current_v03") + EDIT
    ws.paths.config.write_bytes(edited.encode())

    commands.rollback(ws, to="000000000000")

    assert ws.paths.config.read_bytes() == edited.encode()
    assert events(ws, "WriteIntent") == []
    assert [row["message"] for row in commands.log(ws, DNS)] == [
        "up left the file as it was: nothing to undo"
    ]


def test_the_dropped_listen_on_is_a_warning_in_the_migrations_log(tmp_path):
    ws = config_appliance(tmp_path, original("home_v01"))
    commands.migrate(ws)

    result = cli(tmp_path, "log", DNS)

    assert result.returncode == 0, result.stderr
    assert 'dropped listen_on = ["192.168.50.1", "192.168.60.1"]: serve listens on every' in (
        result.stdout
    )
    logged = commands.log(ws, DNS)
    assert [row["level"] for row in logged] == ["warning", "info"]


def test_the_demo_box_migrates_with_its_example_and_back(tmp_path):
    """The demo box runs the shipped migrations and the seed's example written into it."""
    paths = build_demo(tmp_path)
    config = Path(paths["config"])
    found = discover([shipped_directory(), Path(paths["migrations"])])
    steps = [(m.version, load_module(m)) for m in found if m.component == "config"]

    commands.migrate(Workspace.load(tmp_path))

    text = demo.CONFIG
    for _, module in steps:
        document = Document.parse(text)
        module.up(Context(), document)
        text = document.text()
    assert config.read_text(encoding="utf-8") == text
    assert commands.status(Workspace.load(tmp_path)).components["config"] == "1.2"
    commands.rollback(Workspace.load(tmp_path), to="000000000000")
    assert config.read_text(encoding="utf-8") == demo.CONFIG


# A syntax error in the demo's api block: `= =`.
BROKEN = demo.CONFIG.replace("require_auth          = true", "require_auth          = = true")
BROKEN_AT = (BROKEN.splitlines().index("  require_auth          = = true") + 1, 27)


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLYWALL, "migration", "--root", str(root), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_migrate_refuses_a_config_that_does_not_parse_naming_file_line_and_column(tmp_path):
    build_demo(tmp_path, "seed")
    config = tmp_path / "etc/flywall/flywall.hcl"
    config.write_text(BROKEN, encoding="utf-8")
    line, column = BROKEN_AT

    result = cli(tmp_path, "migrate")

    assert result.returncode == 2
    assert result.stderr == (
        f"FAILED: etc/flywall/flywall.hcl:{line}:{column}: unexpected token '='\n"
    )
    assert config.read_text(encoding="utf-8") == BROKEN
    assert not (tmp_path / "var/lib/flywall/migration-journal.db").exists()


def test_a_config_broken_after_the_settings_were_read_fails_the_first_config_migration(
    tmp_path,
):
    """A writing command checks that flywall.hcl parses before any run (above); a file
    that breaks after that check (an operator's editor saving mid-upgrade, here done by
    a vendor migration that runs first) fails the config step, journaled, and the file
    stays as it is."""
    build_demo(tmp_path, "seed")
    ws = Workspace.load(tmp_path)
    (ws.paths.migrations_dir / "202311290001_editor_saves.py").write_text(
        '"""An editor saves a broken flywall.hcl mid-upgrade."""\n'
        'component = "database"\n\n\n'
        "def up(ctx, db):\n"
        "    from pathlib import Path\n\n"
        f"    Path({str(ws.paths.config)!r}).write_text({BROKEN!r})\n",
        encoding="utf-8",
    )
    ws = Workspace.load(tmp_path)
    line, column = BROKEN_AT

    with pytest.raises(ConfigParseError) as caught:
        commands.migrate(ws)

    assert str(caught.value) == f"{ws.paths.config}:{line}:{column}: unexpected '='"
    assert ws.paths.config.read_text(encoding="utf-8") == BROKEN
    failed = events(ws, "MigrationFailed")
    assert [(e["migration"], e["error_type"]) for e in failed] == [(EBPF, "ConfigParseError")]
    assert f":{line}:{column}: unexpected '='" in failed[0]["message"]
    assert events(ws, "WriteIntent") == []


# -- validate: the config, and deprecated keys ------------------------------------------------------


def demo_line(text: str) -> int:
    """The line of the demo's config that is exactly `text`."""
    return demo.CONFIG.splitlines().index(text) + 1


def test_validate_warns_about_each_deprecated_key_until_the_config_is_migrated(tmp_path):
    build_demo(tmp_path, "seed")
    config = tmp_path / "etc/flywall/flywall.hcl"
    found = [
        ('  zone        = "wan" # moves to zone "wan" { match { } } in 1.3', "interface.zone"),
        ('  zone          = "lan"', "interface.zone"),
        ('  interface = "eth2"', "zone.interface"),
        ('  interfaces = ["eth3", "eth4"]', "zone.interfaces"),
        ("global_protection {", "global_protection"),
        ("dns_server {", "dns_server"),
        ('vpn_link_group "hq" {', "vpn_link_group"),
        ('  vpn_link "primary" {', "vpn_link_group.vpn_link"),
        ('  vpn_link "backup" {', "vpn_link_group.vpn_link"),
    ]
    fixed_by = {key: (m.version, r) for m in CONFIG_MIGRATIONS for key, r in m.deprecations.items()}

    before = cli(tmp_path, "validate")

    assert before.returncode == 0, before.stdout
    warnings = [line for line in before.stdout.splitlines() if line.startswith("warn")]
    assert warnings == [
        f"warn  deprecations: {len(found)} deprecated key(s) in use",
        *(
            f"warn  {config}:{demo_line(text)}: {key} is deprecated ({fixed_by[key][0]} fixes "
            f"it); use {fixed_by[key][1]}"
            for text, key in found
        ),
    ]
    assert cli(tmp_path, "migrate").returncode == 0
    after = cli(tmp_path, "validate")
    assert after.returncode == 0
    assert "warn" not in after.stdout
    assert "ok    deprecations: ok\n" in after.stdout


def test_deprecations_are_warnings_in_the_json_report_and_do_not_fail_it(tmp_path):
    build_demo(tmp_path, "seed")

    result = cli(tmp_path, "validate", "--json")

    report = json.loads(result.stdout)
    assert (result.returncode, report["ok"]) == (0, True)
    assert report["checks"]["deprecations"] == "9 deprecated key(s) in use"
    assert len(report["warnings"]) == 9
    assert report["checks"]["config"] == "ok"


def test_validate_names_where_the_config_stops_parsing(tmp_path):
    build_demo(tmp_path, "seed")
    ws = Workspace.load(tmp_path)
    ws.paths.config.write_text(BROKEN, encoding="utf-8")
    line, column = BROKEN_AT

    report = validate(ws)

    assert report.checks["config"] == f"{ws.paths.config}:{line}:{column}: unexpected '='"
    assert report.checks["deprecations"] == "skipped: the config could not be read"
    assert not report.ok


def test_deprecated_shapes_are_found_on_their_own_line_in_any_layout(tmp_path):
    ws = config_appliance(tmp_path, original("edge_tabs"))

    report = validate(ws)

    config = ws.paths.config
    assert report.warnings == [
        f"{config}:10: interface.zone is deprecated ({ZONES} fixes it); use zone.match.interface",
        f"{config}:19: zone.interface is deprecated ({ZONES} fixes it); use zone.match.interface",
        f"{config}:34: dns_server is deprecated ({DNS} fixes it); use dns",
    ]
    assert report.ok


# -- discovery: the deprecations a migration declares ---------------------------------------------

PYTHON = 'component = "config"\n%s\ndef up(ctx, config):\n    pass\n'


def test_a_migration_declares_its_deprecations_as_a_literal_dict():
    source = PYTHON % 'deprecations = {"api.listen": "web.listen", "dns_server": "dns"}'

    migration = from_source("202401010001_move.py", source.encode())

    assert migration.deprecations == {"api.listen": "web.listen", "dns_server": "dns"}


def test_deprecations_default_to_none():
    python = from_source("202401010001_a.py", (PYTHON % "").encode())
    sql = from_source("202401010002_b.sql", b"-- migrate:up\nSELECT 1;\n")

    assert python.deprecations == sql.deprecations == {}


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ('["api.listen"]', "deprecations must map str to str, got ['api.listen']"),
        ('{"api.listen": 1}', "deprecations must map str to str, got {'api.listen': 1}"),
        ('{1: "web.listen"}', "deprecations must map str to str, got {1: 'web.listen'}"),
        (
            '{"api listen": "web.listen"}',
            "deprecations: 'api listen' is not a dotted path of HCL names (e.g. api.listen)",
        ),
        ('{"api.": "web.listen"}', "deprecations: 'api.' is not a dotted path"),
        ('dict(api="web")', "deprecations must be a literal value"),
    ],
)
def test_a_bad_deprecations_value_is_an_error_naming_the_file(value, detail):
    path = "202401010001_move.py"

    with pytest.raises(DiscoveryError) as caught:
        from_source(path, (PYTHON % f"deprecations = {value}").encode())

    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: {detail}")
