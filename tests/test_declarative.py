"""Flywall's declarative config migrations (`VERSION_slug.hcl`, FLYWALL.md §4).

Each operation and its inverse run on a realistic flywall.hcl of our own: the operation
changes only the lines it targets, every other byte stays, and its inferred down gives the
original back. Files chain their `migration` blocks by label; a bad file is refused at
discovery naming its file and line; through the CLI a declarative file migrates and rolls
back like any other, journaled.
"""

from __future__ import annotations

import pytest

from flywall.core.hcl import Document

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
