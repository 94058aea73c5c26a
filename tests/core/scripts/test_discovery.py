"""Discovery: finding migration files and describing them without executing them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flywall.migrations
from flywall.core.model.errors import DiscoveryError
from flywall.core.scripts.discovery import (
    Migration,
    checksum,
    discover,
    from_source,
    load_module,
    shipped_directory,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    Write = Callable[..., Path]

PYTHON_MIGRATION = '''\
"""Add services section to zone configuration.

The long explanation is not part of the description.
"""
component = "config"
schema_version = "1.2.0"
depends_on = ["202312010002", "202312010003"]


def up(ctx, config):
    config["services"] = []


def down(ctx, config):
    del config["services"]


def verify(ctx, target):
    return True
'''

SQL_MIGRATION = """\
-- schema_version: 3.1.0
-- depends_on: 202312010002, 202312010003
--
-- Create the sessions table.
-- A second comment line is not the description.

-- migrate:up
CREATE TABLE sessions (id INTEGER PRIMARY KEY);

  -- migrate:down  \n\
DROP TABLE sessions;
-- migrate:verify
SELECT count(*) FROM sessions;
"""

MINIMAL_PYTHON = 'component = "state"\n\ndef up(ctx, state):\n    pass\n'


@pytest.fixture
def write(tmp_path: Path) -> Write:
    """Write migration files from inline text (or bytes) into a directory under tmp_path."""

    def write(files: dict[str, str | bytes], directory: str = "migrations") -> Path:
        folder = tmp_path / directory
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            (folder / name).write_bytes(data)
        return folder

    return write


def test_a_python_migration_is_described_from_its_syntax_tree(write: Write) -> None:
    folder = write({"202312010004_add_zone_services.py": PYTHON_MIGRATION})
    [migration] = discover([folder])
    assert migration.version == "202312010004"
    assert migration.slug == "add_zone_services"
    assert migration.name == "202312010004_add_zone_services"
    assert migration.path == str(folder / "202312010004_add_zone_services.py")
    assert migration.kind == "python"
    assert migration.component == "config"
    assert migration.description == "Add services section to zone configuration."
    assert migration.schema_version == "1.2.0"
    assert migration.depends_on == ("202312010002", "202312010003")
    assert migration.has_down
    assert migration.has_verify
    assert migration.up_sql is None
    assert migration.source == PYTHON_MIGRATION.encode()
    assert migration.checksum == blake3.blake3(PYTHON_MIGRATION.encode()).hexdigest()


def test_a_python_migration_without_docstring_down_or_verify_has_empty_defaults() -> None:
    migration = from_source("m/202312010001_minimal.py", MINIMAL_PYTHON.encode())
    assert migration.description == ""
    assert migration.schema_version is None
    assert migration.depends_on == ()
    assert not migration.has_down
    assert not migration.has_verify


def test_discovering_does_not_execute_the_migration(write: Write) -> None:
    source = 'import sys\nsys.exit("executed")\ncomponent = "api"\ndef up(ctx, api): pass\n'
    [migration] = discover([write({"202312010001_side_effect.py": source})])
    assert migration.component == "api"


def test_a_sql_migration_is_split_into_sections_with_header_metadata(write: Write) -> None:
    folder = write({"202312010005_create_sessions.sql": SQL_MIGRATION})
    [migration] = discover([folder])
    assert migration.kind == "sql"
    assert migration.component == "database"
    assert migration.description == "Create the sessions table."
    assert migration.schema_version == "3.1.0"
    assert migration.depends_on == ("202312010002", "202312010003")
    assert migration.up_sql == "CREATE TABLE sessions (id INTEGER PRIMARY KEY);"
    assert migration.down_sql == "DROP TABLE sessions;"
    assert migration.verify_sql == "SELECT count(*) FROM sessions;"
    assert migration.has_down
    assert migration.has_verify


def test_a_sql_migration_with_only_an_up_section_is_irreversible() -> None:
    migration = from_source("202312010001_up_only.sql", b"-- migrate:up\nSELECT 1;\n")
    assert migration.description == ""
    assert migration.schema_version is None
    assert migration.depends_on == ()
    assert (migration.has_down, migration.down_sql) == (False, None)
    assert (migration.has_verify, migration.verify_sql) == (False, None)


def test_files_that_are_not_migrations_are_ignored(write: Write) -> None:
    folder = write(
        {
            "__init__.py": "",
            "_helpers.py": "syntax error here(",
            ".202312010009_hidden.py": "",
            "README.md": "# notes",
            "202312010008_notes.txt": "",
            "202312010001_real.py": MINIMAL_PYTHON,
        }
    )
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "202312010001_real.cpython-311.pyc").write_bytes(b"\0")
    (folder / "202312010007_a_directory.py").mkdir()
    assert [m.name for m in discover([folder])] == ["202312010001_real"]


def test_a_missing_directory_holds_no_migrations(tmp_path: Path) -> None:
    assert discover([tmp_path / "not-yet-created"]) == []


def test_migrations_from_several_directories_are_ordered_by_version(write: Write) -> None:
    first = write({"202312010003_c.py": MINIMAL_PYTHON, "2023120100010_e.py": MINIMAL_PYTHON}, "a")
    second = write({"202312010001_a.sql": "-- migrate:up\nSELECT 1;\n"}, "b")
    found = discover([first, second])
    assert [m.version for m in found] == ["202312010001", "202312010003", "2023120100010"]


@pytest.mark.parametrize(
    "raw",
    [b"line one\nline two\n", b"line one\r\nline two\r\n", b"\xef\xbb\xbfline one\r\nline two\r\n"],
    ids=["LF", "CRLF", "BOM+CRLF"],
)
def test_line_endings_and_a_bom_do_not_change_the_checksum(raw: bytes) -> None:
    normalized, digest = checksum(raw)
    assert normalized == b"line one\nline two\n"
    assert digest == blake3.blake3(b"line one\nline two\n").hexdigest()


def test_a_real_edit_changes_the_checksum() -> None:
    assert checksum(b"line one\nline two\n")[1] != checksum(b"line one\nline 2\n")[1]


def test_a_lone_carriage_return_is_kept() -> None:
    assert checksum(b"a\rb\r\n")[0] == b"a\rb\n"


def test_a_migration_carries_its_normalized_source() -> None:
    raw = b"\xef\xbb\xbf" + MINIMAL_PYTHON.replace("\n", "\r\n").encode()
    migration = from_source("202312010001_crlf.py", raw)
    assert migration.source == MINIMAL_PYTHON.encode()
    assert migration.checksum == checksum(MINIMAL_PYTHON.encode())[1]


UP = "def up(ctx, x): pass\n"


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "20231201_short.py",
            UP,
            "expected NNNNNNNNNNNN_slug.py, .sql or .hcl, version of at least 12 digits",
        ),
        ("202312010001_Bad_Slug.sql", "-- migrate:up\nSELECT 1;", "expected NNNNNNNNNNNN_slug.py"),
        ("add_zones.py", UP, "expected NNNNNNNNNNNN_slug.py"),
        ("202312010001_broken.py", 'component = "api"\ndef up(ctx:\n', ":2:7: syntax error: "),
        ("202312010001_nul.py", 'component = "api"\0\n' + UP, "syntax error"),
        ("202312010001_no_up.py", 'component = "api"\ndef down(ctx, x): pass\n', "def up"),
        ("202312010001_assigned_up.py", 'component = "api"\nup = print\n', "def up"),
        (
            "202312010001_unknown.py",
            'component = "network"\n' + UP,
            "one of database, state, config, api, got 'network'",
        ),
        ("202312010001_no_component.py", UP, "one of database, state, config, api, got None"),
        (
            "202312010001_computed.py",
            'component = "a" + "pi"\n' + UP,
            "component must be a literal",
        ),
        (
            "202312010001_dyn_deps.py",
            'component = "api"\ndepends_on = list(X)\n' + UP,
            "depends_on must be a literal",
        ),
        (
            "202312010001_bad_deps.py",
            'component = "api"\ndepends_on = ["2023"]\n' + UP,
            "depends_on must list versions of 12+ digits",
        ),
        (
            "202312010001_str_deps.py",
            'component = "api"\ndepends_on = "202312010002"\n' + UP,
            "depends_on must list",
        ),
        (
            "202312010001_int_schema.py",
            'component = "api"\nschema_version = 2\n' + UP,
            "schema_version must be a string",
        ),
        (
            "202312010001_latin1.py",
            b'"""Caf\xe9."""\ncomponent = "api"\n' + UP.encode(),
            "is not UTF-8",
        ),
        ("202312010001_latin1.sql", b"-- Caf\xe9\n-- migrate:up\nSELECT 1;", "is not UTF-8"),
        ("202312010001_no_up.sql", "-- migrate:down\nDROP TABLE t;", "no '-- migrate:up' section"),
        (
            "202312010001_empty_up.sql",
            "-- migrate:up\n\n-- migrate:down\nDROP TABLE t;",
            "or it is empty",
        ),
        (
            "202312010001_twice.sql",
            "-- migrate:up\nSELECT 1;\n-- migrate:up\nSELECT 2;",
            "line 3: '-- migrate:up' repeated",
        ),
        ("202312010001_upper.sql", "-- MIGRATE:UP\nSELECT 1;", "no '-- migrate:up' section"),
        (
            "202312010001_stray.sql",
            "-- About.\nSELECT 1;\n-- migrate:up\nSELECT 2;",
            "line 2: SQL before the first marker is never run",
        ),
        (
            "202312010001_bad_header.sql",
            "-- depends_on: 1, 2\n-- migrate:up\nSELECT 1;",
            "depends_on must list versions",
        ),
    ],
)
def test_an_invalid_migration_file_is_an_error_naming_the_file(
    write: Write, name: str, content: str | bytes, expected: str
) -> None:
    folder = write({name: content})
    with pytest.raises(DiscoveryError) as caught:
        discover([folder])
    path = str(folder / name)
    assert caught.value.path == path
    assert str(caught.value).startswith(path + ":")
    assert expected in str(caught.value)


def test_a_syntax_error_names_file_line_and_column(write: Write) -> None:
    folder = write({"202312010001_broken.py": 'component = "api"\n\ndef up(:\n'})
    with pytest.raises(DiscoveryError, match=r"202312010001_broken\.py:3:8: syntax error: "):
        discover([folder])


def test_a_version_used_twice_in_one_directory_names_both_files(write: Write) -> None:
    folder = write(
        {"202312010001_a.py": MINIMAL_PYTHON, "202312010001_b.sql": "-- migrate:up\nSELECT 1;"}
    )
    with pytest.raises(DiscoveryError) as caught:
        discover([folder])
    assert str(folder / "202312010001_a.py") in str(caught.value)
    assert str(folder / "202312010001_b.sql") in str(caught.value)


def test_a_version_used_in_two_directories_names_both_files(write: Write) -> None:
    shipped = write({"202312010001_shipped.py": MINIMAL_PYTHON}, "shipped")
    local = write({"202312010001_local.py": MINIMAL_PYTHON}, "local")
    with pytest.raises(DiscoveryError, match="version 202312010001 is also used by") as caught:
        discover([shipped, local])
    assert str(shipped / "202312010001_shipped.py") in str(caught.value)
    assert str(local / "202312010001_local.py") in str(caught.value)


def test_a_thousand_migrations_are_discovered(write: Write) -> None:
    files: dict[str, str | bytes] = {}
    for n in range(1000):
        version = 202300000000 + n
        if n % 2:
            body = f'"""Step {n}."""\ncomponent = "state"\ndepends_on = ["{version - 1}"]\n{UP}'
            files[f"{version}_step_{n}.py"] = body
        else:
            files[f"{version}_step_{n}.sql"] = f"-- Step {n}.\n-- migrate:up\nSELECT {n};\n"
    found = discover([write(files)])
    assert len(found) == 1000
    assert [m.version for m in found] == [str(202300000000 + n) for n in range(1000)]
    assert found[999].description == "Step 999."


def test_load_module_runs_a_migration_whose_file_was_deleted(write: Write) -> None:
    folder = write({"202312010004_add_zone_services.py": PYTHON_MIGRATION})
    [migration] = discover([folder])
    (folder / "202312010004_add_zone_services.py").unlink()
    module = load_module(migration)
    config: dict[str, list[str]] = {}
    module.up(None, config)
    assert config == {"services": []}
    assert module.__name__ == "flywall_migration_202312010004"
    assert module.__file__ == migration.path
    assert module.__name__ not in sys.modules


def test_load_module_supports_dataclasses_with_postponed_annotations() -> None:
    """Dataclasses look their module up in sys.modules while the class is created."""
    source = (
        "from __future__ import annotations\nimport dataclasses\n"
        'component = "state"\n@dataclasses.dataclass\nclass Row:\n    id: int\n'
        "def up(ctx, state):\n    return Row(1)\n"
    )
    module = load_module(from_source("202312010001_rows.py", source.encode()))
    assert module.up(None, None).id == 1
    assert "flywall_migration_202312010001" not in sys.modules


def test_load_module_reports_an_error_in_the_module_body_with_the_file() -> None:
    migration = from_source("gone/202312010001_boom.py", (MINIMAL_PYTHON + "1 / 0\n").encode())
    with pytest.raises(DiscoveryError, match=r"^gone/202312010001_boom\.py: .*ZeroDivisionError"):
        load_module(migration)


def test_load_module_refuses_a_sql_migration() -> None:
    migration = from_source("202312010001_sql.sql", b"-- migrate:up\nSELECT 1;")
    with pytest.raises(ValueError, match="SQL migration"):
        load_module(migration)


def test_shipped_directory_is_the_flywall_migrations_package() -> None:
    assert shipped_directory() == Path(flywall.migrations.__file__).parent
    assert shipped_directory().resolve() == (Path(__file__).parents[3] / "migrations").resolve()


def test_a_migration_is_a_frozen_value() -> None:
    migration = from_source("202312010001_a.py", MINIMAL_PYTHON.encode())
    with pytest.raises(AttributeError):
        migration.slug = "b"  # type: ignore[misc]
    assert isinstance(migration, Migration)
    assert migration == from_source("202312010001_a.py", MINIMAL_PYTHON.encode())


def _cache_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let files written a moment ago be cached (they are "racy" otherwise)."""
    from flywall.core.scripts import discovery

    monkeypatch.setattr(discovery, "RACY_NS", -(10**18))


def _never_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    from flywall.core.scripts import discovery

    def refuse(path, raw):
        raise AssertionError(f"{path} was read, not taken from the cache")

    monkeypatch.setattr(discovery, "from_source", refuse)


def test_the_cache_is_used_only_while_every_stat_field_matches(tmp_path, monkeypatch):
    """Trusted like git's index; an edit, even one that restores size and mtime, is re-read."""
    import os

    _cache_everything(monkeypatch)
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "202401010001_a.sql"
    path.write_text("-- One.\n-- migrate:up\nSELECT 1;\n")
    cache = tmp_path / "cache.msgpack"
    first = discover([folder], cache)
    assert cache.exists()
    with monkeypatch.context() as m:
        _never_parse(m)
        assert discover([folder], cache) == first

    stat = path.stat()
    path.write_text("-- Two.\n-- migrate:up\nSELECT 2;\n")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime
    assert path.stat().st_size == stat.st_size
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert discover([folder], cache)[0].description == "Two."  # ctime gave it away
    assert discover([folder], cache)[0].checksum == discover([folder])[0].checksum


def test_a_file_changed_just_now_is_never_cached(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "202401010001_a.sql").write_text("-- One.\n-- migrate:up\nSELECT 1;\n")
    cache = tmp_path / "cache.msgpack"
    assert discover([folder], cache)[0].description == "One."
    from flywall.core.scripts.discovery import _load_cache

    assert _load_cache(cache, None) == {}


def test_an_altered_or_foreign_cache_is_ignored(tmp_path, monkeypatch):
    """The cache carries a (keyed) digest: forged entries or another key's cache are not read."""
    import msgspec

    from flywall.core.scripts.discovery import _load_cache

    _cache_everything(monkeypatch)
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "202401010001_a.sql"
    path.write_text("-- One.\n-- migrate:up\nSELECT 1;\n")
    cache = tmp_path / "cache.msgpack"
    key = bytes(range(32))
    discover([folder], cache, key=key)
    assert _load_cache(cache, key) != {}
    assert _load_cache(cache, None) == {}
    assert _load_cache(cache, bytes(32)) == {}

    # forge: the cached migration says "Forged." for the file's real stat fields
    data = cache.read_bytes()
    entries = _load_cache(cache, key)
    stamp, m = entries[str(path)]
    forged = {str(path): (stamp, msgspec.structs.replace(m, description="Forged."))}
    cache.write_bytes(data[:64] + msgspec.msgpack.encode(forged))  # version, digest, body
    assert _load_cache(cache, key) == {}
    assert discover([folder], cache, key=key)[0].description == "One."
    cache.write_bytes(b"garbage")
    assert discover([folder], cache, key=key)[0].description == "One."


def test_the_cache_gives_the_same_answer_as_reading(tmp_path, monkeypatch):
    """Across adds, removals, renames and edits, cached and uncached discovery agree."""
    _cache_everything(monkeypatch)
    folder = tmp_path / "m"
    folder.mkdir()
    cache = tmp_path / "cache.msgpack"
    steps = [
        ("202401010001_a.sql", "-- A.\n-- migrate:up\nSELECT 1;\n"),
        ("202401010002_b.py", MINIMAL_PYTHON),
        ("202401010001_a.sql", "-- A2.\n-- migrate:up\nSELECT 1;\n"),
        ("202401010003_c.sql", "-- C.\n-- migrate:up\nSELECT 3;\n"),
    ]
    for name, text in steps:
        (folder / name).write_text(text)
        assert discover([folder], cache) == discover([folder])
    (folder / "202401010002_b.py").rename(folder / "202401010004_b.py")
    assert discover([folder], cache) == discover([folder])
    (folder / "202401010003_c.sql").unlink()
    assert discover([folder], cache) == discover([folder])


@pytest.mark.parametrize("writer", ["migrate", "rollback"])
def test_writers_trusting_the_cache_still_refuse_an_edited_applied_migration(
    appliance, monkeypatch, writer
):
    """The digest cache never hides an edit: same size, mtime put back, still refused."""
    import os

    from conftest import create_table_migration

    from flywall.core import commands
    from flywall.core.model import errors

    _cache_everything(monkeypatch)
    path = create_table_migration(appliance, "202401010001", "hosts")
    commands.migrate(appliance.workspace())
    commands.status(appliance.workspace())  # the cache now holds the applied file
    cache = appliance.root / "var/cache/flywall/migrations.msgpack"
    assert cache.exists()
    create_table_migration(appliance, "202401010002", "zones")  # something to do

    stat = path.stat()
    edited = path.read_text().replace("hosts (id", "hostz (id")
    assert len(edited) == len(path.read_text())
    path.write_text(edited)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    run = {"migrate": commands.migrate, "rollback": lambda ws: commands.rollback(ws, steps=1)}
    with pytest.raises(errors.ChecksumMismatch):
        run[writer](appliance.workspace())


CACHE_POINTS = ["discovery-cache-before-replace", "discovery-cache-after-replace"]
CACHE_COMMANDS = [("status",), ("migrate",)]


@pytest.fixture(scope="module")
def aged_boxes(tmp_path_factory):
    """One two-migration box per (command, point) below, all aged past RACY_NS by one sleep.

    The files must be older than RACY_NS to be cached, and ctime cannot be back-dated, so a
    copy made later would not do: each test gets a box of its own, built before the sleep.
    """
    import time

    from conftest import Appliance, create_table_migration

    root = tmp_path_factory.mktemp("aged")
    boxes = {}
    for command in CACHE_COMMANDS:
        for point in CACHE_POINTS:
            app = Appliance(root / f"{command[0]}-{point}")
            app.configure()
            app.migrations_dir.mkdir(parents=True)
            create_table_migration(app, "202401010001", "hosts")
            create_table_migration(app, "202401010002", "zones")
            boxes[command, point] = app
    time.sleep(3.2)  # older than RACY_NS: the files are cached (ctime cannot be back-dated)
    return boxes


@pytest.mark.parametrize("point", CACHE_POINTS)
@pytest.mark.parametrize("command", CACHE_COMMANDS)
def test_a_kill_while_writing_the_cache_costs_nothing_but_the_cache(
    aged_boxes, tmp_path, point, command
):
    """Killed at either side of the cache's rename: the rerun reads the files and is right."""
    import json
    import shutil

    from conftest import Appliance

    appliance = aged_boxes[command, point]
    reference = Appliance(tmp_path / "reference")
    shutil.copytree(appliance.root, reference.root)
    assert reference.cli(*command).returncode == 0

    cut = appliance.cli(*command, env={"FLYWALL_CRASH_AT": point})
    assert cut.returncode == -9, cut.stderr
    cache = appliance.root / "var/cache/flywall/migrations.msgpack"
    assert cache.exists() == (point == "discovery-cache-after-replace")
    path = appliance.migrations_dir / "202401010001_create_hosts.sql"
    path.write_text(path.read_text().replace("hosts (id", "hostz (id"))  # an edit afterwards
    rerun = appliance.cli(*command)
    assert rerun.returncode == 0, rerun.stderr
    listed = appliance.cli("list", "--json")
    expected = reference.cli("list", "--json")
    assert listed.returncode == expected.returncode == 0
    rows = {r["version"]: r for r in json.loads(listed.stdout)}
    assert rows["202401010001"]["checksum"] == checksum(path.read_bytes())[1]
    assert rows["202401010002"] == {
        **next(r for r in json.loads(expected.stdout) if r["version"] == "202401010002"),
        "applied_at": rows["202401010002"]["applied_at"],
        "file": rows["202401010002"]["file"],
    }


@given(
    content=st.binary(max_size=200_000),
    stat_size=st.integers(min_value=0, max_value=300_000),
)
@settings(max_examples=60, deadline=None)
def test_a_file_is_read_whole_whatever_size_its_stat_gave(
    tmp_path_factory: pytest.TempPathFactory, content: bytes, stat_size: int
) -> None:
    """The cold read is sized by the stat, but a file that grew or shrank since gives every byte."""
    from flywall.core.scripts import discovery

    path = tmp_path_factory.mktemp("read") / "202401010001_a.sql"
    path.write_bytes(content)
    assert discovery._read(str(path), stat_size) == content


def test_a_file_that_grew_after_its_stat_is_described_from_all_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """discover stats, then reads: bytes appended in between are part of what it describes."""
    import os

    from flywall.core.scripts import discovery

    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "202401010001_a.sql"
    path.write_text("-- migrate:up\nSELECT 1;\n")
    real_read = discovery._read

    def grow_then_read(name: str, size: int) -> bytes:
        with path.open("a") as f:
            f.write("-- more of the up section\n" * 5000)
        assert os.stat(name).st_size > size  # noqa: PTH116
        return real_read(name, size)

    monkeypatch.setattr(discovery, "_read", grow_then_read)
    (found,) = discover([folder])
    assert found.source == path.read_bytes()
    assert found.checksum == checksum(path.read_bytes())[1]


@pytest.mark.parametrize(
    "path",
    [
        "202401010001_a.sql",
        "m/202401010001_a.sql",
        "m//202401010001_a.sql",
        "./m/./202401010001_a.sql",
        "var/lib/flywall/migration-journal.db#202401010001_a.sql",
        "m/202401010001_a.sql/",
        "m/202401010001_a.sql/.",
        "m/..",
        "",
    ],
)
def test_version_and_slug_come_from_the_name_path_gives(path: str) -> None:
    """from_source takes the text after the last "/" where Path(path).name would agree."""
    raw = b"-- migrate:up\nSELECT 1;\n"
    name = Path(path).name
    if name == "202401010001_a.sql":
        migration = from_source(path, raw)
        assert (migration.version, migration.slug, migration.path) == ("202401010001", "a", path)
    else:
        with pytest.raises(DiscoveryError, match="expected NNNNNNNNNNNN_slug"):
            from_source(path, raw)


def _reference_parse_sql(path: str, text: str) -> dict[str, object]:
    """_parse_sql as it was before its fast paths: every line stripped and looked up."""
    import re

    from flywall.core.scripts import discovery

    sections: dict[str, list[str]] = {}
    preamble: list[str] = []
    current = preamble
    for number, line in enumerate(text.split("\n"), start=1):
        section = discovery._SQL_MARKERS.get(line.strip())
        if section is None:
            current.append(line)
        elif section in sections:
            raise DiscoveryError(path, f"line {number}: '-- migrate:{section}' repeated")
        else:
            current = sections[section] = []
    body = {section: "\n".join(lines).strip() or None for section, lines in sections.items()}
    if body.get("up") is None:
        raise DiscoveryError(path, "has no '-- migrate:up' section, or it is empty")
    headers: dict[str, str] = {}
    description = ""
    for number, line in enumerate(preamble, start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("--"):
            raise DiscoveryError(path, f"line {number}: SQL before the first marker is never run")
        comment = stripped.removeprefix("--").strip()
        header = re.match(r"^(schema_version|depends_on):(.*)$", comment)
        if header is not None:
            headers[header[1]] = header[2].strip()
        elif comment and not description:
            description = comment
    depends_on = [v.strip() for v in headers.get("depends_on", "").split(",") if v.strip()]
    return {
        "component": "database",
        "kind": "sql",
        "description": description,
        "schema_version": headers.get("schema_version") or None,
        "depends_on": discovery._versions(path, depends_on),
        "has_down": body.get("down") is not None,
        "has_verify": body.get("verify") is not None,
        "up_sql": body["up"],
        "down_sql": body.get("down"),
        "verify_sql": body.get("verify"),
    }


_SQL_LINES = st.sampled_from(
    [
        "-- migrate:up",
        "-- migrate:down",
        "-- migrate:verify",
        "  -- migrate:up \t",
        "\u2003-- migrate:down\x1c",
        "-- migrate:sideways",
        "--  migrate:up",
        "x -- migrate:up",
        "-- migrate:up;",
        "-- schema_version: 1.2",
        "-- depends_on: 202401010001, 202401010002",
        "-- depends_on: 1",
        "-- A description.",
        "--",
        "",
        "   ",
        "\t",
        "SELECT 1;",
        "CREATE TABLE t(a);",
    ]
)


@given(lines=st.lists(st.one_of(_SQL_LINES, st.text(max_size=12)), max_size=12))
@settings(max_examples=400, deadline=None)
def test_the_sql_parser_answers_as_the_plain_line_by_line_one(lines: list[str]) -> None:
    """Same sections, metadata and errors as stripping and looking up every line."""
    from flywall.core.scripts import discovery

    text = "\n".join(lines)
    try:
        expected: object = _reference_parse_sql("p.sql", text)
    except DiscoveryError as e:
        expected = ("error", str(e))
    try:
        got: object = discovery._parse_sql("p.sql", text)
    except DiscoveryError as e:
        got = ("error", str(e))
    assert got == expected
