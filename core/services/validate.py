"""Validation: named checks of the journal and the targets, each "ok" or a finding.

`validate` only reads. Each check is a small function returning findings, so the report
says exactly which check failed and where. Some checks only warn: a config key a migration
has deprecated still works, so it is reported (`warnings`) but does not fail validation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from flywall.core.model import projection
from flywall.core.model.errors import ConfigParseError, FlywallError, JournalDamaged
from flywall.core.model.lifecycle import Lifecycle, State
from flywall.core.services import drift
from flywall.core.targets import registry

if TYPE_CHECKING:
    from flywall.core.appliance.settings import Settings
    from flywall.core.appliance.workspace import Workspace
    from flywall.core.formats.hcl import Block, Body, Document
    from flywall.core.scripts.discovery import Migration
    from flywall.core.targets.database import DatabaseTarget
    from flywall.core.targets.protocol import Target

WARNING_CHECKS = frozenset({"deprecations", "missing files", "current_version"})
"""Checks whose findings are warnings: reported, but `ok` stays true."""

ALL_ONLY = frozenset({"journal integrity", "backups"})
"""Checks only `validate --all` runs: they read every page of the journal and every backup."""


def passed(result: str) -> bool:
    """Whether a check's result is a pass: "ok", or "ok (...)" with a note (accepted drift)."""
    return result == "ok" or result.startswith("ok (")


class Verdict(msgspec.Struct, kw_only=True, frozen=True):
    """One check as a face shows it: its level ("ok", "warn" or "fail") and scope."""

    name: str
    level: str
    all_only: bool
    result: str


def verdicts(report: ValidationReport) -> list[Verdict]:
    """Each check of `report` with its level: a failed warning check is "warn", not "fail"."""
    return [
        Verdict(
            name=name,
            level="ok" if passed(result) else "warn" if name in WARNING_CHECKS else "fail",
            all_only=name in ALL_ONLY,
            result=result,
        )
        for name, result in report.checks.items()
    ]


class ValidationReport(msgspec.Struct, kw_only=True):
    """Each check's name mapped to "ok" or its findings; `ok` when all but warnings passed.

    `warnings` lists each warning on its own, e.g. one line per deprecated config key.
    """

    checks: dict[str, str]
    ok: bool
    warnings: list[str] = []


def validate(ws: Workspace, *, everything: bool = False) -> ValidationReport:
    """Run every check; never raises for a finding (findings are the result).

    The default already runs the full `PRAGMA integrity_check` of state.db, the whole
    journal chain and each applied migration's verify. `everything` (`validate --all`)
    adds the `ALL_ONLY` checks: SQLite's integrity check of the journal file itself, and
    every backup's files against its manifest digests.

    A broken migration file is a finding here (the `migration files` check), so the other
    checks look past it; the workspace refuses broken files again afterwards, since a
    writer's run (validate_before) goes on with it.
    """
    tolerant = ws.tolerate_broken
    ws.tolerate_broken = True
    try:
        return _checks(ws, everything=everything)
    finally:
        ws.tolerate_broken = tolerant


def _checks(ws: Workspace, *, everything: bool) -> ValidationReport:
    from flywall.core.targets.database import open_existing

    checks: dict[str, str] = {}
    checks["migration files"] = "; ".join(_broken_files(ws)) or "ok"
    state, checks["journal chain"], journal_integrity = _journal(ws, integrity=everything)
    if everything:
        checks["journal integrity"] = journal_integrity
        checks["backups"] = _backups(ws)
    try:
        checks["checksums"] = "; ".join(_changed_files(ws, state)) or "ok"
    except FlywallError as e:
        checks["checksums"] = str(e)
    document, checks["config"] = _config(ws)
    checks["flywall config"] = ws.config_problem() or "ok"  # loads in Flywall (issue 14)
    db = open_existing(ws.paths.state_db, ws.settings.version_table)
    try:
        checks.update(target_checks(state, db))
        applied = [r.version for r in state.in_state(State.APPLIED)]
        checks.update(verify_migrations(ws, applied, db))
    finally:
        if db is not None:
            db.close()
    checks["deprecations"], warnings = _deprecations(ws, document)
    checks["missing files"], gone = _missing_files(ws, state)
    warnings += gone
    checks["current_version"] = _current_version(ws, state)
    ok = all(v == "ok" for name, v in checks.items() if name not in WARNING_CHECKS)
    return ValidationReport(checks=checks, ok=ok, warnings=warnings)


def _broken_files(ws: Workspace) -> list[str]:
    """Each file that is not a usable migration, and why.

    Invalid as status shows it, or a Python migration whose body raises when loaded
    (which only running it can tell; status never runs a migration's code).
    """
    from flywall.core.model.errors import DiscoveryError
    from flywall.core.scripts.discovery import load_module

    found = [f"{b.path}: {b.reason}" for b in ws.broken]
    for m in ws.migrations:
        if m.kind == "python":
            try:
                load_module(m)
            except DiscoveryError as e:
                found.append(str(e))
    return found


def verify_data(ws: Workspace) -> ValidationReport:
    """The data checks alone (`verify --data`), each applied migration's verify included.

    state.db's integrity, foreign keys and change-log chain come from `data_checks`.

    The journal is read only to learn which migrations are applied; a journal that cannot
    be read is a finding (`journal chain`), since no verify could then be chosen.
    """
    from flywall.core.targets.database import open_existing

    checks: dict[str, str] = {}
    state, chain, _ = _journal(ws, integrity=False)
    if chain != "ok":
        checks["journal chain"] = chain
    db = open_existing(ws.paths.state_db, ws.settings.version_table)
    try:
        if db is None:
            checks["state.db"] = "ok (not created yet)"
        else:
            checks.update(data_checks(db))
        applied = [r.version for r in state.in_state(State.APPLIED)]
        checks.update(verify_migrations(ws, applied, db))
    finally:
        if db is not None:
            db.close()
    return ValidationReport(checks=checks, ok=all(passed(v) for v in checks.values()))


def _journal(ws: Workspace, *, integrity: bool) -> tuple[projection.Projection, str, str]:
    """Replay the journal: its state, the chain check, and SQLite's check of its file.

    The file's `PRAGMA integrity_check` runs only when asked (`validate --all`); a box
    that never journaled passes both.
    """
    journal = ws.read_journal()
    if journal is None:
        return projection.Projection(), "ok", "ok"
    state, chain, checked = projection.Projection(), "ok", "ok"
    with journal:
        try:
            journal.verify()
            state = projection.replay(journal.read(), Lifecycle())
        except JournalDamaged:  # the file, not its chain: the command fails on it, as ever
            raise
        except FlywallError as e:
            chain = str(e)
        if integrity:
            rows = [row[0] for row in journal.connection.execute("PRAGMA integrity_check")]
            checked = "ok" if rows == ["ok"] else f"{ws.paths.journal}: " + "; ".join(rows)
    return state, chain, checked


def _backups(ws: Workspace) -> str:
    """Every backup's files against the digests its manifest recorded (`validate --all`)."""
    from flywall.core.services import backup

    try:
        problems = [p for m in backup.list_backups(ws) for p in backup.verify(ws, m)]
    except (OSError, FlywallError) as e:
        return f"{ws.paths.backups}: cannot read: {e}"
    return "; ".join(problems) or "ok"


def _current_version(ws: Workspace, state: projection.Projection) -> str:
    """Warn when `current_version` in the settings is not what the box has applied.

    The setting is what the operator believes the box is at; the journal is the truth, so
    a mismatch is worth a look but never a failure. It may name the newest applied
    migration's version or a component's version (`status`'s "components").
    """
    expected = ws.settings.current_version
    if expected is None:
        return "ok"
    applied = [r.version for r in state.in_state(State.APPLIED)]
    newest = max(applied) if applied else None
    components = state.components()
    if expected == newest or expected in components.values():
        return "ok"
    shown = ", ".join(f"{k} {v}" for k, v in components.items())
    actual = f"{newest} ({shown})" if newest else "none (nothing applied)"
    return (
        f"{ws.settings.config_path}: current_version is {expected} "
        f"but the applied version is {actual}"
    )


def _missing_files(ws: Workspace, state: projection.Projection) -> tuple[str, list[str]]:
    """The warning check for applied migrations whose file is gone (`drift.missing_files`)."""
    try:
        gone = drift.missing_files(ws, state)
    except FlywallError as e:  # a migrations folder that cannot be listed
        return f"skipped: {e}", []
    return (f"{len(gone)} applied migration(s) without their file" if gone else "ok"), gone


def _changed_files(ws: Workspace, state: projection.Projection) -> list[str]:
    """Name each applied migration whose file no longer has the checksum it was applied with."""
    on_disk = {m.version: m for m in ws.migrations}
    return [
        f"{m.path}: applied as {r.checksum[:16]}, file is now {m.checksum[:16]}"
        for r in state.in_state(State.APPLIED)
        if (m := on_disk.get(r.version)) is not None and m.checksum != r.checksum
    ]


def _config(ws: Workspace) -> tuple[Document | None, str]:
    """Parse the config as a migration would see it; a file that does not exist is empty."""
    from flywall.core.formats.hcl import Document

    path = ws.paths.config
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{path}: cannot read: {e}"
    try:
        return Document.parse(text, str(path)), "ok"
    except ConfigParseError as e:
        return None, str(e)


def _deprecations(ws: Workspace, document: Document | None) -> tuple[str, list[str]]:
    """The check's summary, and a warning per deprecated key in the config, in file order."""
    if document is None:
        return "skipped: the config could not be read", []
    found = []
    try:
        for m in ws.migrations:
            # A version-neutral migration (no schema_version) deprecates by rewriting.
            since = f"since {m.schema_version}" if m.schema_version else f"({m.version} fixes it)"
            for key, replacement in m.deprecations.items():
                message = f"{key} is deprecated {since}; use {replacement}"
                lines = _lines(document, key)
                found += [(line, f"{document.path}:{line}: {message}") for line in lines]
    except FlywallError as e:  # a migration file that does not describe itself
        return f"skipped: {e}", []
    warnings = [warning for _, warning in sorted(found)]
    return (f"{len(warnings)} deprecated key(s) in use" if warnings else "ok"), warnings


def _lines(document: Document, key: str) -> list[int]:
    """The lines where `key` occurs in the document.

    `key` is a dotted path of block types from the top of the file, then a block type or an
    attribute name; labels are not part of it (`interface.zone` matches every interface).
    """
    *parents, last = key.split(".")
    containers: list[Block | None] = [None]
    for block_type in parents:
        containers = [b for c in containers for b in _body(document, c).blocks(block_type)]
    lines = []
    for container in containers:
        body = _body(document, container)
        lines += [block.line for block in body.blocks(last)]
        if body.has(last):
            lines.append(_attribute_line(body, last))
    return lines


def _body(document: Document, block: Block | None) -> Body:
    return document.body if block is None else block.body


def _attribute_line(body: Body, name: str) -> int:
    """The line an attribute starts on.

    hcl.py gives blocks a `line` but attributes none, so this reads its tree; finding the
    line through edits on a copy would re-parse the file once per deprecated attribute.
    """
    from lark import Token

    node = body._attribute(name)  # noqa: SLF001 - no public accessor yet (see above)
    assert node is not None
    first = next(node.scan_values(lambda value: isinstance(value, Token)))
    assert first.line is not None  # a token the parser read carries its position
    return first.line


def target_checks(
    state: projection.Projection,
    db: DatabaseTarget | None,
    *,
    quick: bool = False,
    accepted_drift: list[str] | None = None,
) -> dict[str, str]:
    """The data checks of state.db: integrity, foreign keys, drift against the journal.

    `quick` (validate_before/after around every run) uses `PRAGMA quick_check`, which
    skips only the index-versus-table cross-check that the full `validate` still runs.
    On Flywall's store, the change log's hash chain too: replication peers verify it.
    """
    checks = data_checks(db, quick=quick) if db is not None else {}
    findings = drift.detect(state, db)
    if findings and accepted_drift and set(findings) <= set(accepted_drift):
        checks["drift"] = "ok (accepted for this run: " + "; ".join(findings) + ")"
    else:
        checks["drift"] = "; ".join(findings) or "ok"
    checks["batch checkpoints"] = "; ".join(_half_done_steps(state, db)) or "ok"
    return checks


def data_checks(db: DatabaseTarget, *, quick: bool = False) -> dict[str, str]:
    """state.db's own data checks: integrity, foreign keys, Flywall's change-log chain.

    Shared by `validate`, validate_before/after (`quick`) and `verify --data`.
    """
    from flywall.core.targets import store

    checks: dict[str, str] = {}
    pragma = "quick_check" if quick else "integrity_check"
    with db.checkpointing():  # after a big commit: the WAL's copy runs alongside
        integrity = [row[0] for row in db.db.execute(f"PRAGMA {pragma}")]
    checks["integrity"] = "ok" if integrity == ["ok"] else "; ".join(integrity)
    fk = db.db.execute("PRAGMA foreign_key_check").fetchall()
    checks["foreign keys"] = "ok" if not fk else f"{len(fk)} violation(s), first {fk[0]}"
    if store.is_store(db.db):
        checks["change log"] = store.check_chain(db.db) or "ok"
    return checks


def _half_done_steps(state: projection.Projection, db: DatabaseTarget | None) -> list[str]:
    """Name each batched state step whose checkpoint disagrees with the journal.

    A checkpoint row means a step committed some batches and not its last one: its
    records are in two shapes. That is expected only while the step is in flight
    (recovery finishes it) or after a failed `up` (the next `migrate` goes on from it).
    Anywhere else, e.g. a `down` checkpoint under a migration the journal calls applied,
    the journal and the records disagree.
    """
    if db is None:
        return []
    findings = []
    for version, direction, table, rows in db.batch_checkpoints():
        record = state.migrations.get(version)
        current = record.state if record is not None else State.PENDING
        expected = current in (State.RUNNING, State.ROLLING_BACK) or (
            direction == "up" and current is State.FAILED
        )
        if not expected:
            command = "rollback" if direction == "down" else "migrate --target"
            findings.append(
                f"{table}: a batched {direction} of {version} stopped after {rows} rows "
                f"but the journal says {current.value}: its records are in two shapes "
                f"(`{command} {version}` goes on from the checkpoint)"
            )
    return findings


def verify_migrations(
    ws: Workspace, versions: list[str], db: DatabaseTarget | None
) -> dict[str, str]:
    """Run each migration's own post-condition (`-- migrate:verify` or `verify()`).

    SQL runs inside a savepoint that is always rolled back, and documents are parsed
    fresh, so a verify can look but never change anything.
    """
    results: dict[str, str] = {}
    wanted = set(versions)  # a run's 1000 versions: not a list scan per migration
    for m in (m for m in ws.migrations if m.has_verify and m.version in wanted):
        try:
            _verify(ws, m, db)
            results[f"verify {m.version}"] = "ok"
        # A vendor's check may raise anything, sys.exit() included: that is the finding.
        except (Exception, SystemExit) as e:
            results[f"verify {m.version}"] = f"{type(e).__name__}: {e}".strip()
    return results


def _verify(ws: Workspace, m: Migration, db: DatabaseTarget | None) -> None:
    target = registry.target_for(
        m.component, ws.file_targets(), db, state_db=ws.paths.state_db, vfs=ws.sqlite.vfs
    )
    verify_migration(ws.settings, m, target)


def verify_migration(settings: Settings, m: Migration, target: Target) -> None:
    """Run `m`'s post-condition on its target: `-- migrate:verify`, or `verify(ctx, target)`.

    The one verify of `validate` (the live box) and `test` (a copy): the target runs it
    looking, never changing (`Target.verify`: SQL in a savepoint always rolled back, a
    document parsed fresh). `ctx.db` is the connection when the target has one.

    :raises: whatever the check raises (that is the finding); FlywallError when state.db
        does not exist.
    """
    from flywall.core.runtime.context import MigrationContext
    from flywall.core.scripts import sqlverify
    from flywall.core.scripts.discovery import load_module

    def check(opened: Any) -> None:
        if m.kind == "sql":  # a `database` migration: `opened` is the connection
            sqlverify.check(opened, m.verify_sql or "")
            return
        conn = opened if target.marked else None
        ctx = MigrationContext(m.version, "verify", settings, _quiet, _quiet, conn)
        load_module(m).verify(ctx, opened)

    target.verify(check)


def _quiet(*_: object) -> None:
    """A verify's `ctx.log` and `ctx.progress`: a check reports by raising, not by logging."""
