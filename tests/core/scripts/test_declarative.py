"""Flywall's declarative config migrations (`VERSION_slug.hcl`, FLYWALL.md §4).

Each operation and its inverse run on a realistic flywall.hcl of our own: the operation
changes only the lines it targets, every other byte stays, and its inferred down gives the
original back. Files chain their `migration` blocks by label; a bad file is refused at
discovery naming its file and line; through the CLI a declarative file migrates and rolls
back like any other, journaled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import blake3
import pytest
from conftest import Appliance
from crashkit import check_after_cut, check_settled, killed, observe, sample

from flywall.core.formats.hcl import Document
from flywall.core.model.errors import DiscoveryError
from flywall.core.scripts.declarative import Operation, RenameConflict, Step, invert, parse, run
from flywall.core.scripts.discovery import discover, load_module

# A branch-office box as it is found in the field (FLYWALL.md §2): comments, a trailing
# comment on an aligned attribute, one-line blocks, nested labelled blocks.
CONFIG = """\
# fw01: branch office, edited by hand
schema_version = "1.0"

global_protection {
  syn_flood = true   # keep on
}

interface "eth0" {
  description = "WAN"
  dhcp        = true
}

zone "lan" {
  match { interface = "eth1" }
}

zone "guest" {
  # guests get DNS only
  match {
    interface = "wlan0"
  }
}

api {
  listen                = ":8080"   # behind the firewall
  disable_http_redirect = false
}

vpn_link_group "wan" {
  vpn_link "wg0" {
    weight = 10 # primary
  }
  vpn_link "wg1" { weight = 5 }
}
"""


# -- the document: renaming an attribute in place ----------------------------------------------


def test_renaming_an_attribute_changes_its_name_only_and_keeps_the_column_of_its_equals():
    document = Document.parse(CONFIG, "flywall.hcl")
    api = document.body.block("api")
    assert api is not None

    assert api.rename("listen", "listen_addr") is True

    assert document.text() == CONFIG.replace(
        '  listen                = ":8080"', '  listen_addr           = ":8080"'
    )
    assert api.get("listen_addr") == ":8080"
    api.rename("listen_addr", "listen")
    assert document.text() == CONFIG


def test_renaming_an_unaligned_attribute_keeps_its_single_space():
    document = Document.parse('api {\n  listen = ":8080"\n}\n')
    document.body.block("api").rename("listen", "listen_addr")  # type: ignore[union-attr]

    assert document.text() == 'api {\n  listen_addr = ":8080"\n}\n'


def test_renaming_an_absent_attribute_is_false_and_changes_nothing():
    document = Document.parse(CONFIG)

    assert document.body.rename("state_dir", "state_directory") is False
    assert not document.changed


def test_renaming_onto_an_attribute_already_set_is_refused_and_changes_nothing():
    document = Document.parse(CONFIG, "flywall.hcl")
    api = document.body.block("api")
    assert api is not None

    with pytest.raises(ValueError, match="disable_http_redirect is already set"):
        api.rename("listen", "disable_http_redirect")
    assert not document.changed


def test_an_attribute_line_is_where_it_starts_and_none_when_absent():
    document = Document.parse(CONFIG)
    api = document.body.block("api")
    assert api is not None

    assert api.body.attribute_line("disable_http_redirect") == 26
    assert document.body.attribute_line("schema_version") == 2
    assert api.body.attribute_line("tls_listen") is None


# -- each operation, and its inverse --------------------------------------------------------------


def one_step(body: str, start: str = "1.0", end: str = "1.1") -> tuple[Step, ...]:
    return parse("x.hcl", f'migration "{start}" "{end}" {{\n{body}\n}}\n')


def apply(
    steps: tuple[Step, ...], text: str, direction: str = "up"
) -> tuple[str, list[tuple[str, str]]]:
    """Run the steps on `text`; return the new text and the (level, message) logged."""
    document = Document.parse(text, "flywall.hcl")
    logs: list[tuple[str, str]] = []
    run(steps, direction, document, lambda message, level="info": logs.append((level, message)))
    return document.text(), logs


def at_1_1(text: str) -> str:
    return text.replace('schema_version = "1.0"', 'schema_version = "1.1"')


SERVICES = "  services {\n    dns = false\n    dhcp = false\n  }\n"

# (operation, what up makes of CONFIG: (old, new) replacements; None: down gives CONFIG back)
OPERATIONS_CASES = {
    "add_block": (
        'operation "add_block" "ebpf" { defaults = { enabled = false } }',
        [("weight = 5 }\n}\n", "weight = 5 }\n}\n\nebpf {\n  enabled = false\n}\n")],
    ),
    "add_block nested": (
        'operation "add_block" "zone.services" {\n  defaults = { dns = false, dhcp = false }\n}',
        [
            (
                '  match { interface = "eth1" }\n',
                ('  match { interface = "eth1" }\n\n' + SERVICES),
            ),
            (
                '    interface = "wlan0"\n  }\n',
                ('    interface = "wlan0"\n  }\n\n' + SERVICES),
            ),
        ],
    ),
    "rename_block": (
        'operation "rename_block" "vpn_link_group" { new_name = "uplink_group" }',
        [('vpn_link_group "wan"', 'uplink_group "wan"')],
    ),
    "rename_block nested": (
        'operation "rename_block" "vpn_link_group.vpn_link" { new_name = "uplink" }',
        [('  vpn_link "wg0"', '  uplink "wg0"'), ('  vpn_link "wg1"', '  uplink "wg1"')],
    ),
    "add_attribute": (
        'operation "add_attribute" "api.require_auth" { defaults = { value = true } }',
        [
            (
                "  disable_http_redirect = false\n",
                "  disable_http_redirect = false\n  require_auth = true\n",
            )
        ],
    ),
    "add_attribute top-level": (
        'operation "add_attribute" "state_dir" { defaults = { value = "/opt/flywall/var/lib" } }',
        [('"1.1"\n', '"1.1"\nstate_dir = "/opt/flywall/var/lib"\n')],
    ),
    "remove_attribute": (
        (
            'operation "remove_attribute" "api.disable_http_redirect" {\n'
            "  defaults = { value = false }\n}"
        ),
        [("  disable_http_redirect = false\n", "")],
    ),
    "rename_attribute": (
        'operation "rename_attribute" "api.listen" { new_name = "listen_addr" }',
        [('  listen                = ":8080"', '  listen_addr           = ":8080"')],
    ),
}


@pytest.mark.parametrize("case", OPERATIONS_CASES)
def test_an_operation_changes_only_its_lines_and_its_inverse_gives_the_bytes_back(case):
    operation, replacements = OPERATIONS_CASES[case]
    steps = one_step(operation)
    expected = at_1_1(CONFIG)
    for old, new in replacements:
        assert expected.count(old) == 1, old
        expected = expected.replace(old, new)

    up, logs = apply(steps, CONFIG)

    assert up == expected
    assert logs
    assert all(level == "info" for level, _ in logs)
    down, _ = apply(steps, up, "down")
    assert down == CONFIG


def test_remove_block_removes_its_lines_and_its_inverse_adds_the_defaults_back_at_the_end():
    """A removed block's place is gone; the down writes `defaults` where blocks are added."""
    steps = one_step(
        'operation "remove_block" "global_protection" { defaults = { syn_flood = true } }'
    )
    removed = "\nglobal_protection {\n  syn_flood = true   # keep on\n}\n"

    up, logs = apply(steps, CONFIG)

    assert up == at_1_1(CONFIG).replace(removed, "")
    assert logs == [("info", 'remove_block "global_protection": removed global_protection')]
    down, _ = apply(steps, up, "down")
    assert down == CONFIG.replace(removed, "") + "\nglobal_protection {\n  syn_flood = true\n}\n"


def test_a_string_default_matches_the_literal_it_spells_as_flywall_reads_it():
    """Flywall types defaults as a map of strings; its loader reads "true" as true."""
    steps = one_step(
        'operation "remove_block" "global_protection" { defaults = { syn_flood = "true" } }'
    )

    _, logs = apply(steps, CONFIG)

    assert [level for level, _ in logs] == ["info"]


def test_additions_never_overwrite_what_is_already_there():
    steps = one_step(
        'operation "add_block" "api" { defaults = { listen = ":9090" } }\n'
        'operation "add_attribute" "api.listen" { defaults = { value = ":9090" } }'
    )

    up, logs = apply(steps, CONFIG)

    assert up == at_1_1(CONFIG)
    assert [message for _, message in logs] == [
        'add_block "api": kept the api block already there',
        'add_attribute "api.listen": kept the value already set at line 25',
    ]


def test_a_removal_warns_about_settings_it_drops_and_preserve_keeps_them():
    changed = CONFIG.replace("syn_flood = true   # keep on", "syn_flood = false")
    removal = 'operation "remove_block" "global_protection" {\n  defaults = { syn_flood = true }\n'

    dropped, logs = apply(one_step(removal + "}"), changed)
    kept, kept_logs = apply(one_step(removal + "  preserve = true\n}"), changed)

    assert "global_protection" not in dropped
    assert logs == [
        (
            "warning",
            (
                'remove_block "global_protection": removed global_protection, '
                "which held { syn_flood = false }"
            ),
        )
    ]
    assert kept == at_1_1(changed)
    assert kept_logs == [
        (
            "warning",
            (
                'remove_block "global_protection": kept global_protection at line 4: '
                "it holds more than its defaults"
            ),
        )
    ]


def test_preserve_on_an_addition_makes_its_down_keep_what_an_operator_changed():
    steps = one_step(
        'operation "add_attribute" "api.require_auth" {\n'
        "  defaults = { value = true }\n  preserve = true\n}"
    )
    up, _ = apply(steps, CONFIG)
    edited = up.replace("require_auth = true", "require_auth = false")

    down, logs = apply(steps, edited, "down")

    assert down == CONFIG.replace(
        "disable_http_redirect = false\n", "disable_http_redirect = false\n  require_auth = false\n"
    )
    assert logs == [
        (
            "warning",
            'remove_attribute "api.require_auth": kept require_auth = false at line 27',
        )
    ]


def test_a_rename_onto_a_name_already_there_fails_naming_the_config_unless_preserve():
    both = CONFIG + '\nuplink_group "wan" {\n}\n'
    rename = 'operation "rename_block" "vpn_link_group" {\n  new_name = "uplink_group"\n'

    with pytest.raises(RenameConflict) as caught:
        apply(one_step(rename + "}"), both)
    kept, logs = apply(one_step(rename + "  preserve = true\n}"), both)

    assert str(caught.value) == (
        'flywall.hcl: rename_block "vpn_link_group" -> uplink_group: vpn_link_group "wan" at '
        "line 29 would duplicate the uplink_group block already there (preserve = true keeps both)"
    )
    assert kept == at_1_1(both)
    assert [level for level, _ in logs] == ["warning"]


def test_a_rename_to_another_label_is_no_conflict():
    other = CONFIG + '\nuplink_group "lte" {\n}\n'
    steps = one_step('operation "rename_block" "vpn_link_group" { new_name = "uplink_group" }')

    up, _ = apply(steps, other)

    assert up == at_1_1(other).replace('vpn_link_group "wan"', 'uplink_group "wan"')


def test_an_operation_on_a_path_the_config_lacks_changes_nothing_but_the_version():
    steps = one_step('operation "add_attribute" "web.listen" { defaults = { value = ":443" } }')

    up, logs = apply(steps, CONFIG)

    assert up == at_1_1(CONFIG)
    assert logs == [("info", 'add_attribute "web.listen": no web block here')]


@pytest.mark.parametrize(
    "operation",
    [
        Operation(type="add_block", target="ebpf", defaults={"enabled": "false"}),
        Operation(type="remove_block", target="dns.serve", preserve=True),
        Operation(type="rename_block", target="a.b", new_name="c"),
        Operation(type="add_attribute", target="api.x", defaults={"value": 1}),
        Operation(type="remove_attribute", target="x", defaults={"value": True}, preserve=True),
        Operation(type="rename_attribute", target="api.listen", new_name="listen_addr"),
    ],
    ids=str,
)
def test_inverting_twice_is_the_operation_itself(operation):
    inverse = invert(operation)

    assert inverse != operation
    assert invert(inverse) == operation


def test_the_inverse_swaps_additions_and_removals_and_renames_within_their_block():
    rename = Operation(type="rename_attribute", target="api.listen", new_name="listen_addr")
    add = Operation(type="add_block", target="ebpf", defaults={"enabled": False})

    assert invert(rename) == Operation(
        type="rename_attribute", target="api.listen_addr", new_name="listen"
    )
    assert invert(add) == Operation(type="remove_block", target="ebpf", defaults={"enabled": False})


# -- a file of several migration blocks -------------------------------------------------------------

CHAINED = """\
# Two firmware steps in one file.
migration "1.1" "1.2" {
  description = "VPN links are uplinks"
  operation "rename_block" "vpn_link_group" {
    new_name = "uplink_group"
  }
  operation "rename_block" "uplink_group.vpn_link" {
    new_name = "uplink"
  }
}

migration "1.0" "1.1" {
  description = "Add eBPF, off"
  operation "add_block" "ebpf" {
    defaults = { enabled = false }
  }
}
"""

CHAINED_UP = (
    CONFIG.replace('"1.0"', '"1.2"')
    .replace("vpn_link_group", "uplink_group")
    .replace("  vpn_link ", "  uplink ")
    + "\nebpf {\n  enabled = false\n}\n"
)


def test_migration_blocks_chain_by_their_labels_whatever_their_order_in_the_file():
    steps = parse("x.hcl", CHAINED)

    assert [(s.from_version, s.to_version) for s in steps] == [("1.0", "1.1"), ("1.1", "1.2")]
    assert [s.line for s in steps] == [12, 2]
    up, _ = apply(steps, CONFIG)
    assert up == CHAINED_UP
    down, logs = apply(steps, up, "down")
    assert down == CONFIG
    assert [message.split(":")[0] for _, message in logs] == [
        'rename_block "uplink_group.uplink" -> vpn_link',
        'rename_block "uplink_group.uplink" -> vpn_link',
        'rename_block "uplink_group" -> vpn_link_group',
        'remove_block "ebpf"',
    ]


def test_a_config_already_past_a_step_gets_only_the_later_steps():
    at_1_1_with_ebpf = at_1_1(CONFIG) + "\nebpf {\n  enabled = true\n}\n"

    up, _ = apply(parse("x.hcl", CHAINED), at_1_1_with_ebpf)

    assert up == CHAINED_UP.replace("enabled = false", "enabled = true")


def test_a_config_at_or_past_the_last_step_is_left_alone():
    up, logs = apply(parse("x.hcl", CHAINED), CHAINED_UP)

    assert up == CHAINED_UP
    assert logs == [("info", "schema_version is already 1.2: nothing to do")]


def test_a_config_without_schema_version_is_at_1_0_as_flywall_reads_it():
    unversioned = CONFIG.replace('schema_version = "1.0"\n', "")

    up, _ = apply(one_step('operation "add_block" "ebpf" {}'), unversioned)

    assert up.startswith(
        '# fw01: branch office, edited by hand\n\nschema_version = "1.1"\n\nglobal_protection {'
    )


def test_a_gap_between_steps_is_jumped_both_ways():
    gapped = parse(
        "x.hcl",
        'migration "1.0" "1.1" {\n  operation "add_block" "ebpf" {}\n}\n'
        'migration "1.3" "1.4" {\n'
        '  operation "rename_attribute" "api.listen" { new_name = "listen_addr" }\n}\n',
    )

    up, _ = apply(gapped, CONFIG)
    down, _ = apply(gapped, up, "down")

    assert up == (
        CONFIG.replace('"1.0"', '"1.4"').replace(
            "listen                =", "listen_addr           ="
        )
        + "\nebpf {}\n"
    )
    assert down == CONFIG


def test_a_down_refuses_a_config_newer_than_the_migration_naming_the_file():
    newer = CONFIG.replace('"1.0"', '"1.5"')

    with pytest.raises(ValueError, match=r"^flywall.hcl: schema_version is 1.5, above .+ 1.2"):
        apply(parse("x.hcl", CHAINED), newer, "down")


def test_a_config_version_that_is_not_x_y_fails_the_migration_naming_the_file():
    with pytest.raises(ValueError, match=r'^flywall\.hcl: schema_version "1\.0\.0" is not "X\.Y"'):
        apply(parse("x.hcl", CHAINED), CONFIG.replace('"1.0"', '"1.0.0"'))


# -- files that are refused, naming file and line -----------------------------------------------------

BAD_FILES = {
    "overlap": (
        'migration "1.0" "1.2" {\n}\n\nmigration "1.1" "1.3" {\n}\n',
        'x.hcl:4: migration "1.1" "1.3" overlaps "1.0" "1.2" (line 1)',
    ),
    "label not X.Y": (
        '# v2\nmigration "1.0" "1.1.0" {\n}\n',
        'x.hcl:2: migration label "1.1.0" is not "X.Y" (two integers, such as "1.1")',
    ),
    "label with a line break": (
        'migration "1.0" "1.1\\n" {\n}\n',
        'x.hcl:1: migration label "1.1\\n" is not "X.Y" (two integers, such as "1.1")',
    ),
    "one label": (
        'migration "1.1" {\n}\n',
        'x.hcl:1: migration needs two labels, "FROM" "TO", got 1',
    ),
    "going down": (
        'migration "1.2" "1.1" {\n}\n',
        'x.hcl:1: migration "1.2" "1.1" must go up: FROM below TO',
    ),
    "unknown argument": (
        'migration "1.0" "1.1" {\n  operation "add_block" "ebpf" {\n    default = {}\n  }\n}\n',
        "x.hcl:3: unknown operation argument 'default' (new_name, preserve, defaults)",
    ),
    "misplaced argument": (
        'migration "1.0" "1.1" {\n  operation "add_block" "ebpf" {\n    new_name = "x"\n  }\n}\n',
        "x.hcl:3: add_block takes no 'new_name'",
    ),
    "unknown operation": (
        'migration "1.0" "1.1" {\n\n  operation "move_block" "a" {}\n}\n',
        (
            "x.hcl:3: unknown operation 'move_block' (one of add_block, remove_block, "
            "rename_block, add_attribute, remove_attribute, rename_attribute)"
        ),
    ),
    "rename without new_name": (
        'migration "1.0" "1.1" {\n  operation "rename_block" "a" {}\n}\n',
        "x.hcl:2: rename_block needs new_name",
    ),
    "new_name elsewhere": (
        'migration "1.0" "1.1" {\n  operation "rename_block" "a.b" {\n    new_name = "c.d"\n  }\n}\n',
        "x.hcl:3: new_name must be a name in the same place as 'a.b', got 'c.d'",
    ),
    "bad target": (
        'migration "1.0" "1.1" {\n  operation "add_block" "a..b" {}\n}\n',
        "x.hcl:2: operation target 'a..b' is not a dotted path such as block or block.name",
    ),
    "add_attribute without value": (
        'migration "1.0" "1.1" {\n  operation "add_attribute" "api.x" {}\n}\n',
        "x.hcl:2: add_attribute needs defaults = { value = ... }",
    ),
    "defaults not scalars": (
        (
            'migration "1.0" "1.1" {\n  operation "add_block" "a" {\n'
            "    defaults = { x = [1] }\n  }\n}\n"
        ),
        "x.hcl:3: defaults: x must be a string, number or bool, got [1]",
    ),
    "preserve not bool": (
        'migration "1.0" "1.1" {\n  operation "remove_block" "a" {\n    preserve = "yes"\n  }\n}\n',
        "x.hcl:3: preserve must be true or false, got 'yes'",
    ),
    "schema_version as target": (
        'migration "1.0" "1.1" {\n  operation "remove_attribute" "schema_version" {}\n}\n',
        "x.hcl:2: schema_version is set by the migration's labels, not operations",
    ),
    "unknown migration argument": (
        'migration "1.0" "1.1" {\n  descripton = "typo"\n}\n',
        "x.hcl:2: unknown migration argument 'descripton' (only description)",
    ),
    "something else at the top": (
        'migration "1.0" "1.1" {\n}\nzone "lan" {\n}\n',
        "x.hcl:3: unexpected block 'zone' at the top: only migration blocks",
    ),
    "an operation outside a migration": (
        'operation "add_block" "ebpf" {}\n',
        "x.hcl:1: unexpected block 'operation' at the top: only migration blocks",
    ),
    "something else in a migration": (
        'migration "1.0" "1.1" {\n  step "add_block" "ebpf" {}\n}\n',
        "x.hcl:2: unexpected block 'step' in migration: only operation blocks",
    ),
    "an attribute at the top": (
        '# v2\nversion = "1.1"\n',
        "x.hcl:2: unexpected attribute 'version': only migration blocks here",
    ),
    "no migration": ("# nothing yet\n", 'x.hcl: holds no migration "FROM" "TO" { ... } block'),
    "not HCL": (
        'migration "1.0" "1.1" {\n  operation "add_block" "ebpf" {\n}\n',
        "x.hcl:4:1: unexpected end of file (is a brace or quote left open?)",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_is_refused_naming_file_and_line(case):
    text, message = BAD_FILES[case]

    with pytest.raises(DiscoveryError) as caught:
        parse("x.hcl", text)

    assert str(caught.value) == message
    assert caught.value.path == "x.hcl"


# -- discovery: a declarative file is a config migration ----------------------------------------------


def test_discovery_describes_a_declarative_file_as_a_config_migration(tmp_path):
    (tmp_path / "202601010001_uplinks.hcl").write_bytes(CHAINED.replace("\n", "\r\n").encode())

    [migration] = discover([tmp_path])

    assert (migration.version, migration.slug, migration.kind) == ("202601010001", "uplinks", "hcl")
    assert migration.component == "config"
    assert migration.schema_version == "1.2"
    assert migration.description == "Add eBPF, off; VPN links are uplinks"  # in version order
    assert (migration.has_down, migration.has_verify) == (True, False)
    assert migration.deprecations == {
        "vpn_link_group": "uplink_group",
        "uplink_group.vpn_link": "uplink_group.uplink",
    }
    assert migration.checksum == blake3.blake3(CHAINED.encode()).hexdigest()


def test_the_migration_module_of_a_declarative_file_has_up_and_down(tmp_path):
    path = tmp_path / "202601010001_uplinks.hcl"
    path.write_text(CHAINED)
    module = load_module(discover([tmp_path])[0])
    document = Document.parse(CONFIG, "flywall.hcl")
    logs: list[str] = []
    ctx = SimpleNamespace(log=lambda message, _level="info": logs.append(message))

    module.up(ctx, document)
    assert document.text() == CHAINED_UP
    module.down(ctx, document)
    assert document.text() == CONFIG
    assert len(logs) == 8


# -- through the CLI, on an appliance ------------------------------------------------------------------

V = "202601010001"

# One step to 1.1: the ceiling of what Flywall v0.3 loads (FLYWALL.md §2), which the
# settings' max_config_version enforces by default.
UPLINKS = """\
# Flywall 1.1: VPN links are uplinks; eBPF is declared.
migration "1.0" "1.1" {
  description = "VPN links are uplinks, eBPF off"
  operation "rename_block" "vpn_link_group" {
    new_name = "uplink_group"
  }
  operation "rename_block" "uplink_group.vpn_link" {
    new_name = "uplink"
  }
  operation "add_block" "ebpf" {
    defaults = { enabled = false }
  }
}
"""

# Appended to the appliance's own flywall.hcl (tests/conftest.py builds it).
BOX = """
vpn_link_group "wan" {   # two tunnels
  vpn_link "wg0" {
    weight = 10 # primary
  }
  vpn_link "wg1" { weight = 5 }
}

api {
  listen                = ":8080"   # behind the firewall
  disable_http_redirect = false
}
"""


def declarative_box(app: Appliance) -> Path:
    """The appliance's config with Flywall's legacy shapes, and UPLINKS as a migration."""
    config = app.workspace().paths.config
    config.write_text(config.read_text(encoding="utf-8") + BOX, encoding="utf-8")
    app.write(f"{V}_uplinks.hcl", UPLINKS)
    return config


def expected_after(text: str) -> str:
    """What UPLINKS makes of `text` (the operations themselves are proven above)."""
    return apply(parse("x.hcl", UPLINKS), text)[0]


def test_migrate_then_rollback_through_the_cli_journals_it_like_any_migration(appliance):
    config = declarative_box(appliance)
    before = config.read_text(encoding="utf-8")

    result = appliance.cli("migrate")

    assert result.returncode == 0, result.stderr
    after = config.read_text(encoding="utf-8")
    assert after == expected_after(before)
    assert 'uplink_group "wan" {   # two tunnels' in after
    assert '  uplink "wg1" { weight = 5 }' in after
    assert json.loads(appliance.cli("status", "--json").stdout)["components"] == {"config": "1.1"}
    history = json.loads(appliance.cli("history", "--json", "--migration", V).stdout)
    assert [e["kind"] for e in history] == [
        "MigrationStarted",
        "MigrationLog",
        "MigrationLog",
        "MigrationLog",
        "MigrationLog",
        "WriteIntent",
        "MigrationApplied",
    ]
    assert history[0]["checksum"] == blake3.blake3(UPLINKS.encode()).hexdigest()
    log = appliance.cli("log", V).stdout
    assert 'add_block "ebpf": added ebpf { enabled = false }' in log

    # Right after migrate, the engine restores the journaled bytes from before up.
    assert appliance.cli("rollback", V).returncode == 0
    assert config.read_text(encoding="utf-8") == before
    # After an operator's edit, the inferred down runs.
    assert appliance.cli("migrate").returncode == 0
    config.write_text(after + "# reviewed by ops\n", encoding="utf-8")
    result = appliance.cli("rollback", V)

    assert result.returncode == 0, result.stderr
    assert config.read_text(encoding="utf-8") == before + "# reviewed by ops\n"
    log = appliance.cli("log", V).stdout
    assert 'rename_block "uplink_group" -> vpn_link_group: renamed at line' in log
    assert appliance.cli("journal", "verify").returncode == 0


def test_validate_warns_where_the_config_still_uses_a_name_a_declarative_rename_retires(
    appliance,
):
    config = declarative_box(appliance)
    lines = config.read_text(encoding="utf-8").splitlines()
    line = lines.index('vpn_link_group "wan" {   # two tunnels') + 1

    before = appliance.cli("validate")

    assert before.returncode == 0, before.stdout
    assert [w for w in before.stdout.splitlines() if w.startswith("warn")] == [
        "warn  deprecations: 1 deprecated key(s) in use",
        f"warn  {config}:{line}: vpn_link_group is deprecated since 1.1; use uplink_group",
    ]
    appliance.migrate()
    assert "warn" not in appliance.cli("validate").stdout


def test_a_declarative_migration_rolls_back_from_the_journal_after_its_file_is_gone(appliance):
    config = declarative_box(appliance)
    before = config.read_text(encoding="utf-8")
    appliance.migrate()
    (appliance.migrations_dir / f"{V}_uplinks.hcl").unlink()
    config.write_text(config.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")

    result = appliance.cli("rollback", V)

    assert result.returncode == 0, result.stderr
    assert config.read_text(encoding="utf-8") == before + "# edited\n"


def test_a_rename_conflict_fails_the_migration_and_leaves_the_config_alone(appliance):
    config = declarative_box(appliance)
    config.write_text(
        config.read_text(encoding="utf-8") + '\nuplink_group "wan" {\n}\n', encoding="utf-8"
    )
    before = config.read_bytes()

    result = appliance.cli("migrate")

    line = before.decode().splitlines().index('vpn_link_group "wan" {   # two tunnels') + 1
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"FAILED: migration {V} failed during up: RenameConflict: {config}: "
        f'rename_block "vpn_link_group" -> uplink_group: vpn_link_group "wan" at line {line} '
        "would duplicate the uplink_group block already there (preserve = true keeps both)"
    )
    assert config.read_bytes() == before


@pytest.mark.parametrize(
    "case", ["overlap", "label not X.Y", "unknown argument", "unknown operation", "not HCL"]
)
def test_a_bad_file_fails_every_command_with_one_line_naming_file_and_line(appliance, case):
    text, message = BAD_FILES[case]
    path = appliance.write(f"{V}_bad.hcl", text)

    # Issue 16.14 (both were exit 2): `list` shows it as broken, `migrate` refuses (exit 4).
    listed = appliance.cli("list")
    assert (listed.returncode, listed.stderr) == (4, "")
    line, detail = message.removeprefix("x.hcl:").split(":", 1)
    assert f"BROKEN      {path}: line {line}:{detail}\n" in listed.stdout
    result = appliance.cli("migrate")
    assert result.returncode == 4
    refused = f"FAILED: {message.replace('x.hcl', str(path), 1)}; nothing was run"
    assert result.stderr == f"{refused} (fix or remove the file)\n"
    assert "Traceback" not in result.stderr


def test_a_declarative_file_is_signed_and_checked_like_any_other(appliance, tmp_path):
    from test_signing import new_key, require

    declarative_box(appliance)
    key, public = new_key(tmp_path, "vendor.key")
    require(appliance, public.hex())
    assert appliance.cli("sign", "--key", str(key)).returncode == 0
    path = appliance.migrations_dir / f"{V}_uplinks.hcl"
    manifest = json.loads((appliance.migrations_dir / "signatures.json").read_text())
    assert list(manifest["files"]) == [path.name]
    path.write_text(UPLINKS.replace("enabled = false", "enabled = true"))

    result = appliance.cli("migrate")

    assert result.returncode == 4
    assert result.stderr.startswith(f"FAILED: {path}: modified after signing: checksum ")


@pytest.mark.torture
def test_a_kill_at_every_crash_point_of_a_declarative_run_recovers_to_the_uninterrupted_result(
    appliance, tmp_path
):
    """No new side effect: the engine's journaled file replace, reached by a new kind."""
    declarative_box(appliance)
    reference = Appliance(tmp_path / "reference")  # listing the points: an uncut run
    shutil.copytree(appliance.root, reference.root)
    listing = tmp_path / "points.txt"
    assert reference.cli("migrate", env={"FLYWALL_CRASH_LIST": str(listing)}).returncode == 0
    expected = observe(reference.root)
    points = [line.replace(" ", ":") for line in listing.read_text().splitlines()]
    assert any(p.startswith("file-") for p in points), points

    violations = {}
    chosen = sample(points)
    for i, point in enumerate(chosen):
        app = Appliance(tmp_path / f"cut-{i}")
        shutil.copytree(appliance.root, app.root)
        assert killed(app.cli("migrate", env={"FLYWALL_CRASH_AT": point})), point
        problems = check_after_cut(app.root)
        rerun = app.cli("migrate")
        if rerun.returncode != 0:
            problems.append(f"rerun exit {rerun.returncode}: {rerun.stderr.strip()}")
        problems += check_settled(app.root, expected)
        if problems:
            violations[point] = problems

    print(
        f"\ndeclarative migrate: kills at {len(chosen)} of {len(points)} crash points "
        f"x SIGKILL, {len(violations)} violations"
    )
    assert violations == {}


# -- create --declarative ------------------------------------------------------------------------------


def test_create_declarative_writes_a_file_discovery_accepts_one_version_up(appliance):
    result = appliance.cli("create", "add widgets", "--declarative")

    assert result.returncode == 0, result.stderr
    path = result.stdout.removeprefix("created ").removesuffix("\n")
    assert path.endswith("_add_widgets.hcl")
    [migration] = discover([appliance.migrations_dir])
    assert (migration.path, migration.kind, migration.component) == (path, "hcl", "config")
    assert (migration.description, migration.schema_version) == ("Add widgets", "1.1")
    assert 'migration "1.0" "1.1" {\n  description = "Add widgets"\n' in Path(path).read_text()
    # Unedited, it only moves schema_version on.
    config = appliance.workspace().paths.config
    before = config.read_text(encoding="utf-8")
    appliance.migrate()
    assert config.read_text(encoding="utf-8") == before.replace(
        'schema_version = "1.0"', 'schema_version = "1.1"'
    )
    # The next one starts where this one ends.
    second = appliance.cli("create", "more widgets", "--declarative", "--json")
    assert 'migration "1.1" "1.2" {' in Path(json.loads(second.stdout)["path"]).read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--declarative", "--sql"], "--sql migrations are database migrations"),
        (["--declarative", "--component", "api"], "--declarative migrations are config migrations"),
    ],
)
def test_create_declarative_for_another_form_or_component_is_one_line_exit_2(
    appliance, args, message
):
    result = appliance.cli("create", "x", *args)

    assert result.returncode == 2
    assert result.stderr == f"FAILED: {message}\n"
    assert list(appliance.migrations_dir.iterdir()) == []


def test_the_readme_example_is_a_valid_file_that_does_what_it_says():
    readme = (Path(__file__).parents[3] / "README.md").read_text(encoding="utf-8")
    example = readme.split("```hcl\n# 202602010001_uplinks.hcl\n", 1)[1].split("```", 1)[0]

    steps = parse("README.md", example)

    assert [(s.from_version, s.to_version) for s in steps] == [("1.0", "1.1"), ("1.1", "1.2")]
    up, _ = apply(steps, CONFIG)
    assert 'uplink_group "wan" {' in up
    assert "  require_auth = true\n" in up
    assert "\nebpf {\n  enabled = false\n}\n" in up
    assert apply(steps, up, "down")[0] == CONFIG
