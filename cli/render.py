"""Text and JSON rendering of command results; the only place that formats output."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import click
import msgspec

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import TextIO

    from flywall.core.commands.reports import (
        ChecksumRow,
        DryRunReport,
        MigrationRow,
        RunReport,
        StatusReport,
        TrialReport,
        TrialStep,
    )


_captured: list[str] | None = None


def echo(message: str = "", *, nl: bool = True, err: bool = False) -> None:
    """Print one line with `click.echo`, or into the buffer of `captured()`."""
    if _captured is not None and not err:
        _captured.append(message + "\n" if nl else message)
        return
    click.echo(message, nl=nl, err=err)


@contextlib.contextmanager
def captured() -> Iterator[list[str]]:
    """Collect what the renderers print instead of writing it (what `status` memoizes)."""
    global _captured  # noqa: PLW0603 - one process renders one command
    _captured = []
    try:
        yield _captured
    finally:
        _captured = None


def emit_json(value: Any) -> None:
    """Print `value` (Structs, lists, dicts) as one JSON document."""
    echo(msgspec.json.encode(value).decode())


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    """Print left-aligned columns."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    for row in [header, *rows]:
        echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def migrations(rows: Sequence[MigrationRow]) -> None:
    """Render `list`; broken files after the table, one `BROKEN` line each."""
    broken = [r for r in rows if r.state == "broken"]
    rows = [r for r in rows if r.state != "broken"]
    if not rows:
        echo("no migrations")
    else:
        _table(rows)
    for r in broken:
        echo(f"BROKEN      {r.file}: {r.last_error}")


def _table(rows: Sequence[MigrationRow]) -> None:
    table(
        [
            (
                r.version,
                r.component,
                r.state + ("" if r.checksum_ok else " (file changed!)"),
                r.checksum[:12] or "-",  # enough to compare by eye; --json has it whole
                r.applied_at or "-",
                r.description,
            )
            for r in rows
        ],
        ("VERSION", "COMPONENT", "STATE", "CHECKSUM", "APPLIED AT", "DESCRIPTION"),
    )


def status(report: StatusReport) -> None:
    """Render `status`."""
    j = report.journal
    head = j.head_hash[:16] if j.head_hash else "-"
    if report.paths is not None:
        p = report.paths
        found = "no Flywall config found" if p.layout == "none" else p.config
        echo(f"layout      {p.layout} ({found})")
    echo(f"journal     {j.path} ({j.events} events, head {head})")
    comps = ", ".join(f"{k} {v}" for k, v in report.components.items()) or "none applied"
    echo(f"components  {comps}")
    if report.current_version:
        echo(f"expected    {report.current_version} (current_version in settings)")
    counts = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in report.counts.items() if n)
    echo(f"migrations  {counts or 'none'}")
    if report.last_run:
        r = report.last_run
        echo(f"last run    {r['run_id']} {r['command']} {r['outcome']} at {r['finished_at']}")
    if report.lock_holder:
        echo(f"running     {report.lock_holder}")
    _status_findings(report)
    if report.migrations is not None:
        echo("")
        migrations(report.migrations)


def _status_findings(report: StatusReport) -> None:
    """What status asks the operator to look at: interruptions, windows, drift, files."""
    for d in report.interrupted:
        echo(
            f"INTERRUPTED {d.version} ({d.direction}, run {d.interrupted_run}): "
            f"recovery will decide {d.decision}"
            + (" by finishing it from its checkpoint" if d.action == "resume" else "")
            + f" ({_evidence(d.evidence)})"
        )
    for run_id, deadline in report.awaiting_confirmation.items():
        undone = report.expired_confirmation.get(run_id)
        if undone is None:
            echo(f"CONFIRM     run {run_id} by {deadline}, or it is rolled back (`confirm`)")
            continue
        what = ", ".join(reversed(undone)) or "nothing it applied"
        echo(
            f"EXPIRED     run {run_id}: its window closed at {deadline} unconfirmed; the next "
            f"writing command (migrate, recover, rollback, confirm...) rolls back {what}"
        )
    for finding in report.drift:
        echo(f"DRIFT       {finding}")
    for missing in report.missing:
        echo(f"MISSING     {missing}")
    for broken in report.broken:
        echo(f"BROKEN      {broken.path}: {broken.reason}")


def _evidence(evidence: dict[str, str]) -> str:
    """A recovery decision's evidence as status and recover print it (the JSON has it all)."""
    return ", ".join(f"{k}={v}" for k, v in evidence.items() if k != "fingerprint")


def run(report: RunReport) -> None:
    """Render the summary of migrate / rollback / recover."""
    for d in report.recovered:
        echo(f"recovered {d.version}: {d.decision} ({_evidence(d.evidence)})")
    if report.note:
        echo(report.note)
    if report.outcome == "nothing_to_do":
        echo("nothing to do")
        return
    verb = {"migrate": "applied", "rollback": "rolled back", "recover": "recovered"}
    count = len(report.done)
    what = f"{count} migration{'s' if count != 1 else ''}"
    if report.command != "recover":
        echo(f"{verb.get(report.command, report.command)} {what} (run {report.run_id})")


def checksums(rows: Sequence[ChecksumRow]) -> None:
    """Render `checksums`."""
    table(
        [
            (
                r.version,
                r.state,
                ("repaired" if r.repaired_from else "ok") if r.match else "MISMATCH",
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
        echo(f"{e['seq']:>6}  {e['at']}  {e['kind']:<19} {who:<14} {detail}".rstrip())


def dry_run(report: DryRunReport) -> None:
    """Render `migrate --dry-run`: per migration its SQL (indented), then the diffs."""
    from flywall.core.commands import marked  # loaded already: the dry run ran

    if not report.planned:
        echo("dry run: nothing to do")
    for step in report.steps:
        state = "ok" if step.ok else "FAILED"
        echo(
            f"== {step.version} {step.component} ({step.duration_ms:.1f} ms, {state}) "
            f"{step.description}".rstrip()
        )
        for statement in step.sql:
            lines = f"{statement.sql};".splitlines()
            if statement.times > 1:
                lines[-1] += f"  -- x{statement.times}"
            echo("\n".join(f"    {line}" for line in lines))
        if not step.sql and step.ok and marked(step.component):
            echo("    (no SQL)")
        for line in step.log:
            echo(f"    log: {line}")
        if step.error:
            echo(f"    error: {step.error}")
    for title, diff in (
        ("schema", report.schema_diff),
        ("config", report.config_diff),
        ("api", report.api_diff),
    ):
        echo(f"-- {title} diff" + ("" if diff else ": no change"))
        if diff:
            echo(diff, nl=False)
    outcome = "ok" if report.ok else f"FAILED: {report.error or 'a migration failed'}"
    echo(
        f"dry run {outcome}; nothing changed (journaled as seq {report.journal_seq}, "
        f"run {report.run_id})"
    )


def trial(report: TrialReport) -> None:
    """Render `test`: one line per migration, then its problems and the checks."""
    if report.prepared:
        prepared = ", ".join(report.prepared)
        echo(f"fresh store, with what {report.version} depends on applied: {prepared}")
    if not report.steps:
        echo("nothing pending to test")
    for step in report.steps:
        _trial_step(step)
    for name, result in report.checks.items():
        echo(f"{'ok  ' if result == 'ok' else 'FAIL'}  {name}: {result}")
    if report.error:
        echo(f"FAILED: {report.error}")
    for outcome in ("irreversible", "lossy", "verify_failed", "failed"):
        if named := report.named(outcome):
            echo(f"{outcome}: {', '.join(named)}")
    echo(f"test --{report.mode}: {'ok' if report.ok else 'FAILED'}")


def _trial_step(s: TrialStep) -> None:
    took = f"{s.duration_ms:.1f} ms" if s.duration_ms is not None else "-"
    rows = f", {s.rows} rows" if s.rows is not None else ""
    rate = f", {s.rows_per_s:.0f} rows/s" if s.rows_per_s is not None else ""
    echo(f"{s.version}  {s.component:<8}  {s.outcome:<12}  {took}{rows}{rate}")
    for problem in s.problems:
        echo(f"    {problem}")
        for line in s.diffs.get(problem, "").splitlines():
            echo(f"      {line}")
    if s.error:
        echo(f"    {s.error}")


class ProgressLine:
    """One line on a terminal's stderr showing a batched state migration's progress.

    Fed by the `BatchCommitted` events of the run (rows done and the table's total), it is
    redrawn in place (carriage return) at most every `interval` seconds, with the rate since
    the migration started and the time left at that rate. `clear` erases it, so the next
    line (`applying ...`, `failed: ...`, the run's summary) starts on a clean line.
    The engine knows nothing of it: the CLI builds it only when stderr is a terminal.
    """

    def __init__(self, stream: TextIO, *, interval: float = 0.1) -> None:
        self._stream = stream
        self._interval = interval
        self._began = time.monotonic()
        self._drawn_at = 0.0
        self._width = 0

    def start(self) -> None:
        """A migration starts: its rate is measured from now."""
        self.clear()
        self._began = time.monotonic()

    def update(self, version: str, done: int, total: int) -> None:
        """Show `done` of `total` rows, unless the line was drawn less than `interval` ago."""
        now = time.monotonic()
        if now - self._drawn_at < self._interval or total <= 0:
            return
        self._drawn_at = now
        rate = done / max(now - self._began, 1e-6)
        eta = _duration((total - done) / rate) if rate > 0 else "--:--"
        line = (
            f"  {version}  {done}/{total} rows  {100 * done // total:3d}%  "
            f"{rate:,.0f} rows/s  ETA {eta}"
        )
        self._stream.write("\r" + line.ljust(self._width))
        self._stream.flush()
        self._width = len(line)

    def clear(self) -> None:
        """Erase the line (if one is shown) and put the cursor back at its start."""
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0


def _duration(seconds: float) -> str:
    """M:SS, or H:MM:SS from an hour on."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
