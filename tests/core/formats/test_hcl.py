"""The editable HCL document: bytes an edit did not touch stay byte-identical (DESIGN §8)."""

from __future__ import annotations

import difflib
import re

import hcl2
import pytest
from hclgraft import every_graft_checked, shape
from hypothesis import given, settings
from hypothesis import strategies as st

from flywall.core.formats.hcl import Block, Body, Document, Expression
from flywall.core.model.errors import ConfigParseError

# -- realistic Flywall configs -----------------------------------------------------------------

APPLIANCE = """\
# Flywall appliance configuration
# Managed by the migration tool; hand edits are kept.

schema_version = "1.4"   # bumped by migrations only

hostname    = "fw-branch-07"
timezone    = "Europe/Berlin"
dns_servers = ["1.1.1.1", "9.9.9.9"] // upstream resolvers

interface "eth0" {
  description = "WAN uplink"
  dhcp        = true
}

interface "eth1" {
  description = "LAN"
  address     = "192.168.10.1/24"
  mtu         = 1500 # jumbo frames later
}

zone "lan" {
  match { interface = "eth1" } // the LAN port
  /* services the firewall itself
     offers on this zone */
  services {
    dns  = true
    dhcp = true
    ssh  = false
  }
}

zone "wan" {
  match { interface = "eth0" }
}
"""

FOUR_SPACES = """\
// DHCP server, four-space indentation.
schema_version = "1.2"

dhcp {
    enabled = true

    scope "lan" {
        interface   = "eth1"
        range_start = "192.168.10.100"
        range_end   = "192.168.10.199"
        lease_time  = "12h"
        options = { router = "192.168.10.1", domain = "branch.example" }

        # fixed addresses for printers
        reservation "printer-1" {
            mac = "00:11:22:33:44:55"
            ip  = "192.168.10.20"
        }
    }

    scope "guest" {
        interface  = "eth2"
        lease_time = "1h"
    }
}
"""

TABS = (
    "# Firewall policies, tab-indented.\n"
    'schema_version = "1.3"\n'
    "\n"
    'policy "lan-to-wan" {\n'
    '\tfrom   = "lan"\n'
    '\tto     = "wan"\n'
    '\taction = "accept" # default allow out\n'
    "\n"
    '\trule "block-smb" {\n'
    '\t\tproto  = "tcp"\n'
    "\t\tports  = [139, 445]\n"
    '\t\taction = "drop"\n'
    "\t}\n"
    "}\n"
    "\n"
    'policy "wan-to-lan" {\n'
    '\taction = "drop"\n'
    "}\n"
)

CRLF = (
    "# Written on a Windows laptop: CRLF line endings.\r\n"
    'schema_version = "1.1"\r\n'
    "\r\n"
    'zone "dmz" {\r\n'
    "  match {\r\n"
    '    interface = "eth3" // DMZ switch\r\n'
    "  }\r\n"
    "  isolated = true\r\n"
    "}\r\n"
    "\r\n"
    "ntp {\r\n"
    '  servers = ["0.pool.ntp.org", "1.pool.ntp.org"]\r\n'
    "}\r\n"
)

HEREDOCS = """\
schema_version = "1.4"

system {
  motd = <<EOT
Welcome to ${HOSTNAME}.
Authorised use only.
EOT
  login_banner = "fw"

  script "on-boot" {
    run = <<-SH
      #!/bin/sh
      echo "booted" > /run/flywall.boot
    SH
    timeout = 30
  }
}
"""

INTERPOLATION = """\
# Values filled in by the provisioning system.
schema_version = "1.4"

wan {
  address   = "${WAN_ADDRESS}/${WAN_PREFIX}"
  gateway   = "${WAN_GATEWAY}"
  mtu       = var.wan_mtu
  backup_ip = lookup(var.backup, "ip", "10.0.0.1")
  failover  = var.dual_wan ? "auto" : "off" # only with a second uplink
}

snmp {
  community = "${SNMP_COMMUNITY}"
  contact   = "noc@example.com"
}
"""

VPN_LINK_GROUPS = """\
schema_version = "1.4"

# vpn_link_group is renamed to uplink_group in 2.0.
vpn_link_group "hq" {
  members  = ["wg0", "wg1"]
  strategy = "failover"
  # the legacy name "vpn_link_group" stays in this comment
  label    = "vpn_link_group"
}

vpn_link_group "backup" {
  members = ["wg2"]
}
"""

NAT_RULES = """\
schema_version = "1.4"

nat {
  masquerade = true

  port_forward "web" {
    proto       = "tcp"
    public_port = 443
    target      = "192.168.10.5:8443"
  }

  port_forward "game" {
    proto       = "udp"
    public_port = 27015
    target      = "192.168.10.6"
    priority    = -5
    weight      = 0.75
  }
}
"""

BLOCK_COMMENTS = """\
/*
 * Flywall QoS configuration.
 * Rates in kbit/s.
 */
schema_version = "1.4"

qos /* shaping */ {
  enabled = true /* master switch */
  /* per-class limits follow */
  class "voip" {
    rate     = 2000 // guaranteed
    ceil     = 4000
    priority = 1
  }
  class "bulk" { rate = 500 }
}
"""

NO_TRAILING_NEWLINE = """\
# No newline at the end of this file.
schema_version = "1.0"
hostname = "fw-lab"
zone "lab" {
  match { interface = "eth9" }
}"""

ONE_LINE_BODIES = """\
schema_version = "1.4"

zone "iot" { match { interface = "eth4" } }
zone "voice" {}
log { level = "info" }
"""

OBJECTS = """\
schema_version = "1.4"

monitoring {
  targets = [
    "10.0.0.1", # core switch
    "10.0.0.2",
  ]
  thresholds = {
    latency_ms = 150
    loss_pct   = 2.5
  }
  labels = { site = "branch-07", "rack id" = "r2" }
  enabled = null
}
"""

DNS_TRAILING_BLANKS = """\
# DNS forwarder.
schema_version = "1.4"

dns {
  forwarders = ["1.1.1.1"]

  local_records {
    router = "192.168.10.1"
  }

}


"""

HEADER_ONLY = """\
# A fresh appliance: nothing configured yet.
# Each migration fills this file in.
"""

CONFIGS = {
    "appliance": APPLIANCE,
    "four_spaces": FOUR_SPACES,
    "tabs": TABS,
    "crlf": CRLF,
    "heredocs": HEREDOCS,
    "interpolation": INTERPOLATION,
    "vpn_link_groups": VPN_LINK_GROUPS,
    "nat_rules": NAT_RULES,
    "block_comments": BLOCK_COMMENTS,
    "no_trailing_newline": NO_TRAILING_NEWLINE,
    "one_line_bodies": ONE_LINE_BODIES,
    "objects": OBJECTS,
    "dns_trailing_blanks": DNS_TRAILING_BLANKS,
    "header_only": HEADER_ONLY,
}

every_config = pytest.mark.parametrize("name", sorted(CONFIGS))


def changes(before: str, after: str) -> list[str]:
    """The differing lines as `-old` / `+new`; every other line was byte-identical.

    Lines are split on `\\n` only (a CRLF line keeps its `\\r`), never on the other
    characters `str.splitlines` treats as line breaks.
    """
    diff = difflib.unified_diff(before.split("\n"), after.split("\n"), lineterm="", n=0)
    return [line for line in list(diff)[2:] if not line.startswith("@@")]


def find(parent: Document | Block, block_type: str, *labels: str) -> Block:
    """The one block the test knows is there (`block` itself may answer None)."""
    block = parent.body.block(block_type, *labels)
    assert block is not None, (block_type, labels)
    return block


def walk(body: Body) -> list[Block]:
    """Every block under `body`, depth first."""
    found = []
    for block in body.blocks():
        found += [block, *walk(block.body)]
    return found


# -- reading -------------------------------------------------------------------------------------


@every_config
def test_a_parsed_config_gives_back_its_text_byte_for_byte(name: str) -> None:
    text = CONFIGS[name]
    doc = Document.parse(text)
    assert doc.text() is text
    assert not doc.changed


def test_blocks_are_found_by_type_and_a_prefix_of_their_labels() -> None:
    doc = Document.parse(FOUR_SPACES)
    dhcp = find(doc, "dhcp")
    assert [b.labels for b in dhcp.blocks("scope")] == [("lan",), ("guest",)]
    lan = find(dhcp, "scope", "lan")
    assert lan.type == "scope"
    assert lan.block("reservation", "printer-1") is lan.blocks("reservation")[0]
    assert dhcp.block("scope", "dmz") is None
    assert lan.line == 7


def test_asking_for_one_block_when_several_match_is_an_error() -> None:
    doc = Document.parse(APPLIANCE)
    with pytest.raises(ValueError, match="2 blocks match zone"):
        doc.body.block("zone")


def test_values_read_as_python_with_interpolation_and_expressions_kept_as_written() -> None:
    doc = Document.parse(INTERPOLATION)
    wan = find(doc, "wan")
    assert wan.get("address") == "${WAN_ADDRESS}/${WAN_PREFIX}"
    assert wan.get("mtu") == Expression("var.wan_mtu")
    assert wan.get("backup_ip") == Expression('lookup(var.backup, "ip", "10.0.0.1")')
    assert wan.get("failover") == Expression('var.dual_wan ? "auto" : "off"')
    assert wan.get("missing", "default") == "default"
    assert list(wan.attributes) == ["address", "gateway", "mtu", "backup_ip", "failover"]


def test_lists_objects_numbers_null_and_heredocs_read_as_python() -> None:
    doc = Document.parse(OBJECTS)
    monitoring = find(doc, "monitoring")
    assert monitoring.attributes == {
        "targets": ["10.0.0.1", "10.0.0.2"],
        "thresholds": {"latency_ms": 150, "loss_pct": 2.5},
        "labels": {"site": "branch-07", "rack id": "r2"},
        "enabled": None,
    }
    assert monitoring.has("enabled")
    nat = find(Document.parse(NAT_RULES), "nat")
    assert nat.blocks("port_forward")[1].attributes["priority"] == -5
    system = find(Document.parse(HEREDOCS), "system")
    assert system.get("motd") == "Welcome to ${HOSTNAME}.\nAuthorised use only.\n"
    script = find(system, "script", "on-boot")
    assert script.get("run") == '#!/bin/sh\necho "booted" > /run/flywall.boot\n'


def test_schema_version_reads_the_top_level_attribute_as_a_string() -> None:
    assert Document.parse(APPLIANCE).schema_version == "1.4"
    assert Document.parse("schema_version = 2.10\n").schema_version == "2.10"
    assert Document.parse(HEADER_ONLY).schema_version is None


# -- setting attributes ----------------------------------------------------------------------------


def test_setting_an_attribute_changes_only_its_value_bytes() -> None:
    doc = Document.parse(APPLIANCE)
    eth1 = find(doc, "interface", "eth1")
    eth1.set("mtu", 9000)
    assert changes(APPLIANCE, doc.text()) == [
        "-  mtu         = 1500 # jumbo frames later",
        "+  mtu         = 9000 # jumbo frames later",
    ]
    assert doc.changed


@every_config
def test_setting_every_attribute_to_its_own_value_changes_no_byte(name: str) -> None:
    """Equal values are not rewritten, so `1.50`, a multi-line list or a heredoc keep their form."""
    text = CONFIGS[name]
    doc = Document.parse(text)
    for body in [doc.body, *(block.body for block in walk(doc.body))]:
        for attribute, value in body.attributes.items():
            body.set(attribute, value)
    assert doc.text() is text
    assert not doc.changed


def test_replacing_a_heredoc_keeps_the_line_break_after_it() -> None:
    doc = Document.parse(HEREDOCS)
    system = find(doc, "system")
    system.set("motd", "Maintenance tonight")
    assert changes(HEREDOCS, doc.text()) == [
        "-  motd = <<EOT",
        "-Welcome to ${HOSTNAME}.",
        "-Authorised use only.",
        "-EOT",
        '+  motd = "Maintenance tonight"',
    ]


def test_a_new_attribute_goes_below_the_last_one_with_its_indentation() -> None:
    doc = Document.parse(FOUR_SPACES)
    scope = find(find(doc, "dhcp"), "scope", "guest")
    scope.set("dns", ["192.168.20.1"])
    assert changes(FOUR_SPACES, doc.text()) == ['+        dns = ["192.168.20.1"]']


def test_a_new_attribute_follows_a_trailing_inline_comment_and_keeps_tabs() -> None:
    doc = Document.parse(TABS)
    policy = find(doc, "policy", "lan-to-wan")
    policy.set("log", True)
    assert changes(TABS, doc.text()) == ["+\tlog = true"]
    assert doc.text().index("\tlog = true") > doc.text().index("# default allow out")


def test_a_new_attribute_in_a_body_of_blocks_goes_below_the_brace_then_a_blank_line() -> None:
    doc = Document.parse(APPLIANCE)
    zone = find(doc, "zone", "lan")
    zone.set("description", "office LAN")
    assert changes(APPLIANCE, doc.text()) == ['+  description = "office LAN"', "+"]
    assert 'zone "lan" {\n  description = "office LAN"\n\n  match' in doc.text()


def test_a_new_top_level_attribute_goes_after_the_last_top_level_attribute() -> None:
    doc = Document.parse(APPLIANCE)
    doc.body.set("domain", "branch.example")
    assert changes(APPLIANCE, doc.text()) == ['+domain = "branch.example"']
    assert '// upstream resolvers\ndomain = "branch.example"\n' in doc.text()


def test_a_new_attribute_in_a_one_line_body_puts_the_body_on_lines_of_its_own() -> None:
    doc = Document.parse(APPLIANCE)
    match = find(find(doc, "zone", "lan"), "match")
    match.set("vlan", 10)
    assert changes(APPLIANCE, doc.text()) == [
        '-  match { interface = "eth1" } // the LAN port',
        "+  match {",
        '+    interface = "eth1"',
        "+    vlan = 10",
        "+  } // the LAN port",
    ]


def test_adding_to_a_file_without_a_final_newline_ends_its_last_line_first() -> None:
    doc = Document.parse(NO_TRAILING_NEWLINE)
    doc.body.add_block("ntp", servers=["pool.ntp.org"])
    assert doc.text() == NO_TRAILING_NEWLINE + '\n\nntp {\n  servers = ["pool.ntp.org"]\n}\n'


def test_crlf_files_get_crlf_in_new_lines() -> None:
    doc = Document.parse(CRLF)
    dmz = find(doc, "zone", "dmz")
    dmz.set("log", "all")
    find(dmz, "match").set("vlan", 30)
    assert changes(CRLF, doc.text()) == ["+    vlan = 30\r", '+  log = "all"\r']
    assert "\n" not in doc.text().replace("\r\n", "")


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", '"plain"'),
        ('say "hi"\\now\n', '"say \\"hi\\"\\\\now\\n"'),
        ("${WAN_IP}/24", '"${WAN_IP}/24"'),
        ('${lookup(var.m, "k")}', '"${lookup(var.m, "k")}"'),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        (42, "42"),
        (-7, "-7"),
        (0.25, "0.25"),
        (["a", 1, True], '["a", 1, true]'),
        ({"router": "10.0.0.1", "lease-time": 3600}, '{ router = "10.0.0.1", lease-time = 3600 }'),
        ({"rack id": "r2"}, '{ "rack id" = "r2" }'),
        ({}, "{}"),
        (Expression("var.wan_mtu - 28"), "var.wan_mtu - 28"),
    ],
)
def test_python_values_are_written_as_hcl_and_read_back_equal(value: object, written: str) -> None:
    doc = Document.parse('schema_version = "1.4"\n')
    doc.body.set("value", value)  # type: ignore[arg-type]
    assert doc.text() == f'schema_version = "1.4"\nvalue = {written}\n'
    assert Document.parse(doc.text()).body.get("value") == value


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1, 2}, b"bytes", {1: "a"}])
def test_a_value_hcl_cannot_spell_is_refused(value: object) -> None:
    doc = Document.parse(APPLIANCE)
    with pytest.raises((TypeError, ValueError)):
        doc.body.set("value", value)  # type: ignore[arg-type]
    assert doc.text() is APPLIANCE


def test_an_edit_that_would_not_parse_is_refused_and_changes_nothing() -> None:
    doc = Document.parse(APPLIANCE)
    with pytest.raises(ValueError, match="would not parse"):
        doc.body.set("broken", Expression("1 +"))
    assert doc.text() is APPLIANCE


def test_an_edit_that_closes_its_block_early_is_parsed_whole(monkeypatch) -> None:
    """Raw text that ends the block and comments out its own brace parses alone as one
    block followed by a comment: the graft must refuse it, and the whole parse decide."""
    with every_graft_checked(monkeypatch) as grafted:
        doc = Document.parse('zone "lan" { mtu = 1500 }\nhostname = "fw"\n')
        doc.block("zone", "lan").set("mtu", Expression("1500 }\n#"))
        assert doc.text() == 'zone "lan" { mtu = 1500 }\n# }\nhostname = "fw"\n'
        assert doc.get("hostname") == "fw"
    assert grafted == []


def test_a_refused_set_in_a_one_line_body_changes_nothing() -> None:
    """Setting a new attribute there takes two edits (the body on lines of its own, then
    the line): when the second is refused, the first is undone too."""
    doc = Document.parse('zone "lan" {\n  match { interface = "eth1" }\n}\n')
    before = doc.text()
    match = doc.block("zone", "lan").block("match")
    with pytest.raises(ValueError, match="nothing was changed"):
        match.set("edited", Expression("}"))
    assert doc.text() is before
    assert match.get("interface") == "eth1"
    match.set("edited", 1)
    assert doc.text() == 'zone "lan" {\n  match {\n    interface = "eth1"\n    edited = 1\n  }\n}\n'


# Pieces of HCL that change how what follows them is read.
PIECES = ["}", "{", "\n", "#", "//", "/*", "*/", '"', "${", "x = 1", "y {", "<<EOT\n", "EOT\n", "]"]


@settings(max_examples=60, deadline=None)
@given(
    st.data(),
    st.lists(st.lists(st.sampled_from(PIECES), min_size=1, max_size=6), min_size=1, max_size=6),
)
def test_any_raw_edit_in_any_block_parses_as_the_whole_file_does(data, edits) -> None:
    """Whatever raw text an edit puts in a block, the document's tree after it is the whole
    file's parse, or the edit is refused and nothing changed (every_graft_checked)."""
    with pytest.MonkeyPatch.context() as monkeypatch, every_graft_checked(monkeypatch):
        doc = Document.parse(APPLIANCE)
        for pieces in edits:
            blocks = _all_blocks(doc.body)
            if not blocks:
                break
            block = data.draw(st.sampled_from(blocks))
            before = doc.text()
            try:
                block.set("edited", Expression("".join(pieces)))
            except ValueError:
                assert doc.text() == before
            assert shape(doc._tree) == shape(hcl2.parses_to_tree(doc.text()))  # not remembered


def _all_blocks(body: Body | Block) -> list[Block]:
    found = []
    for item in body.items():
        if isinstance(item, Block):
            found += [item, *_all_blocks(item)]
    return found


def test_the_parses_remembered_are_bounded_by_their_text(monkeypatch) -> None:
    """A long-lived process (`serve`) keeps at most `_RECENT_CHARS` of text parsed, not
    8 trees of whatever size: parsing eight 4 KB configs leaves about two trees alive."""
    import gc
    import tracemalloc

    from flywall.core.formats import hcl

    monkeypatch.setattr(hcl, "_RECENT", type(hcl._RECENT)())
    monkeypatch.setattr(hcl, "_RECENT_CHARS", 8_000)
    texts = [
        "".join(f'zone "z{n}-{i}" {{\n  mtu = {i}\n}}\n\n' for i in range(150)) for n in range(8)
    ]
    assert all(3_500 < len(text) < 4_500 for text in texts)
    tracemalloc.start()
    try:
        Document.parse(texts[0])
        gc.collect()
        one = tracemalloc.get_traced_memory()[0]
        for text in texts[1:]:
            Document.parse(text)
        gc.collect()
        all_eight = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert all_eight < 2.5 * one, (one, all_eight)
    assert sum(map(len, hcl._RECENT)) <= 8_000


def test_documents_of_the_same_text_are_independent_whatever_the_parses_share() -> None:
    """Parses of one text are remembered and shared; an edit to one document (which
    re-parses, and may meet a remembered text) must never show in another."""
    edited, untouched = Document.parse(APPLIANCE), Document.parse(APPLIANCE)
    zones = [b.labels for b in untouched.blocks("zone")]
    interfaces = [b.labels for b in untouched.blocks("interface")]
    eth1 = edited.block("interface", "eth1")
    eth1.set("mtu", 9000)
    edited.block("zone", "lan").rename("zone", "trusted")
    edited.add_block("interface", "eth2").set("description", "DMZ")
    assert untouched.block("interface", "eth1").get("mtu") == 1500
    assert [b.labels for b in untouched.blocks("zone")] == zones
    assert [b.labels for b in untouched.blocks("interface")] == interfaces
    assert untouched.text() is APPLIANCE
    eth1.set("mtu", 1500)  # back through texts already parsed, handles still live
    assert eth1.get("mtu") == 1500
    assert [b.labels for b in edited.blocks("interface")] == [*interfaces, ("eth2",)]
    assert Document.parse(edited.text()).block("interface", "eth2").get("description") == "DMZ"


def test_an_attribute_name_must_be_an_hcl_identifier() -> None:
    doc = Document.parse(APPLIANCE)
    with pytest.raises(ValueError, match="not an HCL identifier"):
        doc.body.set("bad name", 1)


# -- deleting attributes ---------------------------------------------------------------------------


def test_deleting_an_attribute_removes_its_line_and_its_inline_comment_only() -> None:
    doc = Document.parse(APPLIANCE)
    assert doc.body.delete("dns_servers")
    assert changes(APPLIANCE, doc.text()) == [
        '-dns_servers = ["1.1.1.1", "9.9.9.9"] // upstream resolvers'
    ]


def test_deleting_keeps_comments_on_the_lines_around_it() -> None:
    doc = Document.parse(VPN_LINK_GROUPS)
    hq = find(doc, "vpn_link_group", "hq")
    hq.delete("label")
    hq.delete("strategy")
    assert changes(VPN_LINK_GROUPS, doc.text()) == [
        '-  strategy = "failover"',
        '-  label    = "vpn_link_group"',
    ]


def test_deleting_a_heredoc_or_a_multi_line_list_removes_all_its_lines() -> None:
    doc = Document.parse(HEREDOCS)
    find(doc, "system").delete("motd")
    assert changes(HEREDOCS, doc.text()) == [
        "-  motd = <<EOT",
        "-Welcome to ${HOSTNAME}.",
        "-Authorised use only.",
        "-EOT",
    ]
    doc = Document.parse(OBJECTS)
    find(doc, "monitoring").delete("targets")
    assert changes(OBJECTS, doc.text()) == [
        "-  targets = [",
        '-    "10.0.0.1", # core switch',
        '-    "10.0.0.2",',
        "-  ]",
    ]


def test_deleting_a_missing_attribute_changes_nothing() -> None:
    doc = Document.parse(APPLIANCE)
    assert not doc.body.delete("no_such_thing")
    assert doc.text() is APPLIANCE


# -- adding, removing and renaming blocks -------------------------------------------------------------


def test_a_new_block_is_appended_after_a_blank_line_with_four_space_indentation() -> None:
    doc = Document.parse(FOUR_SPACES)
    dhcp = find(doc, "dhcp")
    dhcp.add_block("scope", "iot", interface="eth4", lease_time="30m")
    assert changes(FOUR_SPACES, doc.text()) == [
        "+",
        '+    scope "iot" {',
        '+        interface = "eth4"',
        '+        lease_time = "30m"',
        "+    }",
    ]


def test_a_new_block_in_a_tab_indented_file_is_indented_with_tabs() -> None:
    doc = Document.parse(TABS)
    policy = find(doc, "policy", "wan-to-lan")
    policy.add_block("rule", "allow-vpn", proto="udp", ports=[51820], action="accept")
    assert changes(TABS, doc.text()) == [
        "+",
        '+\trule "allow-vpn" {',
        '+\t\tproto = "udp"',
        "+\t\tports = [51820]",
        '+\t\taction = "accept"',
        "+\t}",
    ]


def test_a_new_block_goes_above_trailing_blank_lines() -> None:
    doc = Document.parse(DNS_TRAILING_BLANKS)
    dns = find(doc, "dns")
    dns.add_block("cache", size=1000)
    assert "  }\n\n  cache {\n    size = 1000\n  }\n\n}\n\n\n" in doc.text()
    doc.body.add_block("ntp")
    assert doc.text().endswith("}\n\nntp {}\n\n\n")


def test_nested_edits_work_on_a_block_added_in_the_same_session() -> None:
    doc = Document.parse(ONE_LINE_BODIES)
    zone = find(doc, "zone", "voice")
    services = zone.setdefault_block("services", dns=False)
    services.set("dhcp", True)
    services.setdefault_block("ntp").set("server", "${NTP_SERVER}")
    assert zone.setdefault_block("services") is services
    assert changes(ONE_LINE_BODIES, doc.text()) == [
        '-zone "voice" {}',
        '+zone "voice" {',
        "+  services {",
        "+    dns = false",
        "+    dhcp = true",
        "+",
        "+    ntp {",
        '+      server = "${NTP_SERVER}"',
        "+    }",
        "+  }",
        "+}",
    ]
    assert find(find(Document.parse(doc.text()), "zone", "voice"), "services").get("dhcp")


def test_setdefault_block_returns_an_existing_block_untouched() -> None:
    doc = Document.parse(APPLIANCE)
    zone = find(doc, "zone", "lan")
    services = zone.setdefault_block("services", dns=False)
    assert services is zone.block("services")
    assert services.get("dns") is True
    assert doc.text() is APPLIANCE


@every_config
def test_adding_then_removing_a_block_gives_back_the_original_bytes(name: str) -> None:
    text = CONFIGS[name]
    doc = Document.parse(text)
    expected = text if text.endswith("\n") else text + "\n"  # adding ended the last line
    lines = text.split("\n")
    one_line = [b for b in walk(doc.body) if "}" in lines[b.line - 1]]  # expanded when added to
    for body in [doc.body, *(b.body for b in walk(doc.body) if b not in one_line)]:
        added = body.add_block("firewall_rule", "temp", action="drop", ports=[22, 23])
        added.set("log", True)
        body.remove_block(added)
        assert doc.text() == expected, body
    assert doc.changed is (expected != text)


def test_removing_a_block_takes_the_blank_line_above_it() -> None:
    doc = Document.parse(APPLIANCE)
    doc.body.remove_block(find(doc, "interface", "eth1"))
    removed = (
        '\ninterface "eth1" {\n'
        '  description = "LAN"\n'
        '  address     = "192.168.10.1/24"\n'
        "  mtu         = 1500 # jumbo frames later\n"
        "}\n"
    )
    assert doc.text() == APPLIANCE.replace(removed, "")
    assert "\n\n\n" not in doc.text()


def test_removing_a_block_under_a_comment_keeps_it_and_takes_the_blank_line_below() -> None:
    doc = Document.parse(VPN_LINK_GROUPS)
    doc.body.remove_block(find(doc, "vpn_link_group", "hq"))
    assert doc.text() == (
        'schema_version = "1.4"\n'
        "\n"
        "# vpn_link_group is renamed to uplink_group in 2.0.\n"
        'vpn_link_group "backup" {\n'
        '  members = ["wg2"]\n'
        "}\n"
    )


def test_removing_the_last_block_of_a_body_leaves_no_blank_line_before_the_brace() -> None:
    doc = Document.parse(NAT_RULES)
    nat = find(doc, "nat")
    nat.remove_block(find(nat, "port_forward", "game"))
    assert doc.text().endswith('    target      = "192.168.10.5:8443"\n  }\n}\n')


def test_block_handles_follow_their_blocks_while_earlier_blocks_are_removed() -> None:
    doc = Document.parse(APPLIANCE)
    interfaces = doc.body.blocks("interface")
    zones = doc.body.blocks("zone")
    for interface in interfaces:
        doc.body.remove_block(interface)
    assert [zone.labels for zone in zones] == [("lan",), ("wan",)]
    find(zones[1], "match").set("interface", "ppp0")
    assert 'zone "wan" {\n  match { interface = "ppp0" }\n}\n' in doc.text()
    with pytest.raises(ValueError, match="removed"):
        interfaces[0].get("description")
    with pytest.raises(ValueError, match="not a child"):
        doc.body.remove_block(find(zones[0], "services"))


def test_renaming_vpn_link_group_changes_only_the_block_type_tokens() -> None:
    """Comments and strings that mention the old name are data, not the block's type."""
    doc = Document.parse(VPN_LINK_GROUPS)
    for group in doc.body.blocks("vpn_link_group"):
        doc.body.rename_block(group, "uplink_group")
    assert changes(VPN_LINK_GROUPS, doc.text()) == [
        '-vpn_link_group "hq" {',
        '+uplink_group "hq" {',
        '-vpn_link_group "backup" {',
        '+uplink_group "backup" {',
    ]
    assert "# vpn_link_group is renamed to uplink_group in 2.0." in doc.text()
    assert '# the legacy name "vpn_link_group" stays in this comment' in doc.text()
    hq = find(doc, "uplink_group", "hq")
    assert hq.get("label") == "vpn_link_group"
    assert doc.body.blocks("vpn_link_group") == []


def test_renaming_a_label_keeps_the_type_and_a_rename_to_the_same_name_is_a_no_op() -> None:
    doc = Document.parse(FOUR_SPACES)
    dhcp = find(doc, "dhcp")
    lan = find(dhcp, "scope", "lan")
    dhcp.rename_block(lan, "scope", "lan")
    assert doc.text() is FOUR_SPACES
    dhcp.rename_block(lan, "scope", "office")
    assert changes(FOUR_SPACES, doc.text()) == ['-    scope "lan" {', '+    scope "office" {']
    assert lan.labels == ("office",)
    lan.set("lease_time", "24h")
    assert '    scope "office" {\n        interface' in doc.text()


def test_renaming_with_a_different_number_of_labels_rewrites_the_header() -> None:
    doc = Document.parse(TABS)
    policy = find(doc, "policy", "wan-to-lan")
    doc.body.rename_block(policy, "policy", "wan", "lan")
    assert changes(TABS, doc.text()) == ['-policy "wan-to-lan" {', '+policy "wan" "lan" {']


# -- moving and copying items as written ----------------------------------------------------------

RESOLVER = """\
# Resolver of the branch.
dns_server {
  forwarders   = ["10.255.0.53"]   # the DC's resolvers
  local_domain = "branch.example"  # served to the LAN

  # the printer's name, by hand
  host "10.17.10.20" {
    hostnames = ["printer"]
  }
  banner = <<EOT
  indented on purpose
EOT
  zone "corp.example" { record "www" { type = "A" } }
}
"""


def test_moving_items_carries_their_text_comments_and_nested_blocks_as_written() -> None:
    doc = Document.parse(RESOLVER)
    legacy = find(doc, "dns_server")
    serve = legacy.add_block("serve", "*")
    for item in ["local_domain", *legacy.blocks("host"), "banner", *legacy.blocks("zone")]:
        legacy.move(item, serve)
    assert doc.text() == (
        "# Resolver of the branch.\n"
        "dns_server {\n"
        '  forwarders   = ["10.255.0.53"]   # the DC\'s resolvers\n'
        "\n"
        '  serve "*" {\n'
        '    local_domain = "branch.example"  # served to the LAN\n'
        "\n"
        "    # the printer's name, by hand\n"
        '    host "10.17.10.20" {\n'
        '      hostnames = ["printer"]\n'
        "    }\n"
        "\n"
        "    banner = <<EOT\n"
        "  indented on purpose\n"
        "EOT\n"
        "\n"
        '    zone "corp.example" { record "www" { type = "A" } }\n'
        "  }\n"
        "}\n"
    )
    assert find(serve, "host", "10.17.10.20").get("hostnames") == ["printer"]
    assert serve.get("banner") == "  indented on purpose\n"


def test_moving_items_out_and_back_in_restores_the_meaning() -> None:
    doc = Document.parse(RESOLVER)
    legacy = find(doc, "dns_server")
    serve = legacy.add_block("serve", "*")
    for item in ["local_domain", *legacy.blocks("host")]:
        legacy.move(item, serve)
    for item in ["local_domain", *serve.blocks("host")]:
        serve.move(item, legacy)
    legacy.remove_block(serve)
    back = find(doc, "dns_server")
    assert back.attributes == find(Document.parse(RESOLVER), "dns_server").attributes
    assert [b.labels for b in back.blocks()] == [("corp.example",), ("10.17.10.20",)]


def test_a_moved_block_to_the_top_level_goes_to_the_end_after_a_blank_line() -> None:
    doc = Document.parse(RESOLVER)
    legacy = find(doc, "dns_server")
    legacy.move(find(legacy, "zone"), doc.body)
    assert doc.text().endswith(
        '  banner = <<EOT\n  indented on purpose\nEOT\n}\n\nzone "corp.example" '
        '{ record "www" { type = "A" } }\n'
    )


def test_moving_into_the_same_body_or_into_the_moved_block_is_refused() -> None:
    doc = Document.parse(RESOLVER)
    legacy = find(doc, "dns_server")
    host = find(legacy, "host")
    with pytest.raises(ValueError, match="cannot move"):
        legacy.move("forwarders", legacy)
    with pytest.raises(ValueError, match="cannot move"):
        legacy.move(host, host)
    with pytest.raises(ValueError, match="no attribute 'listen_on'"):
        legacy.move("listen_on", doc.body)
    assert doc.text() is RESOLVER


def test_source_gives_a_value_as_written_and_a_copy_keeps_its_spelling() -> None:
    doc = Document.parse(RESOLVER)
    legacy = find(doc, "dns_server")
    assert legacy.source("forwarders") == '["10.255.0.53"]'
    assert legacy.source("banner") == "<<EOT\n  indented on purpose\nEOT"
    assert legacy.source("missing") is None
    copy = doc.body.add_block("copy")
    copy.set("banner", Expression(legacy.source("banner") or ""))
    assert copy.get("banner") == legacy.get("banner")


def test_a_new_attribute_can_go_first_in_its_block() -> None:
    doc = Document.parse(RESOLVER)
    legacy = find(doc, "dns_server")
    legacy.set("enabled", True, first=True)
    assert changes(RESOLVER, doc.text()) == ["+  enabled = true"]
    assert doc.text().startswith("# Resolver of the branch.\ndns_server {\n  enabled = true\n")
    legacy.set("enabled", False, first=True)
    assert doc.text().count("enabled") == 1


def test_relabel_adds_changes_and_removes_labels_keeping_the_type() -> None:
    text = 'protection {\n  syn_flood = true\n}\n\npolicy "lan" "wan" { action = "accept" }\n'
    doc = Document.parse(text)
    protection, policy = doc.body.blocks()
    doc.body.relabel(protection, "legacy_global")
    doc.body.relabel(policy)
    assert changes(text, doc.text()) == [
        "-protection {",
        '+protection "legacy_global" {',
        '-policy "lan" "wan" { action = "accept" }',
        '+policy { action = "accept" }',
    ]
    doc.body.relabel(protection)
    doc.body.relabel(policy, "lan", "wan")
    assert doc.text() == text


def test_items_lists_attributes_and_blocks_in_the_order_of_the_file() -> None:
    doc = Document.parse(RESOLVER)
    legacy = find(doc, "dns_server")
    host, zone = find(legacy, "host"), find(legacy, "zone")
    assert legacy.items() == ["forwarders", "local_domain", host, "banner", zone]


# -- schema_version ------------------------------------------------------------------------------


def test_setting_schema_version_changes_only_its_value() -> None:
    doc = Document.parse(APPLIANCE)
    doc.schema_version = "2.0"
    assert changes(APPLIANCE, doc.text()) == [
        '-schema_version = "1.4"   # bumped by migrations only',
        '+schema_version = "2.0"   # bumped by migrations only',
    ]
    doc.schema_version = "2.0"
    assert doc.schema_version == "2.0"


def test_a_missing_schema_version_is_added_at_the_top_after_the_leading_comments() -> None:
    doc = Document.parse(HEADER_ONLY)
    doc.schema_version = "1.0"
    assert doc.text() == HEADER_ONLY + 'schema_version = "1.0"\n'
    text = '// Flywall\n\nzone "lan" {\n  mtu = 1500\n}\n'
    doc = Document.parse(text)
    doc.schema_version = "1.0"
    assert doc.text() == '// Flywall\n\nschema_version = "1.0"\n\nzone "lan" {\n  mtu = 1500\n}\n'
    doc = Document.parse('hostname = "fw"\n')
    doc.schema_version = "1.0"
    assert doc.text() == 'schema_version = "1.0"\nhostname = "fw"\n'


# -- parse errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "detail"),
    [
        ('zone "lan" {\n  mtu = \n}\n', 2, 9, "unexpected end of line"),
        ('zone "lan" {\n  mtu = 1500\n', 3, 1, "unexpected end of file"),
        ("mtu = 1500 9000\n", 1, 12, "unexpected '9000'"),
        ("hostname = @fw\n", 1, 12, "unexpected '@fw'"),
        ('zone "a" {\n  ports = [1, 2\n}\n', 3, 1, "unexpected '}'"),
    ],
)
def test_a_config_that_does_not_parse_names_the_file_line_and_column(
    text: str, line: int, column: int, detail: str
) -> None:
    with pytest.raises(ConfigParseError) as caught:
        Document.parse(text, "/etc/flywall/flywall.hcl")
    error = caught.value
    assert (error.path, error.line, error.column) == ("/etc/flywall/flywall.hcl", line, column)
    assert str(error).startswith(f"/etc/flywall/flywall.hcl:{line}:{column}: {detail}")
    assert "\n" not in str(error)
    assert "Token(" not in str(error)


# -- property: edits touch only their own bytes ------------------------------------------------------


def canonical(value: object) -> str | None:
    """How `set` spells a scalar, when the test can say so without the module's help."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str) and value.isprintable() and not set(value) & set('"\\$%'):
        return f'"{value}"'
    return None


def candidates(text: str) -> list[tuple[tuple[int, ...], str, object]]:
    """Scalar attributes whose line is spelled as `set` would spell it, exactly once in the file.

    Only these can come back byte-identical after being set to something else and back.
    """
    doc = Document.parse(text)
    found = []

    def visit(body: Body, path: tuple[int, ...]) -> None:
        for name, value in body.attributes.items():
            spelled = canonical(value)
            pattern = rf"^[ \t]*{name}[ \t]*=[ \t]*{re.escape(spelled or '')}[ \t]*(#|//|/\*|\r?$)"
            if spelled and len(re.findall(pattern, text, re.MULTILINE)) == 1:
                found.append((path, name, value))
        for i, block in enumerate(body.blocks()):
            visit(block.body, (*path, i))

    visit(doc.body, ())
    return found


CANDIDATES = {name: candidates(text) for name, text in CONFIGS.items()}

scalars = st.one_of(
    st.booleans(),
    st.none(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30).filter(lambda s: "${" not in s and "%{" not in s),
)


def body_at(doc: Document, path: tuple[int, ...]) -> Body:
    body = doc.body
    for i in path:
        body = body.blocks()[i].body
    return body


def test_most_attributes_of_the_sample_configs_take_part_in_the_property() -> None:
    assert sum(map(len, CANDIDATES.values())) >= 50


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_setting_attributes_to_random_values_and_back_restores_every_byte(
    data: st.DataObject,
) -> None:
    name = data.draw(st.sampled_from(sorted(n for n, c in CANDIDATES.items() if c)))
    text = CONFIGS[name]
    doc = Document.parse(text)
    picked = data.draw(st.lists(st.sampled_from(CANDIDATES[name]), min_size=1, max_size=4))
    for path, attribute, _ in picked:
        body_at(doc, path).set(attribute, data.draw(scalars))
    names = {attribute for _, attribute, _ in picked}
    for line in changes(text, doc.text()):
        assert line.lstrip("-+ \t").split(" ")[0].split("=")[0] in names, line
    for path, attribute, original in reversed(picked):
        body_at(doc, path).set(attribute, original)  # type: ignore[arg-type]
    assert doc.text() == text


DOCUMENT_LEVEL = '''\
"""Give every zone a description, through the document's own methods."""
component = "config"


def up(ctx, config):
    for zone in config.blocks("zone"):
        zone.setdefault_block("services")
    config.setdefault_block("ebpf", enabled=False)


def down(ctx, config):
    for zone in config.blocks("zone"):
        services = zone.block("services")
        if services is not None:
            zone.remove_block(services)
    ebpf = config.block("ebpf")
    if ebpf is not None:
        config.remove_block(ebpf)
'''


def test_a_config_migration_asks_the_document_itself_for_blocks(appliance) -> None:
    """Issue 16.5: `config.blocks("zone")` answers as `config.body.blocks("zone")` does."""
    config = appliance.workspace().paths.config
    config.write_text('schema_version = "1.0"\n\nzone "lan" {\n  x = 1\n}\n', encoding="utf-8")
    appliance.write("202401010001_document_level.py", DOCUMENT_LEVEL)

    migrate = appliance.cli("migrate")

    assert migrate.returncode == 0, migrate.stderr
    assert config.read_text(encoding="utf-8") == (
        'schema_version = "1.0"\n\nzone "lan" {\n  x = 1\n\n  services {}\n}\n\n'
        "ebpf {\n  enabled = false\n}\n"
    )
