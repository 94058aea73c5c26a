"""report.py - turn a bench run into RESULTS.md (markdown on stdout).

Usage:  report.py WORKDIR [--summary]
Reads WORKDIR/results.jsonl (the last record per label wins), machine.txt, versions.txt,
failed_checks.txt, notes.txt and backup_size.txt. Every time is the median of whole-process
runs in seconds; `net` = median minus the median of the scenario's reset alone. Ratios are
ours / theirs from the same run. Nothing here asserts: targets are reported, met or not.
--summary prints only the targets and the ratio table (what `make bench` ends with).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OURS = "flywall"
PEERS = ["yoyo", "alembic", "dbmate"]
NA = "n/a (not implemented yet)"

SCEN = {
    "a_apply": "(a) apply all, empty -> head",
    "a_apply_each_tx": "(a') sqlite3, one commit per CREATE",
    "b_status": "(b) status, all applied",
    "c_rollback_reapply": "(c) roll back one + re-apply one",
    "d_help": "(d) --help",
    "d_version": "(d) --version",
    "f_noop": "migrate, nothing pending",
    "h_resume": "resume after a kill (recover + apply the rest)",
    "h_recover": "recover alone after a kill",
    "e_data": "(e) ADD COLUMN + UPDATE, one transaction",
    "g_status": "status, long journal (snapshot valid)",
    "b_status_nomemo": "(b) status, all applied, memo off",
    "g_status_nomemo": "status, long journal (snapshot valid), memo off",
    "g_status_nosnap": "status, long journal, no snapshot, memo off (full replay)",
    "g_verify": "journal verify, long journal",
    "g_noop": "migrate, nothing pending, long journal",
    "f_noop_recover": "recover, nothing to do",
    "f_noop_nomemo": "migrate, nothing pending, boot memo off",
    "g_noop_nomemo": "migrate, nothing pending, long journal, boot memo off",
    "g_noop_recover": "recover, nothing to do, long journal",
    "s_state": "state migration, plain (no tool)",
    "s_state_batched": "state migration, batched",
    "s_state_atomic": "state migration, atomic",
    "s_state_sql": "state migration, batched, records.transform_sql",
    "k_backup": "backup of state.db",
    "k_backup_same_reset": "backup of state.db, after our reset (a fresh synced 1 GiB copy)",
    "k_backup_create_floor": "backup of state.db, interleaved with backup create, same reset",
    "l_full": "`full` strategy: apply all, empty -> head, one transaction",
    "e_data_nobackup": "(e) ADD COLUMN + UPDATE, backup_before = false",
    "e_data_bare": "(e) ADD COLUMN + UPDATE, no backup, no validate_before/after",
    "e_data_rollback": "(e) ADD COLUMN + UPDATE, state.db in rollback-journal mode",
    "e_data_backuponly": "(e) ADD COLUMN + UPDATE, backup only, no validate_before/after",
    "e_data_noafter": "(e) ADD COLUMN + UPDATE, validate_after = false",
    "k_migrate_backup": "migrate 1 trivial migration, backup_before = true, no validate",
    "k_backup_create": "backup create --no-verify",
    "a_apply_pair": "(a) apply all, empty -> head, interleaved with the other tool",
    "e_data_pair": "(e) ADD COLUMN + UPDATE, interleaved run by run with the floor, yoyo and dbmate",
    "k_backup_create_verify": "backup create",
    "k_migrate_nobackup": "migrate 1 trivial migration, backup_before = false, no validate",
}


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "-"
    return f"{a / b:.2f}x"


class Results:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.recs: dict[str, dict] = {}
        path = work / "results.jsonl"
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                self.recs[r["label"]] = r

    def get(self, tool: str, scen: str, n: str | int) -> dict | None:
        return self.recs.get(f"{tool}|{scen}|{n}")

    def reset(self, tool: str, scen: str, n: str | int) -> dict | None:
        """The reset timed alone for this scenario (None: the scenario has no reset)."""
        if scen.startswith("s_state_"):
            return self.get(tool, "s_reset_" + scen.removeprefix("s_state_"), n)
        shared = {"e_data": ("sqlite3-cli", "e_reset"), "s_state": ("sqlite3-cli", "s_reset"), "k_backup": ("cp", "k_reset"), "k_backup_create_floor": ("flywall", "k_create_reset")}  # fmt: skip
        own = {"a_apply": "a_reset", "a_apply_pair": "a_reset", "a_apply_each_tx": "a_reset", "c_rollback_reapply": "c_reset", "h_resume": "h_reset", "h_recover": "h_reset", "e_data": "e_reset", "e_data_pair": "e_reset", "e_data_nobackup": "e_reset", "e_data_bare": "e_reset", "e_data_rollback": "e_reset", "e_data_backuponly": "e_reset", "e_data_noafter": "e_reset", "k_migrate_backup": "k_reset", "k_migrate_nobackup": "k_reset", "k_backup_create": "k_create_reset", "k_backup_create_verify": "k_create_reset", "k_backup_same_reset": "k_reset", "l_full": "l_reset"}  # fmt: skip
        found = self.get(tool, own[scen], n) if scen in own else None
        if found is None and scen in shared:
            found = self.get(*shared[scen], n)
        return found

    def our_backup(self, n: str) -> float | None:
        """Our backup alone: `backup create --no-verify` (else the migrate difference below)."""
        if self.get(OURS, "k_backup_create", n):
            return self.net(OURS, "k_backup_create", n)
        return self.migrate_backup(n)

    def migrate_backup(self, n: str) -> float | None:
        """The backup a migrate takes: backup_before = true minus the same run without."""
        with_, without = (
            self.net(OURS, "k_migrate_backup", n),
            self.net(OURS, "k_migrate_nobackup", n),
        )
        if with_ is None or without is None or with_ <= without:
            return None  # not run, or noise larger than the backup itself
        return with_ - without

    def net(self, tool: str, scen: str, n: str | int) -> float | None:
        r = self.get(tool, scen, n)
        if r is None or r["rcs"] != [0]:
            return None
        rs = self.reset(tool, scen, n)
        return r["median"] - (rs["median"] if rs else 0.0)

    def peak(self, tool: str, scen: str, n: str | int) -> float | None:
        r = self.get(tool, scen, n)
        return None if r is None else r["peak_rss_mib"]

    def ns(self) -> list[str]:
        return sorted({k.split("|")[2] for k in self.recs if k.split("|")[1] == "a_apply"}, key=int)

    def kv(self, name: str) -> list[list[str]]:
        p = self.work / name
        if not p.exists():
            return []
        return [line.split("|", 1) for line in p.read_text(encoding="utf-8").splitlines()]

    def text(self, name: str) -> str:
        p = self.work / name
        return p.read_text(encoding="utf-8").strip() if p.exists() else ""

    def label_n(self, scen: str, tool: str = OURS) -> str | None:
        """The N (or rows, events, MiB) a scenario ran at, from its label."""
        for k in self.recs:
            t, s, n = k.split("|")
            if t == tool and s == scen:
                return n
        return None


NOISY = 0.25  # cores used by other processes during a measurement, above which it is flagged


def targets(res: Results) -> list[tuple[str, ...]]:  # noqa: C901, PLR0912, PLR0915 - one target after another
    """(target, ours, reference, ratio, cpu ratio, limit, verdict) for each target."""
    ns = res.ns()
    m = ns[-1] if ns else "1000"
    rows = []

    def add(name: str, ours: float | None, ref: float | None, limit: float, unit: str = "s", keys=None):  # fmt: skip
        cpu = "-"
        if keys is not None:
            a, b = res.get(OURS, *keys[0]), res.get(*keys[1])
            if a and b and b["cpu_median"] > 0:
                cpu = f"{a['cpu_median'] / b['cpu_median']:.2f}x"
                if max(a.get("others_median", 0), b.get("others_median", 0)) > NOISY:
                    cpu += " (noisy)"
        if ours is None or ref is None or ref <= 0:
            rows.append((name, fmt(ours), fmt(ref), "-", cpu, f"<= {limit}x", "not measured"))
            return
        r = ours / ref
        if r <= limit:
            verdict = "met"
        else:
            need = ours - limit * ref
            verdict = f"NOT met: {r / limit:.1f}x over the limit ({fmt(need)} {unit} to cut)"
        rows.append((name, fmt(ours), fmt(ref), f"{r:.2f}x", cpu, f"<= {limit}x", verdict))

    add(f"apply {m} incremental <= 1.0x dbmate", res.net(OURS, "a_apply", m), res.net("dbmate", "a_apply", m), 1.0, keys=(("a_apply", m), ("dbmate", "a_apply", m)))  # fmt: skip
    add(f"status {m} applied <= 0.10x yoyo", res.net(OURS, "b_status", m), res.net("yoyo", "b_status", m), 0.10, keys=(("b_status", m), ("yoyo", "b_status", m)))  # fmt: skip
    add(f"status {m} applied <= 3x dbmate", res.net(OURS, "b_status", m), res.net("dbmate", "b_status", m), 3.0, keys=(("b_status", m), ("dbmate", "b_status", m)))  # fmt: skip
    e = res.label_n("g_status")
    add(f"status with {e} events <= 1.2x status {m}", res.net(OURS, "g_status", e), res.net(OURS, "b_status", m), 1.2, keys=(("g_status", e), (OURS, "b_status", m)))  # fmt: skip
    # issue 18's first row: what every boot runs (answered by the boot memo), and without it
    add(f"migrate, nothing pending, {m} applied <= 2x dbmate", res.net(OURS, "f_noop", m), res.net("dbmate", "f_noop", m), 2.0, keys=(("f_noop", m), ("dbmate", "f_noop", m)))  # fmt: skip
    if res.get(OURS, "f_noop_nomemo", m):
        add("... boot memo off: <= 2x dbmate", res.net(OURS, "f_noop_nomemo", m), res.net("dbmate", "f_noop", m), 2.0, keys=(("f_noop_nomemo", m), ("dbmate", "f_noop", m)))  # fmt: skip
    # a boot (migrate, then recover, with nothing to do) costs on a long journal what it does on a new box
    add(f"migrate, nothing pending, {e} events <= 1.2x {m} applied", res.net(OURS, "g_noop", e), res.net(OURS, "f_noop", m), 1.2, keys=(("g_noop", e), (OURS, "f_noop", m)))  # fmt: skip
    add(f"recover, nothing to do, {e} events <= 1.2x {m} applied", res.net(OURS, "g_noop_recover", e), res.net(OURS, "f_noop_recover", m), 1.2, keys=(("g_noop_recover", e), (OURS, "f_noop_recover", m)))  # fmt: skip
    if res.get(OURS, "b_status_nomemo", m):  # the same three with every answer computed afresh
        add("... status memo off: <= 0.10x yoyo", res.net(OURS, "b_status_nomemo", m), res.net("yoyo", "b_status", m), 0.10, keys=(("b_status_nomemo", m), ("yoyo", "b_status", m)))  # fmt: skip
        add("... status memo off: <= 3x dbmate", res.net(OURS, "b_status_nomemo", m), res.net("dbmate", "b_status", m), 3.0, keys=(("b_status_nomemo", m), ("dbmate", "b_status", m)))  # fmt: skip
        add(f"... status memo off: {e} events <= 1.2x {m}", res.net(OURS, "g_status_nomemo", e), res.net(OURS, "b_status_nomemo", m), 1.2, keys=(("g_status_nomemo", e), (OURS, "b_status_nomemo", m)))  # fmt: skip
    for n in ns:
        add(f"rollback one + re-apply one (N={n}) <= 0.15x yoyo", res.net(OURS, "c_rollback_reapply", n), res.net("yoyo", "c_rollback_reapply", n), 0.15, keys=(("c_rollback_reapply", n), ("yoyo", "c_rollback_reapply", n)))  # fmt: skip
    deps = res.net("floor", "d_python_deps", "-")
    if deps:  # two processes that do nothing but start Python and import the fixed dependencies
        add(f"... floor: 2 python processes importing msgspec, transitions, apsw, blake3 (N={m})", 2 * deps, res.net("yoyo", "c_rollback_reapply", m), 0.15)  # fmt: skip
    add(
        "--help <= 0.35x yoyo",
        res.net(OURS, "d_help", "-"),
        res.net("yoyo", "d_help", "-"),
        0.35,
        keys=(("d_help", "-"), ("yoyo", "d_help", "-")),
    )
    rows_n = res.label_n("e_data")
    add(f"{rows_n}-row data migration, atomic <= 1.1x sqlite3 floor", res.net(OURS, "e_data", rows_n), res.net("sqlite3-cli", "e_data", rows_n), 1.1, keys=(("e_data", rows_n), ("sqlite3-cli", "e_data", rows_n)))  # fmt: skip
    for scen, what in (("e_data_nobackup", "backup_before = false"), ("e_data_bare", "no backup, no validate_before/after")):  # fmt: skip
        if res.get(OURS, scen, rows_n):
            add(f"... the same with {what}", res.net(OURS, scen, rows_n), res.net("sqlite3-cli", "e_data", rows_n), 1.1, keys=((scen, rows_n), ("sqlite3-cli", "e_data", rows_n)))  # fmt: skip
    if res.get(OURS, "e_data_rollback", rows_n):  # the floor's journal mode, ours with defaults
        add("... the same, defaults, state.db in rollback-journal mode as the floor's", res.net(OURS, "e_data_rollback", rows_n), res.net("sqlite3-cli", "e_data", rows_n), 1.1, keys=(("e_data_rollback", rows_n), ("sqlite3-cli", "e_data", rows_n)))  # fmt: skip
    if res.get(OURS, "e_data_pair", rows_n):  # the same, interleaved run by run
        for peer, limit in (("sqlite3-cli", 1.1), ("yoyo", 1.0), ("dbmate", 1.0)):
            if res.get(peer, "e_data_pair", rows_n):
                add(f"... defaults, interleaved run by run: <= {limit}x {peer}", res.net(OURS, "e_data_pair", rows_n), res.net(peer, "e_data_pair", rows_n), limit, keys=(("e_data_pair", rows_n), (peer, "e_data_pair", rows_n)))  # fmt: skip
    if res.get("sqlite3-cli-wal", "e_data", rows_n):  # ours (WAL) against the floor in WAL mode
        add("... defaults (WAL) against sqlite3 on the same database in WAL mode", res.net(OURS, "e_data", rows_n), res.net("sqlite3-cli-wal", "e_data", rows_n), 1.1, keys=(("e_data", rows_n), ("sqlite3-cli-wal", "e_data", rows_n)))  # fmt: skip
    s_n = res.label_n("s_state_batched")
    add(f"{s_n}-row state migration, batched <= 1.3x plain SQLite UPDATE", res.net(OURS, "s_state_batched", s_n), res.net("sqlite3-cli", "s_state", s_n), 1.3, keys=(("s_state_batched", s_n), ("sqlite3-cli", "s_state", s_n)))  # fmt: skip
    if res.get(OURS, "s_state_sql", s_n):
        add("... the same written with records.transform_sql", res.net(OURS, "s_state_sql", s_n), res.net("sqlite3-cli", "s_state", s_n), 1.3, keys=(("s_state_sql", s_n), ("sqlite3-cli", "s_state", s_n)))  # fmt: skip
    if res.get(OURS, "a_apply_pair", m):  # the same, interleaved run by run with dbmate
        add(f"apply {m} incremental <= 1.0x dbmate, interleaved", res.net(OURS, "a_apply_pair", m), res.net("dbmate", "a_apply_pair", m), 1.0, keys=(("a_apply_pair", m), ("dbmate", "a_apply_pair", m)))  # fmt: skip
    add(f"`full` strategy apply {m} <= 0.25x dbmate", res.net(OURS, "l_full", m), res.net("dbmate", "a_apply", m), 0.25, keys=(("l_full", m), ("dbmate", "a_apply", m)))  # fmt: skip
    k = res.label_n("k_backup", "cp")
    if res.get("cp+fsync", "k_backup_create_floor", k):  # interleaved, after the same reset
        add(f"backup of {k} MiB <= 1.2x cp + fsync (interleaved, same reset)", res.our_backup(k), res.net("cp+fsync", "k_backup_create_floor", k), 1.2)  # fmt: skip
        add("... against cp + fsync timed apart", res.our_backup(k), res.net("cp+fsync", "k_backup", k), 1.2)  # fmt: skip
    else:
        add(f"backup of {k} MiB <= 1.2x cp + fsync", res.our_backup(k), res.net("cp+fsync", "k_backup", k), 1.2)  # fmt: skip
    if res.get("cp+fsync", "k_backup_same_reset", k):
        add("... the backup migrate takes (a difference of two runs) against cp + fsync after migrate's reset", res.migrate_backup(k), res.net("cp+fsync", "k_backup_same_reset", k), 1.2)  # fmt: skip
    add(f"peak memory, apply {m} <= yoyo's (MiB)", res.peak(OURS, "a_apply", m), res.peak("yoyo", "a_apply", m), 1.0, "MiB")  # fmt: skip
    return rows


def ratio_table(res: Results) -> list[str]:  # noqa: C901, PLR0912 - one row after another
    ns = res.ns()
    m = ns[-1] if ns else "1000"
    out = [
        "| scenario | N | flywall | yoyo | alembic | dbmate | floor | ours/yoyo | ours/alembic | ours/dbmate | ours/floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(label: str, n: str, scen: str, floor: tuple[str, str] | None, ours_scen: str = ""):
        key = None
        ours = res.net(OURS, ours_scen or scen, key or n)
        peers = [res.net(p, scen, key or n) for p in PEERS]
        fl = res.net(floor[0], floor[1], key or n) if floor else None
        cells = [fmt(ours), *[fmt(p) for p in peers], fmt(fl)]
        ratios = [ratio(ours, p) for p in peers] + [ratio(ours, fl)]
        out.append(f"| {label} | {n} | " + " | ".join(cells + ratios) + " |")

    for n in ns:
        row(SCEN["a_apply"], n, "a_apply", ("sql", "a_apply_each_tx"))
    for n in ns:
        row(SCEN["b_status"], n, "b_status", None)
    for n in ns:
        if res.get(OURS, "b_status_nomemo", n):
            row(SCEN["b_status_nomemo"], n, "b_status", None, ours_scen="b_status_nomemo")
    for n in ns:
        row(SCEN["c_rollback_reapply"], n, "c_rollback_reapply", ("sql", "c_rollback_reapply"))
    row(SCEN["d_help"], "-", "d_help", ("floor", "d_python"))
    if res.label_n("f_noop"):
        row(SCEN["f_noop"], m, "f_noop", None)
        if res.get(OURS, "f_noop_nomemo", m):
            row(SCEN["f_noop_nomemo"], m, "f_noop", None, ours_scen="f_noop_nomemo")
    if res.label_n("h_resume"):
        row(SCEN["h_resume"], m, "h_resume", None)
    e = res.label_n("e_data")
    if e:
        row(SCEN["e_data"], e, "e_data", ("sqlite3-cli", "e_data"))
        for variant in (
            "e_data_nobackup",
            "e_data_bare",
            "e_data_backuponly",
            "e_data_noafter",
            "e_data_rollback",
        ):
            if res.get(OURS, variant, e):
                row(SCEN[variant], e, "e_data", ("sqlite3-cli", "e_data"), variant)
    # peak memory of (a)
    for n in ns:
        ours = res.peak(OURS, "a_apply", n)
        peers = [res.peak(p, "a_apply", n) for p in PEERS]
        cells = [f"{x:.1f}" if x else "-" for x in [ours, *peers]] + ["-"]
        ratios = [ratio(ours, p) for p in peers] + ["-"]
        out.append(f"| peak MiB, (a) apply | {n} | " + " | ".join(cells + ratios) + " |")
    k = res.label_n("k_backup", "cp")
    if k:
        cp = res.net("cp", "k_backup", k)
        ours = res.our_backup(k)
        cell, rel = (fmt(ours), ratio(ours, cp)) if ours is not None else (NA, "-")
        out.append(
            f"| backup of a {k} MiB state.db (floor: cp) | - | {cell} | - | - | - | {fmt(cp)} | - | - | - | {rel} |"
        )
    if res.get(OURS, "l_full", m):
        ours = res.net(OURS, "l_full", m)
        peers = [res.net(p, "a_apply", m) for p in PEERS]
        fl = res.net("sql", "a_apply", m)
        cells = [fmt(ours), *[fmt(p) for p in peers], fmt(fl)]
        ratios = [ratio(ours, p) for p in peers] + [ratio(ours, fl)]
        out.append(f"| `full` strategy apply (peers: their (a)) | {m} | " + " | ".join(cells + ratios) + " |")  # fmt: skip
    else:
        out.append(f"| `full` strategy apply of {m} | {m} | {NA} | - | - | - | - | - | - | - | - |")
    out.append("")
    out.append(
        "floor: (a) sqlite3 CLI with one commit per CREATE (the least any tool committing per "
        "migration can do); (c) two sqlite3 calls (DROP, CREATE); (d) `python -c pass` (the "
        "interpreter's start-up); (e) the sqlite3 CLI running the same two statements; `full`: "
        "the sqlite3 CLI running all the CREATEs in one transaction."
    )
    return out


def ours_table(res: Results) -> list[str]:  # noqa: C901, PLR0912, PLR0915 - one row after another
    ns = res.ns()
    m = ns[-1] if ns else "1000"
    out = ["| scenario | size | net median | [min-max] | cpu | peak MiB | note |", "|---|---|---|---|---|---|---|"]  # fmt: skip

    def row(tool: str, scen: str, size: str, label: str, note: str = ""):
        r = res.get(tool, scen, size)
        if r is None:
            return
        v = res.net(tool, scen, size)
        rs = res.reset(tool, scen, size)
        sub = rs["median"] if rs else 0.0
        rng = f"[{fmt(r['min'] - sub)}-{fmt(r['max'] - sub)}]"
        bad = "" if r["rcs"] == [0] else f" rc={r['rcs']}"
        out.append(
            f"| {label} | {size} | {fmt(v)}{bad} | {rng} | {fmt(r['cpu_median'])} | {r['peak_rss_mib']:.1f} | {note} |"
        )

    e = res.label_n("g_status")
    if e:
        base = res.net(OURS, "b_status", m)
        g = res.net(OURS, "g_status", e)
        row(OURS, "b_status", m, f"status, {m} applied (2 events per migration)")
        row(OURS, "g_status", e, f"status, {m} applied, {e} events", f"{ratio(g, base)} the {m} figure")  # fmt: skip
        base_nm = res.net(OURS, "b_status_nomemo", m)
        if base_nm:
            row(OURS, "b_status_nomemo", m, f"status, {m} applied, memo off (FLYWALL_NO_STATUS_MEMO=1)")  # fmt: skip
            g_nm = res.net(OURS, "g_status_nomemo", e)
            row(OURS, "g_status_nomemo", e, f"status, {e} events, memo off", f"{ratio(g_nm, base_nm)} the memo-off {m} figure")  # fmt: skip
        nosnap = res.net(OURS, "g_status_nosnap", e)
        row(OURS, "g_status_nosnap", e, "status, same journal, snapshot deleted, memo off", f"{ratio(nosnap, base_nm or base)} the {'memo-off ' if base_nm else ''}{m} figure")  # fmt: skip
        row(OURS, "g_verify", e, "journal verify, same journal")
        noop_m = res.net(OURS, "f_noop", m)
        noop_e = res.net(OURS, "g_noop", e)
        row(OURS, "f_noop", m, f"migrate, nothing pending, {m} applied")
        row(OURS, "g_noop", e, f"migrate, nothing pending, {e} events", f"{ratio(noop_e, noop_m)} the {m} figure")  # fmt: skip
        if res.get(OURS, "f_noop_nomemo", m):
            nm_m = res.net(OURS, "f_noop_nomemo", m)
            nm_e = res.net(OURS, "g_noop_nomemo", e)
            row(OURS, "f_noop_nomemo", m, f"migrate, nothing pending, {m} applied, boot memo off (FLYWALL_NO_BOOT_MEMO=1)")  # fmt: skip
            row(OURS, "g_noop_nomemo", e, f"migrate, nothing pending, {e} events, boot memo off", f"{ratio(nm_e, nm_m)} the memo-off {m} figure")  # fmt: skip
        if res.get(OURS, "g_noop_recover", e):
            rec_m = res.net(OURS, "f_noop_recover", m)
            rec_e = res.net(OURS, "g_noop_recover", e)
            row(OURS, "f_noop_recover", m, f"recover, nothing to do, {m} applied")
            row(OURS, "g_noop_recover", e, f"recover, nothing to do, {e} events", f"{ratio(rec_e, rec_m)} the {m} figure")  # fmt: skip
    h = res.label_n("h_resume")
    if h:
        row(OURS, "h_recover", h, f"recover alone, killed inside migration {int(h) // 2 + 1}")
        row(OURS, "h_resume", h, "migrate after the kill (recover + apply the rest)")
    e_n = res.label_n("e_data", "sqlite3-cli")
    if e_n:
        floor = res.net("sqlite3-cli", "e_data", e_n)
        for tool, scen, label in (
            ("sqlite3-cli", "e_data", "(e) sqlite3 CLI, rollback journal (the floor)"),
            ("sqlite3-cli-wal", "e_data", "(e) sqlite3 CLI, the same database in WAL mode"),
            ("python-sqlite3", "e_data", "(e) python sqlite3, rollback journal"),
            (OURS, "e_data", "(e) flywall, defaults, state.db in WAL mode (as it creates it)"),
            (OURS, "e_data_rollback", "(e) flywall, defaults, state.db in rollback-journal mode"),
            (OURS, "e_data_bare", "(e) flywall, WAL, no backup, no validate_before/after"),
        ):
            row(tool, scen, e_n, label, f"{ratio(res.net(tool, scen, e_n), floor)} the floor")
    s = res.label_n("s_state", "sqlite3-cli")
    if s:
        floor = res.net("sqlite3-cli", "s_state", s)
        for tool, scen, label in (
            ("sqlite3-cli", "s_state", "plain SQLite UPDATE (json_object), one transaction"),
            ("python-sqlite3", "s_state", "python sqlite3 + the same function, one transaction"),
            (OURS, "s_state_batched", "flywall state migration, batched"),
            (OURS, "s_state_atomic", "flywall state migration, atomic"),
            (OURS, "s_state_sql", "flywall state migration, batched, written with transform_sql"),
        ):
            v = res.net(tool, scen, s)
            rate = f"{int(s) / v:,.0f} rows/s" if v else "-"
            row(tool, scen, s, label, f"{rate}; {ratio(v, floor)} the plain UPDATE")
    k = res.label_n("k_backup", "cp")
    if k:
        size = float(res.text("backup_size.txt") or k)
        for tool, label in (("cp", "cp"), ("cp+fsync", "cp, then fsync the copy"), ("sqlite3-backup", "sqlite3 .backup")):  # fmt: skip
            v = res.net(tool, "k_backup", k)
            row(tool, "k_backup", k, label, f"{size / v:,.0f} MiB/s" if v else "")
        same = res.net("cp+fsync", "k_backup_same_reset", k)
        if same:
            row("cp+fsync", "k_backup_same_reset", k, "cp, then fsync, after our reset", f"{size / same:,.0f} MiB/s")  # fmt: skip
        floor = res.net("cp+fsync", "k_backup_create_floor", k)
        if floor:
            row("cp+fsync", "k_backup_create_floor", k, "cp, then fsync, interleaved with backup create (same reset)", f"{size / floor:,.0f} MiB/s")  # fmt: skip
        row(
            OURS,
            "k_migrate_backup",
            k,
            "flywall migrate, 1 pending, backup_before = true, validate off",
        )
        row(
            OURS,
            "k_migrate_nobackup",
            k,
            "flywall migrate, 1 pending, backup_before = false, validate off",
        )
        cp = res.net("cp", "k_backup", k)
        synced = res.net("cp+fsync", "k_backup", k)

        def against(ours: float) -> str:
            return (
                f"{size / ours:,.0f} MiB/s; {ratio(ours, cp)} cp, {ratio(ours, synced)} cp + fsync"
                + (f", {ratio(ours, same)} cp + fsync after our reset" if same else "")
            )

        ours = res.migrate_backup(k)
        if ours is None:
            out.append(f"| flywall backup | {k} | {NA} | | | | |")
        else:
            out.append(
                f"| flywall backup taken by migrate (the difference of the two rows above) | {k} | {fmt(ours)} | | | | {against(ours)} |"
            )
        for scen, label in (
            ("k_backup_create", "flywall backup create --no-verify (whole process)"),
            ("k_backup_create_verify", "flywall backup create (whole process, re-reads the copy)"),
        ):
            v = res.net(OURS, scen, k)
            if v:
                row(OURS, scen, k, label, against(v))
    if res.get(OURS, "l_full", m):
        row(OURS, "l_full", m, f"`full` strategy, apply {m}, empty -> head", f"{ratio(res.net(OURS, 'l_full', m), res.net(OURS, 'a_apply', m))} incremental")  # fmt: skip
    else:
        out.append(f"| flywall `full` strategy apply | {m} | {NA} | | | | |")
    return out


GUARANTEES = (
    ("backup_before (copy, digest, journal copy; beside the step's SQL), no validation", "e_data_backuponly", "e_data_bare"),
    ("validate_before (quick_check etc.; beside the step's SQL, with the backup copy)", "e_data_noafter", "e_data_backuponly"),
    ("validate_after (quick_check etc., alongside the checkpoint)", "e_data", "e_data_noafter"),
    ("validate_before + validate_after, no backup", "e_data_nobackup", "e_data_bare"),
    ("the whole safety net (defaults against bare)", "e_data", "e_data_bare"),
    ("WAL against the rollback journal, defaults", "e_data", "e_data_rollback"),
    ("WAL against the rollback journal, sqlite3 CLI alone", ("sqlite3-cli-wal", "e_data"), ("sqlite3-cli", "e_data")),
    ("flywall bare over the sqlite3 CLI in WAL mode (start-up, journal, run)", "e_data_bare", ("sqlite3-cli-wal", "e_data")),
)  # fmt: skip
"""(line, with, without): each guarantee's cost is the net median of `with` minus `without`."""


def guarantee_costs(res: Results) -> list[str]:
    """One line per guarantee of the (e) migration: wall and cpu, as a difference of two rows.

    A difference of two medians of a loaded machine can come out negative: it is printed as
    measured (noise larger than the cost), never clamped.
    """
    n = res.label_n("e_data")
    if not n:
        return []
    out = ["| guarantee | with | without | wall cost | cpu cost |", "|---|---|---|---|---|"]

    def key(k: str | tuple[str, str]) -> tuple[str, str]:
        return (OURS, k) if isinstance(k, str) else k

    for label, with_, without in GUARANTEES:
        a, b = key(with_), key(without)
        wa, wb = res.net(*a, n), res.net(*b, n)
        ra, rb = res.get(*a, n), res.get(*b, n)
        if wa is None or wb is None or ra is None or rb is None:
            continue
        cpu = ra["cpu_median"] - rb["cpu_median"]
        out.append(f"| {label} | {a[0]} {a[1]} | {b[0]} {b[1]} | {wa - wb:+.3f} s | {cpu:+.3f} s |")
    return out if len(out) > 2 else []


def detail(res: Results) -> list[str]:
    out = [
        "| tool | scenario | size | median | [min-max] | reset | net | cpu | peak MiB | runs | others |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in res.recs.items():
        tool, scen, n = key.split("|")
        if "reset" in scen:
            continue
        rs = res.reset(tool, scen, n)
        reset = rs["median"] if rs else None
        fl = r.get("rss_floor_mib", 0)
        peak = f"<={fl:.0f} (floor)" if r["peak_rss_mib"] < fl + 1 else f"{r['peak_rss_mib']:.1f}"
        bad = "" if r["rcs"] == [0] else f" rc={r['rcs']}"
        out.append(
            f"| {tool} | {SCEN.get(scen, scen)} | {n} | {fmt(r['median'])} | "
            f"[{fmt(r['min'])}-{fmt(r['max'])}] | {fmt(reset)} | "
            f"{fmt(r['median'] - (reset or 0))} | {fmt(r['cpu_median'])} | {peak} | {r['runs']}{bad} | "
            f"{r.get('others_median', 0):.2f} |"
        )
    return out


CACHE_FIGURES = """\
Measured by hand when each cache was introduced (issues 7 and 17), not by `make bench`;
they say what a miss costs, and so why each cache exists (docs/caches.md):

- status memo: a fresh `status` imports msgspec, apsw and the projection and reads a
  thousand migration files and two databases, ~60 ms; a memo hit is a few stats.
- settings cache: a flywall.hcl that `plainhcl` declines goes to python-hcl2, ~80 ms and
  ~23 MiB per cold process (importing hcl2 and Lark alone: ~40 ms and ~20 MiB); a plain
  file is read in well under a millisecond, with no cache I/O.
- discovery cache: files whose stat is unchanged are neither read, hashed nor parsed.
- projection snapshot: a read replays only the events appended since it.
"""

METHOD = """\
- Whole processes, start-up included, timed by `bench/benchtime.py` (wall from spawn to
  reap; CPU = user+sys; peak = the largest single process's max RSS, over all runs).
  Median of the runs after one warm-up; [min-max] shown. A command whose warm-up took
  under 0.25 s runs 15 times (a 30 ms median of 5 moves with one scheduler hiccup).
- Mutating scenarios run as `sh -c '<reset> && exec tool ...'`; the reset (rm/cp of the
  DB files, or of our `var/` tree: state.db + journal) is timed alone and subtracted (*net*).
- Every tool gets the same generated SQL (`bench/gen.py`, from ../shared/peers/migsql.py):
  migration i = `CREATE TABLE t_i(...)` / `DROP TABLE t_i`. Ours runs with
  `include_shipped = false`, so only these run. Peers as in ../shared/peers: yoyo SQL files
  (`--batch --no-config-file`), alembic `op.execute` revisions (generic template, INFO
  logging on), dbmate's native binary with `--no-dump-schema`.
- Status: ours `status`, yoyo `list`, alembic `current`, dbmate `status`.
  (c): ours `rollback --steps 1` then `migrate`; yoyo `rollback -r last` then `apply`;
  alembic `downgrade -1` then `upgrade +1`; dbmate `rollback` then `migrate`.
- Long journal: a real `migrate` of M migrations, then `bench/journal_gen.py` rewrites that
  journal as the start of a year of history and appends rollback/re-apply runs (one
  re-apply in ten failing once first) with the engine's own events, encoders, hash chain,
  lifecycle checks and projection snapshot; `journal verify`, `validate` and `status`
  accept it (checked each run).
- Recovery: ours is SIGKILLed (`FLYWALL_CRASH_AT=database-before-commit:K`) inside migration
  K = M/2+1, leaving its uncommitted transaction in state.db's WAL (or hot rollback
  journal); the tree is copied as the kill left it and restored before each run. Peers have no recovery step: SQLite's rollback journal
  undoes the killed migration, so their equivalent is re-running apply from K-1 applied.
- State migration: `lease_records(mac, data JSON)` like the demo tree's, reshaped by the
  same function as the shipped 202312010008 migration; the plain floor is one SQLite
  UPDATE with json_object() producing byte-identical JSON (checked: same row count and
  total bytes), and the same Python function over Python's sqlite3 is shown too.
- Ours runs with the seed's defaults unless a row says otherwise: `backup_before`,
  `validate_before` and `validate_after` are on (a backup of state.db and two
  `PRAGMA quick_check`s per `migrate` that has work to do). (e) is also shown without them.
  The settings cache (var/cache/flywall) is wiped with `var/` by the resets of (a), the
  state migration and the backup: those runs parse flywall.hcl, as a fresh box does; (e)
  and its variants start from a tree whose caches are warm for their own flywall.hcl.
- Backup: a SQLite file of BACKUP_MB MiB of random blobs, already in the page cache;
  `cp` alone does not make the copy durable, so `cp + sync FILE` is shown as well.
- Python bytecode is cached for every tool (PYTHONPYCACHEPREFIX under the work dir;
  PYTHONDONTWRITEBYTECODE unset), as for installed software; the warm-up run fills it.
- Shared 2-core VM: +-15 % between runs is normal; compare only numbers from one run.
  *others* = CPU used by every other process during the runs (median, in cores, from
  /proc/stat); each measurement first waits up to BENCH_QUIET_WAIT s for a quiet machine.
  The *cpu ratio* of the targets (user+sys of ours / of the reference) shrugs off most
  contention; it leaves out I/O waits (fsync), which count in wall time.
"""


def main() -> int:
    work = Path(sys.argv[1]).resolve()
    res = Results(work)
    summary = "--summary" in sys.argv
    w: list[str] = []
    tg = [
        "| target | ours | reference | ratio | cpu ratio | limit | verdict |",
        "|---|---|---|---|---|---|---|",
        *("| " + " | ".join(t) + " |" for t in targets(res)),
    ]
    if summary:
        print("\n".join(["Targets (net medians, one run)", "", *tg, "", "Ours / each peer", "", *ratio_table(res)]))  # fmt: skip
        return 0
    machine = dict(res.kv("machine.txt"))
    w.append("# Benchmark: flywall migration against yoyo, alembic and dbmate\n")
    w.append(
        f"Generated by `make bench` (`bench/run.sh`) on {machine.get('date', '?')}. Every figure "
        "is the **median of whole-process runs** in seconds (start-up included), *net* of the "
        "reset it needs; ratios are ours / theirs **from this one run**. Times are never asserted "
        "by tests; this file is a report.\n"
    )
    w.append("## Machine and versions\n")
    w.append("| item | value |\n|---|---|")
    w.extend(f"| {k} | {v} |" for k, v in res.kv("machine.txt") + res.kv("versions.txt"))
    w.append("")
    failed = res.text("failed_checks.txt")
    if failed:
        w.append("**Correctness checks FAILED for:** " + ", ".join(failed.splitlines()) + "\n")
    else:
        w.append(
            "All correctness checks passed (tables after (a)/(c)/resume, filled rows after (e), "
            "identical JSON after the state migrations, the long journal accepted by "
            "`journal verify` and `status`, the kill left one interrupted migration).\n"
        )
    noisy = [k for k, r in res.recs.items() if r.get("others_median", 0) > NOISY]
    if noisy:
        w.append(
            f"**{len(noisy)} of {len(res.recs)} measurements ran while other processes used more "
            f"than {NOISY} cores** (column *others* below; a shared 2-core machine): "
            + ", ".join(f"`{k}`" for k in noisy[:12])
            + (" ..." if len(noisy) > 12 else "")
            + ". Their wall times are inflated; the cpu ratios are steadier.\n"
        )
    w.append("## Targets\n")
    w.extend(tg)
    w.append("")
    w.append("## Ours / each peer (net median seconds)\n")
    w.extend(ratio_table(res))
    w.append("")
    w.append("## Ours alone: long journal, recovery, state migration, backup\n")
    w.extend(ours_table(res))
    w.append("")
    costs = guarantee_costs(res)
    if costs:
        w.append("## What each guarantee costs: (e), differences of two runs\n")
        w.extend(costs)
        w.append("")
    notes = res.text("notes.txt")
    if notes:
        w.append("Notes from the run:\n")
        w.extend(f"- {line}" for line in notes.splitlines())
        w.append("")
    w.append("## Every measurement\n")
    w.extend(detail(res))
    w.append("")
    w.append("## Method\n")
    w.append(METHOD)
    w.append("## Cache figures\n")
    w.append(CACHE_FIGURES)
    print("\n".join(w))
    return 0


if __name__ == "__main__":
    sys.exit(main())
