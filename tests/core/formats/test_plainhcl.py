"""plainhcl: the fast reader either declines a file or reads it exactly as python-hcl2 does."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import hcl2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torture import examples

from flywall.core.appliance.demo import CONFIG as DEMO_CONFIG
from flywall.core.appliance.settings import load_settings
from flywall.core.formats.plainhcl import read_plain
from flywall.core.model.errors import ConfigParseError, SettingsError

if TYPE_CHECKING:
    from pathlib import Path

OPTIONS = hcl2.SerializationOptions(strip_string_quotes=True, with_comments=False)
FAILED = object()


def by_hcl2(text: str) -> object:
    """What python-hcl2 makes of the file's `migration` entry, or FAILED if it raises."""
    try:
        data = hcl2.loads(text, serialization_options=OPTIONS)
    except Exception:  # any failure of hcl2 means plainhcl must decline
        return FAILED
    return {k: v for k, v in data.items() if k == "migration"}


def typed(value: Any) -> Any:
    """A form where True != 1 and 1 != 1.0 and -0.0 != 0.0, so `==` compares exactly."""
    if isinstance(value, dict):
        return ("dict", [(k, typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    if isinstance(value, float):
        return ("float", math.copysign(1, value), abs(value))
    return (type(value).__name__, value)


# ---------------------------------------------------------------- generated files
# Two dialects: `plain` stays (mostly) inside what plainhcl reads, so agreement is tested on
# many accepted files; `noisy` mixes in everything else hcl2 knows (and typos), so declining
# is tested too. Mutation then breaks either in small ways.
def pick(plain: list[str], noisy: list[str], *, is_noisy: bool) -> st.SearchStrategy[str]:
    return st.sampled_from(plain + noisy if is_noisy else plain)


def dialect(*, noisy: bool, values_only: bool = False) -> st.SearchStrategy[str]:
    space = pick(["", " ", "  ", "\t", " \t "], [], is_noisy=noisy)
    comment_text = st.text(alphabet=st.sampled_from([*"abc #/*{}\"'=$%\\", "é", "\t"]), max_size=8)
    comment = st.builds(
        lambda s, c, t: f"{s}{c}{t}",
        space,
        pick(["#", "//", "/*"], [], is_noisy=noisy),
        comment_text,
    )
    line_end = st.one_of(
        st.sampled_from(["\n", "\n", "\n\n", "\n  \n"]),
        st.builds(lambda c: c + "\n", comment),
        st.builds(lambda s: s + "\n", space),
        pick([" /* c */\n", " /* c */ ", "/* a\n b */\n"], ["\r\n", ""], is_noisy=noisy),
    )
    name = st.one_of(
        st.sampled_from(["a", "b", "host", "port", "enabled", "zone", "x_1", "dash-ed", "_u"]),
        st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_-]{0,6}\Z"),
        pick(
            ["migration", "email", "state"],
            ["in", "true", "null", "for", "for_each", "__is_block__", "9x"],
            is_noisy=noisy,
        ),
    )
    string_body = st.lists(
        pick(
            [
                *"abcdefghij z09.:/-_#{}[],=$%'",
                "é",
                "☃",
                "\t",
                "\\n",
                "\\t",
                "\\r",
                '\\"',
                "\\\\",
                "\\u00e9",
                "\\U0001F600",
                "$",
                "%",
                "\x00",
                "$$",
                "%%",
                "${LOCAL}",
                "${var.x_1}",
            ],
            [
                "\n",
                "\\ud800",
                "\\q",
                "\\u12",
                "${",
                "$${x}",
                "%{",
                "%%{y}",
                "\\",
                "${ a }",
                "${a.in}",
                "${for}",
                "${1}",
                "${a-b}",
                "${a.0}",
                "${true}",
                "${a}}",
            ],
            is_noisy=noisy,
        ),
        max_size=8,
    ).map("".join)
    quoted = string_body.map(lambda s: f'"{s}"')
    number = st.one_of(
        st.integers(-(10**20), 10**20).map(str),
        st.integers(-5, 100).map(str),
        st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: f"{f:.6f}"),
        pick(
            ["007", "-0", "-0.0", "0.5", "-12.25"],
            ["1.", ".5", "1e3", "1.5E-2", "0x10", "- 1", "1_0", "+1", "1e-05"],
            is_noisy=noisy,
        ),
    )
    scalar = st.one_of(
        quoted,
        number,
        st.sampled_from(["true", "false", "null"]),
        pick(
            ['"x"'],
            [
                "True",
                "var.x",
                "f(1)",
                "1 + 2",
                "<<EOF\nhi\nEOF\n",
                '"${var.x}"',
                "[for x in y: x]",
                "-true",
                "!false",
                "(1)",
            ],
            is_noisy=noisy,
        ),
    )

    def collections(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        gap = pick(
            ["", "", " ", "\n", "\n  ", " # c\n", " // c\n", "/* c */", "/* c\n */"],
            [","],
            is_noisy=noisy,
        )
        key = st.one_of(name, quoted)
        sep = pick(
            [" = ", "=", ": ", " : ", "\t= "], [" == ", " => ", "\n= ", "= \n"], is_noisy=noisy
        )
        after = pick(
            [",", ", ", ",\n", "\n", " # c\n", ", // c\n", "\n,"], ["", " ", ",,"], is_noisy=noisy
        )
        as_list = st.builds(
            lambda g, items, tail: "[" + g + "".join(v + e for v, e in items) + tail + "]",
            gap,
            st.lists(
                st.tuples(
                    inner, pick([", ", ",", ",\n", "\n, "], [" ", "", ",,", "\n"], is_noisy=noisy)
                ),
                max_size=4,
            ),
            gap,
        )
        as_object = st.builds(
            lambda g, items: "{" + g + "".join(k + s + v + e for k, s, v, e in items) + "}",
            gap,
            st.lists(st.tuples(key, sep, inner, after), max_size=3),
        )
        return st.one_of(as_list, as_object)

    value = st.recursive(scalar, collections, max_leaves=6)
    if values_only:
        return value

    def bodies(depth: int) -> st.SearchStrategy[str]:
        attribute = st.builds(lambda n, s, v: f"{n}{s}={s}{v}", name, space, value)
        if depth == 0:
            item = attribute
        else:
            label = st.one_of(name, quoted)
            block = st.builds(
                lambda n, labels, s, opener, body, close: (
                    f"{n}{''.join(' ' + x for x in labels)}{s}{{{opener}{body}{close}}}"
                ),
                name,
                st.lists(label, max_size=2),
                space,
                pick(["\n", "\n", "", " ", " # c\n"], ["\n\n{"], is_noisy=noisy),
                st.deferred(lambda: bodies(depth - 1)),
                pick(["", "  ", "\n"], [], is_noisy=noisy),
            )
            item = st.one_of(attribute, block)
        indented = st.builds(lambda s, i, e: s + i + e, space, item, line_end)
        return st.lists(indented, max_size=3).map("".join)

    # The migration block itself, with the seed's keys and plausible and implausible values.
    setting = st.one_of(
        st.tuples(
            st.sampled_from(["enabled", "dry_run", "auto_migrate", "include_shipped"]),
            st.sampled_from(["true", "false", '"true"', "1", "null"]),
        ),
        st.tuples(
            st.sampled_from(["timeout", "backup_retention", "confirm_within"]),
            st.sampled_from(['"30m"', '"1h30m"', '"500ms"', '"30x"', "30", '""', "null"]),
        ),
        st.tuples(
            st.just("max_rollback_attempts"),
            st.sampled_from(["3", "-1", "1.5", '"3"', "0", "99999999999999999999"]),
        ),
        st.tuples(st.just("strategy"), st.sampled_from(['"full"', '"yolo"', '"incremental"'])),
        st.tuples(
            st.sampled_from(["notification_channels", "trusted_keys"]),
            st.sampled_from(['["email"]', "[]", '["pager"]', '"email"', '["a", 1]']),
        ),
        st.tuples(
            st.sampled_from(["version_table", "directory", "journal", "bogus"]),
            st.sampled_from(['"x; drop"', '"v_t"', '"/data/j.db"', "1", '"a\\tb"']),
        ),
        st.tuples(
            st.sampled_from(["email", "state", "server", "slack"]),
            st.sampled_from(["3", '{ host = "h" }', "{ batch_size = 5 }", "[]", "{}"]),
        ),
        st.tuples(name, value),
    )
    nested = st.builds(
        lambda n, keys, s: f"  {n}{s}{{\n" + "".join(f"    {k} = {v}\n" for k, v in keys) + "  }\n",
        st.sampled_from(["email", "state", "server", "slack", "bogus"]),
        st.lists(
            st.tuples(
                st.sampled_from(
                    [
                        "host",
                        "port",
                        "to",
                        "batch_size",
                        "resume_on_crash",
                        "listen",
                        "webhook_url",
                        "hots",
                    ]
                ),
                st.sampled_from(['"h"', "25", "0", '["a"]', "true", '"x"', "1.0", "70000"]),
            ),
            max_size=3,
        ),
        space,
    )
    migration_block = st.builds(
        lambda opener, lines, blocks, close: (
            "migration {"
            + opener
            + "".join(f"  {k} = {v}{e}" for (k, v), e in lines)
            + "".join(blocks)
            + close
        ),
        pick(["\n", "\n\n", " # m\n"], [""], is_noisy=noisy),
        st.lists(st.tuples(setting, line_end), max_size=5),
        st.lists(nested, max_size=2),
        pick(
            ["}\n", "}", "}\n\n", "} # end\n"], ["}}\n", "", "}\nmigration {\n}\n"], is_noisy=noisy
        ),
    )
    return st.builds(
        lambda lead, before, mig, after: lead + before + mig + after,
        pick(
            ["", "\n", "# flywall.hcl\n", 'schema_version = "1.0"\n\n'], ["\ufeff"], is_noisy=noisy
        ),
        bodies(2),
        st.one_of(migration_block, migration_block, st.just("")),
        bodies(1),
    )


document = st.one_of(dialect(noisy=False), dialect(noisy=True))


def mutated(text: str, data: st.DataObject) -> str:
    """Break the file in a small way: drop, insert or swap characters."""
    for _ in range(data.draw(st.integers(0, 2))):
        at = data.draw(st.integers(0, len(text)))
        what = data.draw(st.sampled_from(["drop", "insert"]))
        if what == "drop":
            text = text[:at] + text[at + 1 :]
        else:
            text = (
                text[:at] + data.draw(st.sampled_from([*'{}[]"=,\n #\\$', "\r", "/*"])) + text[at:]
            )
    return text


PLAIN_EXAMPLES = [
    "",
    "migration {\n  include_shipped = false\n}\n",
    'schema_version = "1.0"\n\napi {\n  enabled = true\n}\n',
    'zone "lan" {\n  interfaces = ["eth1", "eth2"]\n  match { interface = "eth1" }\n}\n'  # noqa: ISC004
    'migration {\n  timeout = "1h30m" # long\n  email {\n    to = ["a@b", "c@d"]\n  }\n}\n',
    'migration {\n  a = "\\n\\r\\t\\"\\\\\\u00e9\\U0001F600 $ % $$x %%y"\n}\n',
    'migration {\n  a = {\n    b = 1, // c\n    "c d" = [1, -2.5, true, null]\n  }\n}\n',
    # what `flywall migration demo` writes: `/* */` comments, a "${...}" outside the block
    DEMO_CONFIG,
]


@pytest.mark.parametrize("text", PLAIN_EXAMPLES)
def test_plain_files_are_read_exactly_as_hcl2_reads_them(text):
    got = read_plain(text)

    assert got is not None  # these are the common shape: the fast reader must take them
    assert typed(got) == typed(by_hcl2(text))


@pytest.mark.parametrize(
    "text",
    [
        'migration {\n  a = "${var.x}"\n}\n',
        "migration {\n  a = <<EOF\nx\nEOF\n}\n",
        "migration {\n  a = 1e3\n}\n",
        "migration {\n  a = 1\n  a = 2\n}\n",
        "migration {\n  a = /* c */ 1\n}\n",
        "migration {\n  a = b\n}\n",
        "migration = 3\n",
        'migration "x" {\n}\n',
        "migration {\n  a = 1\r\n}\r\n",
        'migration {\n  a = "\\q"\n}\n',
        'migration {\n  a = "\\ud800"\n}\n',
        "migration {\n  a = 1\n",
        "migration {\n  a = = 1\n}\n",
    ],
)
def test_anything_beyond_plain_literals_is_declined(text):
    assert read_plain(text) is None


@settings(max_examples=examples(150, 500), deadline=None)
@given(
    value=st.one_of(dialect(noisy=False, values_only=True), dialect(noisy=True, values_only=True)),
    inline=st.booleans(),
)
def test_values_in_the_migration_block_are_read_as_hcl2_reads_them(value, inline):
    text = f"migration {{ a = {value} }}\n" if inline else f"migration {{\n  a = {value}\n}}\n"
    got = read_plain(text)
    if got is None:
        return
    assert typed(got) == typed(by_hcl2(text))


@settings(
    max_examples=examples(300, 1500), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(text=document, data=st.data())
@example(text="x {\n  y = {a = 1 b = 2}\n}\n", data=None)
def test_the_fast_reader_declines_or_agrees_with_hcl2(text, data):
    if data is not None and data.draw(st.booleans()):
        text = mutated(text, data)
    got = read_plain(text)
    if got is None:
        return
    expected = by_hcl2(text)
    assert expected is not FAILED, "plainhcl read a file hcl2 rejects"
    assert typed(got) == typed(expected)


def outcome(root: Path) -> object:
    """load_settings' answer as comparable data: the settings, or the error's text."""
    try:
        s = load_settings(root)
    except (SettingsError, ConfigParseError) as e:
        return (type(e).__name__, str(e))
    return typed({k: repr(getattr(s, k)) for k in s.__struct_fields__ if k != "config_path"})


@settings(
    max_examples=examples(100, 300),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(text=document)
def test_load_settings_gives_the_same_settings_or_error_text_by_either_reader(tmp_path, text):
    if read_plain(text) is None:
        return
    config = tmp_path / "etc/flywall/flywall.hcl"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text, encoding="utf-8")
    fast = outcome(tmp_path)
    # A leading function call: plainhcl declines, so python-hcl2 reads the same settings.
    config.write_text("__by_hcl2__ = max(1, 2)\n" + text, encoding="utf-8")
    slow = outcome(tmp_path)

    assert fast == slow
