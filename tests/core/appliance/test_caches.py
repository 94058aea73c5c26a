"""The one cache helper: versions that follow the code, seals that reject what they must.

The projection snapshot is the cache whose staleness would be wrong rather than slow: a
release that changes the fold must not serve a projection the old fold computed.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import msgspec
import pytest
from conftest import create_table_migration

from flywall.core.appliance.caches import Cache, sources_digest
from flywall.core.model.projection import MigrationRecord, Projection
from flywall.core.runtime import snapshot
from flywall.core.runtime.engine import Engine

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Appliance

V1 = "202401010001"
CORE = str(snapshot.__file__).removesuffix("runtime/snapshot.py")


def fold_unchanged_since_review(core: str = CORE) -> str | None:
    """None if the fold's code is the one SNAPSHOT_FORMAT was set for; else what to do."""
    digest = sources_digest(snapshot.FOLD, core)
    if digest == snapshot.FOLD_DIGEST:
        return None
    return (
        f"the projection fold ({', '.join(snapshot.FOLD)}) changed: if a fold of the same "
        "events can now give another projection, bump SNAPSHOT_FORMAT in "
        f'core/runtime/snapshot.py; either way set FOLD_DIGEST = "{digest}" there'
    )


def test_the_fold_does_not_change_without_a_snapshot_format_review() -> None:
    problem = fold_unchanged_since_review()
    assert problem is None, problem


def test_an_edit_to_the_fold_is_caught(tmp_path: Path) -> None:
    """Negative control: one comment added to a copy of projection.py is a new digest."""
    for source in snapshot.FOLD:
        (tmp_path / source).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(CORE + source, tmp_path / source)
    assert fold_unchanged_since_review(str(tmp_path)) is None
    with (tmp_path / "model/projection.py").open("a") as f:
        f.write("# an edit\n")
    assert "bump SNAPSHOT_FORMAT" in (fold_unchanged_since_review(str(tmp_path)) or "")


def test_the_version_follows_the_format_and_the_code() -> None:
    here = Cache("projection snapshot", snapshot.SNAPSHOT_FORMAT, snapshot.FOLD)
    assert here.version() == snapshot.SNAPSHOT.version()
    bumped = Cache("projection snapshot", snapshot.SNAPSHOT_FORMAT + 1, snapshot.FOLD)
    other_code = Cache("projection snapshot", snapshot.SNAPSHOT_FORMAT, snapshot.FOLD[:2])
    assert len({here.version(), bumped.version(), other_code.version()}) == 3


def test_a_seal_rejects_another_version_key_or_byte() -> None:
    cache, key = Cache("test", 1), bytes(range(32))
    sealed = cache.seal(b"body", key)
    assert cache.unseal(sealed, key) == b"body"
    assert cache.unseal(sealed) is None  # a MAC is not a plain digest
    assert cache.unseal(sealed, bytes(32)) is None  # another device key
    assert Cache("test", 2).unseal(sealed, key) is None
    assert cache.unseal(sealed[:-1] + b"x", key) is None
    assert cache.unseal(b"", key) is None
    assert Cache("test", 1).unseal(cache.seal(b"plain")) == b"plain"


def _bogus_snapshot(live: Projection, cache: Cache) -> bytes:
    """A snapshot at the live head whose migration says something the journal never did."""
    wrong = msgspec.structs.replace(
        live, migrations={V1: MigrationRecord(version=V1, state="failed")}
    )
    return cache.seal(msgspec.msgpack.encode(wrong))


def _load_with(appliance: Appliance, body: bytes) -> Projection:
    with appliance.workspace().read_journal() as journal:
        journal.connection.execute("UPDATE snapshots SET body = ?", (body,))
        return snapshot.load(journal)


def test_a_snapshot_written_under_another_version_is_replayed_over(appliance: Appliance) -> None:
    """A snapshot another fold computed (a format bump ago) is not served: the events are."""
    create_table_migration(appliance, V1, "alpha")
    with Engine(appliance.workspace(), "migrate") as engine:
        engine.migrate()
        live = engine.state
    assert live.migrations[V1].state == "applied"
    older = Cache("projection snapshot", snapshot.SNAPSHOT_FORMAT - 1, snapshot.FOLD)
    assert _load_with(appliance, _bogus_snapshot(live, older)) == live
    # Negative control: the same bogus snapshot under the current version is believed.
    served = _load_with(appliance, _bogus_snapshot(live, snapshot.SNAPSHOT))
    assert served.migrations[V1].state == "failed"


def test_a_snapshot_from_before_versions_is_replayed_over(appliance: Appliance) -> None:
    """A release before the helper stored bare msgpack: not sealed, so not a snapshot."""
    create_table_migration(appliance, V1, "alpha")
    with Engine(appliance.workspace(), "migrate") as engine:
        engine.migrate()
        live = engine.state
    wrong = msgspec.structs.replace(
        live, migrations={V1: MigrationRecord(version=V1, state="failed")}
    )
    assert _load_with(appliance, msgspec.msgpack.encode(wrong)) == live


def test_a_discovery_cache_of_another_version_is_not_read(tmp_path: Path, monkeypatch) -> None:
    """Entries another discovery code wrote are read afresh, even with a valid digest."""
    from flywall.core.scripts import discovery

    monkeypatch.setattr(discovery, "RACY_NS", -(10**18))  # cache files written just now
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / f"{V1}_one.sql").write_text("-- One.\n-- migrate:up\nSELECT 1;\n")
    cache, key = tmp_path / "migrations.msgpack", bytes(range(32))
    discovery.discover([folder], cache, key=key)
    entries = discovery._load_cache(cache, key)
    forged = {
        p: (stamp, msgspec.structs.replace(m, description="Forged."))
        for p, (stamp, m) in entries.items()
    }
    older = Cache("discovery cache", discovery.CACHE.format_version - 1, discovery.CACHE.sources)
    cache.write_bytes(older.seal(msgspec.msgpack.encode(forged), key))
    assert discovery.discover([folder], cache, key=key)[0].description == "One."
    # Negative control: sealed under the current version, the entry is taken as it is.
    cache.write_bytes(discovery.CACHE.seal(msgspec.msgpack.encode(forged), key))
    assert discovery.discover([folder], cache, key=key)[0].description == "Forged."


HCL2_ONLY = 'x = max(1, 2)\nmigration {\n  timeout = "%s"\n}\n'  # plainhcl declines a call


def test_a_settings_cache_of_another_version_is_not_read(tmp_path: Path) -> None:
    from flywall.core.appliance import settings

    config = tmp_path / "etc/flywall/migration.hcl"
    config.parent.mkdir(parents=True)
    (config.parent / "flywall.hcl").write_text("")
    config.write_text(HCL2_ONLY % "5m")
    assert settings.load_settings(tmp_path).timeout == 300
    cache = tmp_path / "var/cache/flywall/settings.msgpack"
    entry = msgspec.msgpack.decode(settings.CACHE.read(cache) or b"")
    forged = msgspec.msgpack.encode({**entry, "block": {**entry["block"], "timeout": "9m"}})
    older = Cache("settings cache", settings.CACHE.format_version - 1, settings.CACHE.sources)
    cache.write_bytes(older.seal(forged))
    assert settings.load_settings(tmp_path).timeout == 300
    cache.write_bytes(forged)  # the unsealed form of format 1
    assert settings.load_settings(tmp_path).timeout == 300
    # Negative control: sealed under the current version, the entry is believed.
    cache.write_bytes(settings.CACHE.seal(forged))
    assert settings.load_settings(tmp_path).timeout == 540


@pytest.mark.parametrize("point", ["settings-cache-before-replace", "settings-cache-after-replace"])
def test_a_kill_while_writing_the_settings_cache_costs_nothing_but_the_cache(
    appliance: Appliance, point: str
) -> None:
    """Killed at either side of the cache's rename: the rerun parses or reads it, and is right."""
    from flywall.core.appliance import settings

    appliance.configure('timeout = "7m"')
    appliance.settings.write_text("x = max(1, 2)\n" + appliance.settings.read_text())
    cache = appliance.root / "var/cache/flywall/settings.msgpack"

    cut = appliance.cli("status", env={"FLYWALL_CRASH_AT": point})
    assert cut.returncode == -9, cut.stderr
    assert cache.exists() == (point == "settings-cache-after-replace")
    rerun = appliance.cli("status")
    assert rerun.returncode == 0, rerun.stderr
    assert msgspec.msgpack.decode(settings.CACHE.read(cache) or b"")["block"]["timeout"] == "7m"
    assert settings.load_settings(appliance.root).timeout == 420


def test_an_install_without_sources_still_has_a_version() -> None:
    """Sources missing (a bytecode-only install): the format number alone keys the cache."""
    cache = Cache("test", 1, ("model/no_such_module.py",))
    assert cache.unseal(cache.seal(b"body")) == b"body"
    assert Cache("test", 2, ("model/no_such_module.py",)).unseal(cache.seal(b"body")) is None
