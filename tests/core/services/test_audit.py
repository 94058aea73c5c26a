"""Audit and forensics: replay to a point, history filters, export verified offline, device key."""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import json
import re
import time
from typing import TYPE_CHECKING

import apsw
import pytest
from conftest import Appliance, create_table_migration

from flywall.core import commands
from flywall.core.model.errors import JournalTampered, SettingsError, UsageError
from flywall.core.services import audit
from flywall.journal import event_hash

if TYPE_CHECKING:
    from pathlib import Path

KEY_HEX = "00112233445566778899aabbccddeeff" * 2


def two_runs(app: Appliance) -> None:
    create_table_migration(app, "202401010001", "hosts")
    commands.migrate(app.workspace())
    time.sleep(0.01)
    create_table_migration(app, "202401010002", "leases")
    commands.migrate(app.workspace())


def finished_seqs(app: Appliance) -> list[int]:
    return [e["seq"] for e in commands.history(app.workspace(), kinds=("RunFinished",))]


def test_replay_until_a_seq_shows_the_state_as_it_was_then(appliance: Appliance) -> None:
    two_runs(appliance)
    first_end = finished_seqs(appliance)[0]

    then = audit.replay(appliance.workspace(), str(first_end))
    now = audit.replay(appliance.workspace(), str(finished_seqs(appliance)[1]))

    assert then.seq == first_end
    assert [(m["version"], m["state"]) for m in then.migrations] == [("202401010001", "applied")]
    assert then.counts["applied"] == 1
    assert now.counts["applied"] == 2
    assert then.last_run is not None
    assert then.last_run["outcome"] == "completed"


def test_replay_until_a_time_takes_the_last_event_at_or_before_it(appliance: Appliance) -> None:
    two_runs(appliance)
    first_end = finished_seqs(appliance)[0]
    ws = appliance.workspace()
    journal = ws.read_journal()
    assert journal is not None
    with journal:
        (row,) = journal.read(after=first_end - 1, until=first_end)
    micros = row.at_ns // 1000
    when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)

    assert audit.replay(ws, when.isoformat()).seq == first_end
    assert audit.replay(ws, when.isoformat().replace("+00:00", "Z")).seq == first_end
    shown = commands.history(ws)[first_end - 1]["at"]  # as history prints it: milliseconds
    assert audit.replay(ws, shown).seq == first_end
    assert audit.replay(ws, "2001-01-01").seq == 0


def test_replay_past_the_head_or_of_nonsense_is_a_usage_error(appliance: Appliance) -> None:
    two_runs(appliance)

    with pytest.raises(UsageError, match="ends at seq"):
        audit.replay(appliance.workspace(), "9999")
    with pytest.raises(UsageError, match="neither a seq nor an ISO-8601 time"):
        audit.replay(appliance.workspace(), "yesterday")


def test_replay_cli_prints_the_past_status(appliance: Appliance) -> None:
    two_runs(appliance)
    first_end = finished_seqs(appliance)[0]

    result = appliance.cli("replay", "--until", str(first_end))

    assert result.returncode == 0, result.stderr
    assert f"as of seq {first_end} (" in result.stdout
    assert "202401010001  database   applied" in result.stdout
    assert "202401010002" not in result.stdout
    as_json = json.loads(appliance.cli("replay", "--until", "1", "--json").stdout)
    assert as_json["seq"] == 1
    assert as_json["running"][0]["command"] == "migrate"


def test_history_filters_by_kind_actor_seq_and_time(appliance: Appliance) -> None:
    two_runs(appliance)
    ws = appliance.workspace()
    everything = commands.history(ws)

    started = commands.history(ws, kinds=("RunStarted", "RunFinished"))
    assert [e["kind"] for e in started] == ["RunStarted", "RunFinished"] * 2

    mine = commands.history(ws, actor=getpass.getuser())
    assert len(mine) == len(everything)
    assert commands.history(ws, actor="mallory") == []
    theirs = commands.history(ws, migration="202401010002", actor=getpass.getuser())
    assert theirs
    assert {e["migration"] for e in theirs} == {"202401010002"}

    window = commands.history(ws, since="2", until="4")
    assert [e["seq"] for e in window] == [2, 3, 4]
    second_at = everything[finished_seqs(appliance)[0]]["at"]  # the 2nd run's first event
    later = commands.history(ws, since=second_at)
    assert later[0]["seq"] >= finished_seqs(appliance)[0]
    assert later[-1]["seq"] == everything[-1]["seq"]

    with pytest.raises(UsageError, match="unknown event kind 'Nope'"):
        commands.history(ws, kinds=("Nope",))


def test_history_cli_takes_the_filters(appliance: Appliance) -> None:
    two_runs(appliance)

    result = appliance.cli(
        "history", "--kind", "MigrationApplied", "--actor", getpass.getuser(), "--json"
    )

    assert result.returncode == 0, result.stderr
    assert [e["migration"] for e in json.loads(result.stdout)] == ["202401010001", "202401010002"]


# -- export ------------------------------------------------------------------------


def export(app: Appliance, path: Path) -> list[dict[str, object]]:
    result = app.cli("journal", "export", "--output", str(path))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_export_verifies_offline_and_matches_the_journal(
    appliance: Appliance, tmp_path: Path
) -> None:
    two_runs(appliance)
    lines = export(appliance, tmp_path / "journal.jsonl")

    report = audit.verify_export(appliance.workspace(), tmp_path / "journal.jsonl")

    assert report.events == len(lines) == len(commands.history(appliance.workspace()))
    assert report.head_hash == commands.journal_verify(appliance.workspace()).head_hash
    assert lines[0]["kind"] == "RunStarted"
    assert lines[0]["event"]["command"] == "migrate"  # type: ignore[index]
    stdout = appliance.cli("journal", "export").stdout
    assert stdout == (tmp_path / "journal.jsonl").read_text()
    ok = appliance.cli("journal", "verify-export", str(tmp_path / "journal.jsonl"))
    assert ok.returncode == 0
    assert ok.stdout.startswith(f"ok: {len(lines)} events")


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("body", "hash does not match the event's content"),
        ("event", "readable fields (event, at) disagree with the hashed body"),
        ("at_ns", "hash does not match the event's content"),
        ("drop", "expected seq 3"),  # line 3 now holds seq 4
    ],
)
def test_a_tampered_export_line_is_named_by_line_and_seq(
    appliance: Appliance, tmp_path: Path, field: str, expected: str
) -> None:
    two_runs(appliance)
    path = tmp_path / "journal.jsonl"
    lines = export(appliance, path)
    line = lines[2]  # seq 3
    if field == "body":
        raw = bytearray(base64.b64decode(line["body"]))  # type: ignore[arg-type]
        raw[-1] ^= 1
        line["body"] = base64.b64encode(bytes(raw)).decode()
    elif field == "event":
        line["event"] = {**line["event"], "injected": "by someone"}  # type: ignore[dict-item]
    elif field == "at_ns":
        line["at_ns"] = int(line["at_ns"]) + 1  # type: ignore[call-overload]
        line["at"] = commands.iso(int(line["at_ns"]))  # type: ignore[call-overload]
    else:
        del lines[2]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))

    result = appliance.cli("journal", "verify-export", str(path))

    assert result.returncode == 4
    seq = 4 if field == "drop" else 3
    assert result.stderr == f"FAILED: {path}:3 (seq {seq}): {expected}\n"


# -- device key --------------------------------------------------------------------


def with_device_key(app: Appliance, mode: int = 0o600) -> Path:
    key = app.root / "etc/flywall/device.key"
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text(KEY_HEX + "\n")
    key.chmod(mode)
    app.configure('device_key_file = "device.key"\n')
    return key


def tamper_and_rechain(app: Appliance, seq: int) -> None:
    """Alter row `seq`, then recompute every later hash *without* any key.

    What a person with write access but no device key can do at most.
    """
    conn = apsw.Connection(str(app.journal))
    conn.execute("DROP TRIGGER events_refuse_update")
    rows = list(
        conn.execute(
            "SELECT seq, at_ns, run_id, migration, kind, body, prev_hash FROM events ORDER BY seq"
        )
    )
    prev = None
    for s, at_ns, run_id, migration, kind, body, prev_hash in rows:
        if s < seq:
            continue
        link = prev_hash if prev is None else prev
        new_run = run_id + "x" if s == seq else run_id  # as if another run had done it
        digest = event_hash(link, s, at_ns, kind, new_run, migration, body)
        conn.execute(
            "UPDATE events SET run_id = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (new_run, link, digest, s),
        )
        prev = digest
    conn.close()


def test_a_rechained_tampered_row_is_caught_only_with_the_device_key(
    appliance: Appliance, tmp_path: Path
) -> None:
    """Without a key anyone can recompute the chain; with it the MAC names the row."""
    plain = Appliance(tmp_path / "plain")
    plain.configure()
    for app in (plain, appliance):
        create_table_migration(app, "202401010001", "hosts")
    with_device_key(appliance)
    for app in (plain, appliance):
        app.migrate()
        tamper_and_rechain(app, 3)

    assert plain.cli("journal", "verify").returncode == 0  # the limit of a plain chain
    result = appliance.cli("journal", "verify")
    assert result.returncode == 4
    assert result.stderr == "FAILED: journal is corrupt at seq 3: hash does not match the event's content\n"  # fmt: skip


@pytest.mark.parametrize("keyed", [False, True])
def test_a_tampered_row_is_named_with_and_without_the_device_key(
    appliance: Appliance, keyed: bool
) -> None:
    if keyed:
        with_device_key(appliance)
    two_runs(appliance)
    conn = apsw.Connection(str(appliance.journal))
    conn.execute("DROP TRIGGER events_refuse_update")
    conn.execute("UPDATE events SET at_ns = at_ns + 1 WHERE seq = 4")
    conn.close()

    result = appliance.cli("journal", "verify")

    assert result.returncode == 4
    assert re.fullmatch(r"FAILED: journal is corrupt at seq 4: .+\n", result.stderr)
    assert appliance.cli("migrate").returncode == 4  # nothing writes on a broken chain


def test_a_plain_journal_fails_with_a_key_and_a_keyed_one_without(appliance: Appliance) -> None:
    create_table_migration(appliance, "202401010001", "hosts")
    appliance.migrate()
    with_device_key(appliance)

    with_key = appliance.cli("journal", "verify")

    assert with_key.returncode == 4
    assert with_key.stderr == (
        "FAILED: journal is corrupt at seq 1: this journal was written without a device key, "
        "but a key is given (flywall migration journal adopt-key starts keying it)\n"
    )

    keyed = Appliance(appliance.root.parent / "keyed")
    with_device_key(keyed)
    create_table_migration(keyed, "202401010001", "hosts")
    keyed.migrate()
    assert keyed.cli("journal", "verify").returncode == 0
    keyed.configure()  # the key is no longer configured

    without = keyed.cli("journal", "verify")

    assert without.returncode == 4
    assert without.stderr == (
        "FAILED: journal is corrupt at seq 1: this journal is keyed (device key MAC); "
        "no key given\n"
    )


def test_a_keyed_export_verifies_only_with_the_key(appliance: Appliance, tmp_path: Path) -> None:
    with_device_key(appliance)
    two_runs(appliance)
    path = tmp_path / "journal.jsonl"
    export(appliance, path)
    assert audit.verify_export(appliance.workspace(), path).keyed

    appliance.configure()
    result = appliance.cli("journal", "verify-export", str(path))

    assert result.returncode == 4
    assert "journal.jsonl:1 (seq 1): hash does not match" in result.stderr
    assert "a keyed journal?" in result.stderr


def test_the_device_key_file_must_be_private_and_well_formed(appliance: Appliance) -> None:
    key = with_device_key(appliance, mode=0o644)
    with pytest.raises(SettingsError, match=r"device.key: device key file must be mode 0600"):
        appliance.workspace().device_key()
    result = appliance.cli("status")
    assert result.returncode == 2
    assert "must be mode 0600" in result.stderr

    key.chmod(0o600)
    key.write_bytes(b"short")
    with pytest.raises(SettingsError, match="32 raw bytes or 64 hex characters"):
        appliance.workspace().device_key()
    key.write_bytes(bytes(range(32)))
    assert appliance.workspace().device_key() == bytes(range(32))
    key.write_bytes(bytes(range(32)).hex().encode() + b"\n")  # the same key written in hex
    assert appliance.workspace().device_key() == bytes(range(32))
    key.write_bytes(b"z" * 64)  # 64 characters, not hex
    with pytest.raises(SettingsError, match="32 raw bytes or 64 hex characters"):
        appliance.workspace().device_key()


def test_replay_checks_the_chain_up_to_its_point(appliance: Appliance) -> None:
    two_runs(appliance)
    conn = apsw.Connection(str(appliance.journal))
    conn.execute("DROP TRIGGER events_refuse_update")
    conn.execute("UPDATE events SET at_ns = at_ns + 1 WHERE seq = 2")
    conn.close()

    with pytest.raises(JournalTampered, match="seq 2"):
        audit.replay(appliance.workspace(), "5")
    assert audit.replay(appliance.workspace(), "1").seq == 1


# -- adopting a device key on a journal begun without one --------------------------


def journal_rows(app: Appliance) -> list[tuple[int, str]]:
    conn = apsw.Connection(str(app.journal))
    try:
        return list(conn.execute("SELECT seq, kind FROM events ORDER BY seq"))
    finally:
        conn.close()


def adopted_at(app: Appliance) -> int:
    """Begin a journal without a key, then set the key and adopt it; return its seq."""
    create_table_migration(app, "202401010001", "hosts")
    app.migrate()
    with_device_key(app)
    result = app.cli("journal", "adopt-key", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["adopted"] is True
    return int(report["keyed_from"])


def test_a_plain_journal_adopts_the_device_key_and_is_keyed_from_then_on(
    appliance: Appliance,
) -> None:
    create_table_migration(appliance, "202401010001", "hosts")
    appliance.migrate()
    before = journal_rows(appliance)
    with_device_key(appliance)

    refused = appliance.cli("migrate")

    assert refused.returncode == 4
    assert "journal adopt-key" in refused.stderr
    assert journal_rows(appliance) == before  # nothing hashed unlike the chain

    adopt = appliance.cli("journal", "adopt-key", "--json")

    assert adopt.returncode == 0, adopt.stderr
    report = json.loads(adopt.stdout)
    assert report["adopted"] is True
    assert report["keyed_from"] == len(before) + 1
    assert re.fullmatch(r"[0-9a-f]{16}", report["key_id"])
    assert journal_rows(appliance) == [*before, (len(before) + 1, "DeviceKeyAdopted")]
    verified = appliance.cli("journal", "verify")
    assert verified.returncode == 0, verified.stderr
    assert f"(device key MAC from seq {len(before) + 1})" in verified.stdout

    create_table_migration(appliance, "202401010002", "leases")
    appliance.migrate()
    assert appliance.cli("journal", "verify").returncode == 0
    again = appliance.cli("journal", "adopt-key")
    assert again.returncode == 0
    assert f"keyed already, from seq {len(before) + 1}" in again.stdout
    assert [kind for _, kind in journal_rows(appliance)].count("DeviceKeyAdopted") == 1

    appliance.configure()  # the key is gone again
    without = appliance.cli("journal", "verify")
    assert without.returncode == 4
    assert without.stderr == (
        f"FAILED: journal is corrupt at seq {len(before) + 1}: "
        "the device key was adopted here; its MACs need that key\n"
    )


def test_after_adoption_the_plain_history_cannot_be_rewritten_either(
    appliance: Appliance,
) -> None:
    """The adoption's MAC covers every earlier hash: rechaining them is caught there."""
    keyed_from = adopted_at(appliance)

    tamper_and_rechain(appliance, 3)  # rewrites seq 3 and recomputes every later hash
    result = appliance.cli("journal", "verify")

    assert result.returncode == 4
    assert result.stderr == (
        f"FAILED: journal is corrupt at seq {keyed_from}: hash does not match the event's content\n"
    )
    assert appliance.cli("migrate").returncode == 4


def test_a_broken_plain_chain_is_not_blessed_with_a_mac(appliance: Appliance) -> None:
    create_table_migration(appliance, "202401010001", "hosts")
    appliance.migrate()
    conn = apsw.Connection(str(appliance.journal))
    conn.execute("DROP TRIGGER events_refuse_update")
    conn.execute("UPDATE events SET at_ns = at_ns + 1 WHERE seq = 2")
    conn.close()
    before = journal_rows(appliance)
    with_device_key(appliance)

    result = appliance.cli("journal", "adopt-key")

    assert result.returncode == 4
    assert result.stderr.startswith("FAILED: journal is corrupt at seq 2: ")
    assert journal_rows(appliance) == before


def test_adopt_key_needs_a_key_and_a_journal(appliance: Appliance) -> None:
    no_key = appliance.cli("journal", "adopt-key")
    assert no_key.returncode == 2
    assert "migration.device_key_file is not set" in no_key.stderr

    with_device_key(appliance)
    no_journal = appliance.cli("journal", "adopt-key")
    assert no_journal.returncode == 2
    assert "no journal yet; its first event will be keyed anyway" in no_journal.stderr
    assert not appliance.journal.exists()


def test_a_kill_right_after_the_adoption_leaves_it_whole(appliance: Appliance) -> None:
    create_table_migration(appliance, "202401010001", "hosts")
    appliance.migrate()
    with_device_key(appliance)

    killed = appliance.cli(
        "journal", "adopt-key", env={"FLYWALL_CRASH_AT": "after-DeviceKeyAdopted"}
    )

    assert killed.returncode == -9
    assert appliance.cli("journal", "verify").returncode == 0
    assert "keyed already" in appliance.cli("journal", "adopt-key").stdout
    create_table_migration(appliance, "202401010002", "leases")
    appliance.migrate()


def test_an_export_across_the_adoption_verifies_only_with_the_key_and_whole(
    appliance: Appliance, tmp_path: Path
) -> None:
    keyed_from = adopted_at(appliance)
    create_table_migration(appliance, "202401010002", "leases")
    appliance.migrate()
    export = tmp_path / "journal.jsonl"
    assert appliance.cli("journal", "export", "--output", str(export)).returncode == 0

    ok = appliance.cli("journal", "verify-export", str(export))

    assert ok.returncode == 0, ok.stderr
    assert f"(device key MAC from seq {keyed_from})" in ok.stdout
    appliance.configure()
    without = appliance.cli("journal", "verify-export", str(export))
    assert without.returncode == 4
    assert f"{export}:{keyed_from} (seq {keyed_from}): the device key was adopted" in without.stderr

    with_device_key(appliance)
    cut = tmp_path / "cut.jsonl"  # the MAC'd tail dropped: what is left is a plain chain
    cut.write_text("".join(export.read_text().splitlines(keepends=True)[: keyed_from - 1]))
    stripped = appliance.cli("journal", "verify-export", str(cut))
    assert stripped.returncode == 4
    assert "plain hashes throughout, but a device key is configured" in stripped.stderr


def test_replay_before_and_after_the_adoption_with_the_key(appliance: Appliance) -> None:
    keyed_from = adopted_at(appliance)
    create_table_migration(appliance, "202401010002", "leases")
    appliance.migrate()
    ws = appliance.workspace()

    before = audit.replay(ws, str(keyed_from - 1))
    after = audit.replay(ws, str(finished_seqs(appliance)[-1]))

    assert before.counts["applied"] == 1
    assert after.counts["applied"] == 2


def test_export_to_a_folder_it_cannot_write_is_one_line_and_leaves_no_file(
    appliance: Appliance, tmp_path: Path
) -> None:
    two_runs(appliance)
    missing = tmp_path / "no-such-folder" / "journal.jsonl"
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder\n")

    for target in (missing, blocked / "journal.jsonl"):
        result = appliance.cli("journal", "export", "--output", str(target))

        assert result.returncode == 2
        assert result.stderr.startswith(f"FAILED: {target}: cannot write: ")
        assert "Traceback" not in result.stderr
    assert not missing.parent.exists()
    assert blocked.read_text() == "not a folder\n"


def test_export_replaces_its_file_whole_and_leaves_no_temp_file(
    appliance: Appliance, tmp_path: Path
) -> None:
    two_runs(appliance)
    out = tmp_path / "journal.jsonl"
    out.write_text("an older export\n")

    result = appliance.cli("journal", "export", "--output", str(out))

    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == int(result.stdout.split()[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["appliance", "journal.jsonl"]
    assert appliance.cli("journal", "verify-export", str(out)).returncode == 0
