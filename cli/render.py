"""Text and JSON rendering of command results; the only place that formats output."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence

    from flywall.core.commands import ChecksumRow, MigrationRow, StatusReport
    from flywall.core.dryrun import DryRunReport
    from flywall.core.engine import RunReport
    from flywall.core.trial import TrialReport, TrialStep


def emit_json(value: Any) -> None:
    """Print `value` (Structs, lists, dicts) as one JSON document."""
    click.echo(msgspec.json.encode(value).decode())


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    """Print left-aligned columns."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for row in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def migrations(rows: Sequence[MigrationRow]) -> None:
    """Render `list`."""
    if not rows:
        click.echo("no migrations")
        return
    table(
        [
            (
                r.version,
                r.component,
                r.state + ("" if r.checksum_ok else " (file changed!)"),
                r.applied_at or "-",
                r.description,
            )
            for r in rows
        ],
        ("VERSION", "COMPONENT", "STATE", "APPLIED AT", "DESCRIPTION"),
    )


def status(report: StatusReport) -> None:
    """Render `status`."""
    j = report.journal
    head = j.head_hash[:16] if j.head_hash else "-"
    click.echo(f"journal     {j.path} ({j.events} events, head {head})")
    comps = ", ".join(f"{k} {v}" for k, v in report.components.items()) or "none applied"
    click.echo(f"components  {comps}")
    if report.current_version:
        click.echo(f"expected    {report.current_version} (current_version in settings)")
    counts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in report.counts.items() if n)
    click.echo(f"migrations  {counts or 'none'}")
    if report.last_run:
        r = report.last_run
        click.echo(f"last run    {r['run_id']} {r['command']} {r['outcome']} at {r['finished_at']}")
    if report.lock_holder:
        click.echo(f"running     {report.lock_holder}")
    for d in report.interrupted:
        evidence = ", ".join(f"{k}={v}" for k, v in d.evidence.items() if k != "fingerprint")
        click.echo(
            f"INTERRUPTED {d.version} ({d.direction}, run {d.interrupted_run}): "
            f"recovery will decide {d.decision} ({evidence})"
        )
    for run_id, deadline in report.awaiting_confirmation.items():
        click.echo(f"CONFIRM     run {run_id} by {deadline}, or it is rolled back (`confirm`)")
    for finding in report.drift:
        click.echo(f"DRIFT       {finding}")
    if report.migrations is not None:
        click.echo("")
        migrations(report.migrations)


def run(report: RunReport) -> None:
    """Render the summary of migrate / rollback / recover."""
    for d in report.recovered:
        click.echo(f"recovered {d.version}: {d.decision} ({d.evidence.get('marker', '')})")
    if report.outcome == "nothing_to_do":
        click.echo("nothing to do")
        return
    verb = {"migrate": "applied", "rollback": "rolled back", "recover": "recovered"}
    count = len(report.done)
    what = f"{count} migration{'s' if count != 1 else ''}"
    if report.command != "recover":
        click.echo(f"{verb.get(report.command, report.command)} {what} (run {report.run_id})")


def checksums(rows: Sequence[ChecksumRow]) -> None:
    """Render `checksums`."""
    table(
        [
            (
                r.version,
                r.state,
                "ok" if r.match else "MISMATCH",
                (r.on_disk or "(no file)")[:16],
                (r.recorded or "-")[:16],
            )
            for r in rows
        ],
        ("VERSION", "STATE", "CHECK", "ON DISK", "RECORDED"),
    )


def events(items: Sequence[dict[str, Any]]) -> None:
    """Render `history` as one line per event."""
    skip = {"seq", "at", "kind", "migration", "run_id", "hash", "actor"}
    for e in items:
        detail = " ".join(
            f"{k}={v}" for k, v in e.items() if k not in skip and v not in (None, "", [], {})
        )
        who = e.get("migration") or ""
        click.echo(f"{e['seq']:>6}  {e['at']}  {e['kind']:<19} {who:<14} {detail}".rstrip())


def dry_run(report: DryRunReport) -> None:
    """Render `migrate --dry-run`: per migration its SQL (indented), then the diffs."""
    if not report.planned:
        click.echo("dry run: nothing to do")
    for step in report.steps:
        state = "ok" if step.ok else "FAILED"
        click.echo(
            f"== {step.version} {step.component} ({step.duration_ms:.1f} ms, {state}) "
            f"{step.description}".rstrip()
        )
        for statement in step.sql:
            lines = f"{statement.sql};".splitlines()
            if statement.times > 1:
                lines[-1] += f"  -- x{statement.times}"
            click.echo("\n".join(f"    {line}" for line in lines))
        if not step.sql and step.ok and step.component in ("database", "state"):
            click.echo("    (no SQL)")
        for line in step.log:
            click.echo(f"    log: {line}")
        if step.error:
            click.echo(f"    error: {step.error}")
    for title, diff in (
        ("schema", report.schema_diff),
        ("config", report.config_diff),
        ("api", report.api_diff),
    ):
        click.echo(f"-- {title} diff" + ("" if diff else ": no change"))
        if diff:
            click.echo(diff, nl=False)
    outcome = "ok" if report.ok else f"FAILED: {report.error or 'a migration failed'}"
    click.echo(
        f"dry run {outcome}; nothing changed (journaled as seq {report.journal_seq}, "
        f"run {report.run_id})"
    )


def trial(report: TrialReport) -> None:
    """Render `test`: one line per migration, then its problems and the checks."""
    if report.prepared:
        prepared = ", ".join(report.prepared)
        click.echo(f"fresh database built up to just before {report.version}: {prepared}")
    if not report.steps:
        click.echo("nothing pending to test")
    for step in report.steps:
        _trial_step(step)
    for name, result in report.checks.items():
        click.echo(f"{'ok  ' if result == 'ok' else 'FAIL'}  {name}: {result}")
    if report.error:
        click.echo(f"FAILED: {report.error}")
    for outcome in ("irreversible", "lossy", "verify_failed", "failed"):
        if named := report.named(outcome):
            click.echo(f"{outcome}: {', '.join(named)}")
    click.echo(f"test --{report.mode}: {'ok' if report.ok else 'FAILED'}")


def _trial_step(s: TrialStep) -> None:
    took = f"{s.duration_ms:.1f} ms" if s.duration_ms is not None else "-"
    rows = f", {s.rows} rows" if s.rows is not None else ""
    rate = f", {s.rows_per_s:.0f} rows/s" if s.rows_per_s is not None else ""
    click.echo(f"{s.version}  {s.component:<8}  {s.outcome:<12}  {took}{rows}{rate}")
    for problem in s.problems:
        click.echo(f"    {problem}")
        for line in s.diffs.get(problem, "").splitlines():
            click.echo(f"      {line}")
    if s.error:
        click.echo(f"    {s.error}")
