"""The contract every target keeps (`flywall.core.targets.protocol.Target`), one suite for all.

As eventsourcing's recorder suite is subclassed per backend, `TargetContract` holds the
tests and each subclass supplies one target: its file, a step up and its down, what the
up's `verify` checks and how to plant a divergence. Every target passes the same cases:

- up then down gives back the original bytes (documents) or rows (state.db);
- a finished apply leaves evidence recovery reads as "done", in both directions;
- the process killed (SIGKILL, a real subprocess) just before the step takes effect leaves
  evidence read as "not done", and killed just after, as "done";
- verify passes after up and fails on a planted divergence, and never changes anything;
- backup then restore gives back what was backed up, and the copy matches its digest.

`test_a_broken_target_fails_every_case` runs every case against a target planted with one
fault per property, so no case here passes whatever the target does.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import apsw
import forkserver
import msgspec
import pytest
from flywallstore import create_store

from flywall.core.model import events as ev
from flywall.core.model.errors import FlywallError
from flywall.core.model.projection import MigrationRecord
from flywall.core.runtime import fileio
from flywall.core.runtime.crash import crashpoint
from flywall.core.targets import dbcopy, registry
from flywall.core.targets.database import DatabaseTarget, bookkeeping, schema_fingerprint
from flywall.core.targets.files import ConfigTarget, digest
from flywall.core.targets.protocol import Evidence, Step, Target
from flywall.core.targets.store import check_chain

VERSION = "202601010001"
VERSION_TABLE = "schema_versions"
INTENT_WRITTEN = "contract-intent-written"
"""The test's own crash point: a file step's WriteIntent is durable, the file not yet touched."""


class TargetContract:
    """The cases; a subclass names its target and supplies the hooks below."""

    component: ClassVar[str]
    file_name: ClassVar[str]
    before_point: ClassVar[str]
    """A crash point where the step has not taken effect (evidence: not done)."""
    after_point: ClassVar[str]
    """A crash point just after the step took effect (evidence: done)."""

    # -- hooks --------------------------------------------------------------------------

    def seed(self, path: Path) -> None:
        """Write the target's original content."""
        raise NotImplementedError

    def up(self, opened: Any) -> None:
        raise NotImplementedError

    def down(self, opened: Any) -> None:
        raise NotImplementedError

    def check(self, opened: Any) -> None:
        """The up's post-condition, as a migration's `verify` states it."""
        raise NotImplementedError

    def diverge(self, path: Path) -> None:
        """Change the target behind the journal's back so that `check` no longer holds."""
        raise NotImplementedError

    def observe(self, path: Path) -> Any:
        """What "the same content" means for this target."""
        raise NotImplementedError

    def scribble(self, opened: Any) -> None:
        """A check that writes (what `verify` gives it is what `open` gives, but for the
        state.db targets, whose verify gets the connection): the down, by default."""
        self.down(opened)

    # -- the target under test ----------------------------------------------------------

    def target(self, path: Path, db: DatabaseTarget | None) -> Target:
        """The implementation under test (a broken one is planted by overriding this)."""
        return registry.target_for(self.component, {self.component: path}, db, state_db=path)

    def open(self, path: Path) -> tuple[Target, DatabaseTarget | None]:
        db = DatabaseTarget(path, VERSION_TABLE) if registry.marked(self.component) else None
        return self.target(path, db), db

    def apply(self, path: Path, direction: str, intents: list[ev.WriteIntent]) -> None:
        """Run one step through the target, recording its WriteIntent as the journal would."""
        target, db = self.open(path)

        def intend(before: bytes | None, after: bytes) -> None:
            intents.append(
                ev.WriteIntent(
                    direction=direction,  # type: ignore[arg-type]
                    path=str(path),
                    digest_before=digest(before),
                    digest_after=digest(after) or "",
                )
            )

        step = Step(VERSION, direction, checksum="c" * 8, run_id="run", intend=intend)
        try:
            target.apply(step, self.up if direction == "up" else self.down)
        finally:
            if db is not None:
                db.close()

    def evidence(self, path: Path, direction: str, intent: ev.WriteIntent | None) -> Evidence:
        """What recovery reads: the interrupted step's record, asked of a fresh target."""
        record = MigrationRecord(
            version=VERSION, component=self.component, direction=direction, intent=intent
        )
        marked = registry.marked(self.component) and path.exists()
        db = DatabaseTarget(path, VERSION_TABLE, create=False) if marked else None
        try:
            return self.target(path, db).evidence(record)
        finally:
            if db is not None:
                db.close()

    def file(self, tmp_path: Path) -> Path:
        path = tmp_path / self.file_name
        self.seed(path)
        return path

    # -- the contract -------------------------------------------------------------------

    def test_up_then_down_gives_back_the_original(self, tmp_path: Path) -> None:
        path = self.file(tmp_path)
        original = self.observe(path)
        self.apply(path, "up", [])
        assert self.observe(path) != original, "up changed nothing: the case proves nothing"
        self.apply(path, "down", [])
        assert self.observe(path) == original

    def test_a_finished_step_leaves_evidence_read_as_done(self, tmp_path: Path) -> None:
        path = self.file(tmp_path)
        intents: list[ev.WriteIntent] = []
        self.apply(path, "up", intents)
        assert self.evidence(path, "up", intents[-1] if intents else None).done
        self.apply(path, "down", intents)
        assert self.evidence(path, "down", intents[-1] if intents else None).done

    def test_a_kill_before_the_step_takes_effect_leaves_it_not_done(self, tmp_path: Path) -> None:
        path = self.file(tmp_path)
        original = self.observe(path)
        intent = self.killed_at(path, self.before_point)
        seen = self.evidence(path, "up", intent)
        assert not seen.done
        # A batched step's committed batches stay (recovery resumes from them); else nothing.
        assert seen.half_done or self.observe(path) == original

    def test_a_kill_just_after_the_step_took_effect_leaves_it_done(self, tmp_path: Path) -> None:
        path = self.file(tmp_path)
        intent = self.killed_at(path, self.after_point)
        assert self.evidence(path, "up", intent).done

    def test_verify_passes_after_up_and_fails_on_a_divergence(self, tmp_path: Path) -> None:
        path = self.file(tmp_path)
        self.apply(path, "up", [])
        applied = self.observe(path)
        target, db = self.open(path)
        try:
            target.verify(self.check)
        finally:
            if db is not None:
                db.close()
        assert self.observe(path) == applied
        self.diverge(path)
        target, db = self.open(path)
        try:
            with pytest.raises(AssertionError):
                target.verify(self.check)
        finally:
            if db is not None:
                db.close()

    def test_verify_never_changes_the_target(self, tmp_path: Path) -> None:
        path = self.file(tmp_path)
        self.apply(path, "up", [])
        applied = self.observe(path)
        target, db = self.open(path)
        try:
            target.verify(self.scribble)  # a check that writes: its change must not stay
        finally:
            if db is not None:
                db.close()
        assert self.observe(path) == applied

    def test_backup_then_restore_gives_back_the_backed_up_content(self, tmp_path: Path) -> None:
        path = self.file(tmp_path)
        original = self.observe(path)
        copy = tmp_path / "backup.copy"
        ran: list[bool] = []
        target, db = self.open(path)
        copied = target.backup(copy, fileio.REAL, lambda: ran.append(True))
        if db is not None:
            db.close()
        assert copied.digest == dbcopy.file_digest(copy)
        assert copied.size == copy.stat().st_size
        assert len(ran) <= 1
        self.apply(path, "up", [])
        assert self.observe(path) != original
        self.target(path, None).restore(copy)
        assert self.observe(path) == original

    # -- a real kill ----------------------------------------------------------------------

    def killed_at(self, path: Path, point: str) -> ev.WriteIntent | None:
        """Run the up in a child killed by SIGKILL at `point`; return its durable intent."""
        intent_file = path.with_name("intent.json")
        code = (
            "import sys; from pathlib import Path; "
            f"sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[2])!r}]; "
            "import test_target_contract as c; "
            f"c.{type(self).__name__}().child_up(Path({str(path)!r}), Path({str(intent_file)!r}))"
        )
        env = {**os.environ, "FLYWALL_CRASH_AT": point}
        done = forkserver.run([sys.executable, "-c", code], env=env, warm=[__name__])
        assert done.returncode == -9, f"not killed at {point}: {done.returncode} {done.stderr}"
        if not intent_file.exists():
            return None
        return msgspec.json.decode(intent_file.read_bytes(), type=ev.WriteIntent)

    def child_up(self, path: Path, intent_file: Path) -> None:
        """In the child: the up, its WriteIntent written before the replace, as the engine's."""
        target, _db = self.open(path)

        def intend(before: bytes | None, after: bytes) -> None:
            intent = ev.WriteIntent(
                direction="up",
                path=str(path),
                digest_before=digest(before),
                digest_after=digest(after) or "",
            )
            intent_file.write_bytes(msgspec.json.encode(intent))
            crashpoint(INTENT_WRITTEN)

        target.apply(Step(VERSION, "up", checksum="c" * 8, run_id="run", intend=intend), self.up)


# -- state.db -------------------------------------------------------------------------------


def _rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


class InStateDb(TargetContract):
    file_name = "state.db"

    @property
    def before_point(self) -> str:  # type: ignore[override]
        return f"{self.component}-before-commit"

    @property
    def after_point(self) -> str:  # type: ignore[override]
        return f"{self.component}-after-commit"


class TestSchemaTarget(InStateDb):
    component = "database"

    def seed(self, path: Path) -> None:
        db = apsw.Connection(str(path))
        db.execute(
            "CREATE TABLE zones (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
            "INSERT INTO zones (name) VALUES ('lan'), ('wan'), ('guest');"
        )
        db.close()

    def up(self, conn: apsw.Connection) -> None:
        conn.execute("ALTER TABLE zones ADD COLUMN services TEXT")
        conn.execute("UPDATE zones SET services = 'dns'")

    def down(self, conn: apsw.Connection) -> None:
        conn.execute("ALTER TABLE zones DROP COLUMN services")

    def check(self, conn: apsw.Connection) -> None:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(zones)")]
        assert "services" in columns, columns

    def diverge(self, path: Path) -> None:
        db = apsw.Connection(str(path))
        db.execute("ALTER TABLE zones DROP COLUMN services")
        db.close()

    def observe(self, path: Path) -> Any:
        db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            schema = schema_fingerprint(db, bookkeeping(VERSION_TABLE))
        finally:
            db.close()
        return schema, _rows(path, "SELECT * FROM zones ORDER BY id")


_ENCODE = msgspec.json.encode


def _strip_v(value: dict[str, Any]) -> dict[str, Any]:
    return {k: x for k, x in value.items() if k != "v"}


class TestRecordsTableTarget(InStateDb):
    """A table's JSON column, transformed in batches of two rows, each committed."""

    component = "state"

    def seed(self, path: Path) -> None:
        db = apsw.Connection(str(path))
        db.execute("CREATE TABLE leases (id INTEGER PRIMARY KEY, data TEXT NOT NULL)")
        for i in range(7):
            value = {"mac": f"02:42:00:00:00:{i:02x}", "host": f"h{i}"}
            db.execute("INSERT INTO leases (data) VALUES (?)", (_ENCODE(value).decode(),))
        db.close()

    def up(self, records: Any) -> None:
        records.transform("leases", lambda v: {**v, "v": 2}, batch_size=2)

    def down(self, records: Any) -> None:
        records.transform("leases", _strip_v, batch_size=2)

    def check(self, conn: apsw.Connection) -> None:
        values = [json.loads(d) for (d,) in conn.execute("SELECT data FROM leases")]
        assert all(v.get("v") == 2 for v in values), values

    def diverge(self, path: Path) -> None:
        db = apsw.Connection(str(path))
        db.execute("""UPDATE leases SET data = json_remove(data, '$.v') WHERE id = 3""")
        db.close()

    def observe(self, path: Path) -> Any:
        return _rows(path, "SELECT id, data FROM leases ORDER BY id")

    def scribble(self, conn: apsw.Connection) -> None:
        conn.execute("UPDATE leases SET data = '{}'")

    def test_a_kill_between_batches_leaves_it_half_done(self, tmp_path: Path) -> None:
        """Batches before the kill are committed with their checkpoint: recovery resumes."""
        path = self.file(tmp_path)
        self.killed_at(path, "state-batch-committed:2")
        seen = self.evidence(path, "up", None)
        assert not seen.done
        assert seen.half_done


class TestRecordsBucketTarget(InStateDb):
    """Flywall's bucket entries, transformed in batches with their chained change log.

    The log is append-only (a down appends changes too), so "the original" is every
    entry's value, and the chain must still verify.
    """

    component = "state"

    def seed(self, path: Path) -> None:
        create_store(path, leases=12)

    def up(self, records: Any) -> None:
        records.bucket("dhcp_leases").transform(lambda v: {**v, "v": 2}, batch_size=4)

    def down(self, records: Any) -> None:
        records.bucket("dhcp_leases").transform(_strip_v, batch_size=4)

    def check(self, conn: apsw.Connection) -> None:
        rows = conn.execute("SELECT value FROM entries WHERE bucket = 'dhcp_leases'")
        values = [json.loads(value) for (value,) in rows]
        assert values, "no leases"
        assert all(v.get("v") == 2 for v in values), values

    def diverge(self, path: Path) -> None:
        db = apsw.Connection(str(path))
        db.execute(
            "UPDATE entries SET value = CAST(json_remove(value, '$.v') AS BLOB) "
            "WHERE rowid = (SELECT min(rowid) FROM entries WHERE bucket = 'dhcp_leases')"
        )
        db.close()

    def observe(self, path: Path) -> Any:
        entries = {
            (bucket, key): json.loads(value)
            for bucket, key, value in _rows(path, "SELECT bucket, key, value FROM entries")
        }
        db = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            chain = check_chain(db)
        finally:
            db.close()
        return entries, chain

    def scribble(self, conn: apsw.Connection) -> None:
        conn.execute("DELETE FROM entries")


# -- documents ------------------------------------------------------------------------------


class InFile(TargetContract):
    before_point = INTENT_WRITTEN
    after_point = "file-renamed"


CONFIG = b"""\
# Flywall v0.3, as the operator left it
schema_version = "1.0"

interface "lan0" {
  zone    = "lan"     # aligned by hand
  address = "192.168.1.1/24"
}
"""


class TestConfigTarget(InFile):
    component = "config"
    file_name = "flywall.hcl"

    def seed(self, path: Path) -> None:
        path.write_bytes(CONFIG)

    def up(self, document: Any) -> None:
        document.schema_version = "1.1"
        document.block("interface", "lan0").set("mtu", 1500)

    def down(self, document: Any) -> None:
        document.schema_version = "1.0"
        document.block("interface", "lan0").delete("mtu")

    def check(self, document: Any) -> None:
        assert document.schema_version == "1.1", document.schema_version
        assert document.block("interface", "lan0").get("mtu") == 1500

    def diverge(self, path: Path) -> None:
        path.write_bytes(path.read_bytes().replace(b"mtu", b"# mtu"))

    def observe(self, path: Path) -> Any:
        return path.read_bytes()


API = msgspec.json.format(_ENCODE({"clients": [{"id": "ui"}], "routes": {"v1": True}}), indent=2)


class TestApiTarget(InFile):
    component = "api"
    file_name = "api.json"

    def seed(self, path: Path) -> None:
        path.write_bytes(API + b"\n")

    def up(self, document: dict[str, Any]) -> None:
        document["webhooks"] = [{"url": "http://127.0.0.1:9/hook"}]
        document["routes"]["v2"] = True

    def down(self, document: dict[str, Any]) -> None:
        del document["webhooks"]
        del document["routes"]["v2"]

    def check(self, document: dict[str, Any]) -> None:
        assert document.get("webhooks"), document
        assert document["routes"].get("v2") is True, document

    def diverge(self, path: Path) -> None:
        path.write_bytes(path.read_bytes().replace(b"webhooks", b"hooks"))

    def observe(self, path: Path) -> Any:
        return path.read_bytes()


# -- the suite can fail -----------------------------------------------------------------------


class _BrokenConfigTarget(ConfigTarget):
    """One fault per property: no case of the contract may pass on it."""

    def write(self, step: Step, before: bytes | None, after: bytes | None) -> None:
        """Writes one byte too many, and journals its intent only after the replace."""
        if after is None or after == before:
            return
        fileio.replace(self.path, after + b"\n")
        step.intend(before, after)

    def verify(self, check: Any) -> None:
        """Swallows the finding, and writes back whatever the check changed."""
        content = fileio.read(self.path)
        document = self.parse(content)
        with contextlib.suppress(AssertionError):
            check(document)
        fileio.replace(self.path, self.render(document, content) or b"")

    def restore(self, copy: Path | None) -> None:
        """Does nothing."""


class BrokenConfig(TestConfigTarget):
    """The config contract, its target swapped for the planted one (not collected)."""

    __test__ = False

    def target(self, path: Path, db: DatabaseTarget | None) -> Target:  # noqa: ARG002 - no db
        return _BrokenConfigTarget(path)


CONTRACT = sorted(name for name in vars(TargetContract) if name.startswith("test_"))


@pytest.mark.parametrize("case", CONTRACT)
def test_a_broken_target_fails_every_case(case: str, tmp_path: Path) -> None:
    """Each case of the contract fails on a target that breaks what it checks."""
    with pytest.raises((AssertionError, FlywallError, pytest.fail.Exception)):
        getattr(BrokenConfig(), case)(tmp_path)


def test_every_component_has_a_contract_suite() -> None:
    """A target added to the registry without its suite here fails this test."""
    suites = {
        c.component
        for c in (
            TestSchemaTarget,
            TestRecordsTableTarget,
            TestRecordsBucketTarget,
            TestConfigTarget,
            TestApiTarget,
        )
    }
    assert suites == set(registry.TARGETS)
