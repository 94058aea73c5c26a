"""One unusable migration file never hides the box (issue 16, item 14).

Readers (`status`, `list`, `validate`, the API's status) show every other migration and the
file as broken, exit 4; writers refuse before doing anything, naming the file. The caches
in front of `status` (discovery's and the status memo) never answer from before the file
broke or was fixed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import forkserver
import pytest
from apiserver import serving
from conftest import Appliance, create_table_migration
from waiting import past_the_racy_window

from flywall.cli import statusmemo
from flywall.core.scripts import discovery

FLYWALL_MIGRATION = str(Path(sys.executable).with_name("flywall-migration"))
V1, V2, V3 = "202401010001", "202401010002", "202401010003"

BROKEN = {
    "python syntax": (f"{V3}_bad.py", "component = 'database'\ndef up(ctx, db)\n", "line 2:"),
    "sql without sections": (f"{V3}_bare.sql", "CREATE TABLE x (id);\n", "migrate:up"),
    "hcl that does not parse": (f"{V3}_bad.hcl", 'migration "1" "2" {\n  = =\n', "line "),
    "bad name": ("2024_short.py", "component = 'api'\ndef up(ctx, doc): pass\n", "expected"),
}
RAISES = "component = 'database'\nraise RuntimeError('boom at import')\ndef up(ctx, db): pass\n"


def cli(app: Appliance, *args: str, env: dict[str, str] | None = None):
    """`flywall-migration --root BOX ARGS`, the real console script's entry point, in a real
    process (tests/forkserver.py)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLYWALL_")}
    environ.update(env or {})
    return forkserver.run(
        [FLYWALL_MIGRATION, "--root", str(app.root), *args], env=environ, timeout=60
    )


@pytest.fixture
def box(appliance: Appliance) -> Appliance:
    """Two migrations, the first applied."""
    create_table_migration(appliance, V1, "hosts")
    create_table_migration(appliance, V2, "zones")
    appliance.migrate(target=V1)
    return appliance


@pytest.mark.parametrize("kind", list(BROKEN))
def test_status_and_list_show_the_others_and_the_broken_file_and_exit_4(box, kind):
    name, text, reason = BROKEN[kind]
    path = box.write(name, text)

    status = cli(box, "status")
    assert status.returncode == 4, status.stderr
    assert status.stderr == ""
    assert "migrations  1 pending, 1 applied" in status.stdout
    [line] = [x for x in status.stdout.splitlines() if x.startswith("BROKEN")]
    assert line.startswith(f"BROKEN      {path}: ")
    assert reason in line

    listed = cli(box, "list")
    assert listed.returncode == 4, listed.stderr
    assert V1 in listed.stdout
    assert V2 in listed.stdout
    assert f"BROKEN      {path}: " in listed.stdout

    report = json.loads(cli(box, "status", "--json").stdout)
    [broken] = report["broken"]
    assert broken["path"] == str(path)
    assert reason in broken["reason"]
    rows = json.loads(cli(box, "list", "--json").stdout)
    assert [r["state"] for r in rows] == ["applied", "pending", "broken"]
    assert (rows[-1]["file"], rows[-1]["last_error"]) == (str(path), broken["reason"])


@pytest.mark.parametrize("kind", [*BROKEN, "raises at import"])
def test_validate_names_the_broken_file_as_a_failed_check(box, kind):
    name, text, _ = BROKEN.get(kind, (f"{V3}_raises.py", RAISES, ""))
    path = box.write(name, text)

    result = cli(box, "validate")

    assert result.returncode == 4
    [line] = [x for x in result.stdout.splitlines() if "migration files" in x]
    assert line.startswith(f"FAIL  migration files: {path}: ")


def journal_and_db(app: Appliance) -> tuple[bytes, bytes]:
    return app.journal.read_bytes(), app.state_db.read_bytes()


WRITERS = [
    *[
        (kind, command)
        for kind in BROKEN
        for command in (("migrate",), ("rollback", "--steps", "1"))
    ],
    ("raises at import", ("migrate",)),  # a rollback never loads a pending migration's code
]


@pytest.mark.parametrize(("kind", "command"), WRITERS)
def test_a_writer_refuses_in_one_line_naming_the_file_and_changes_nothing(box, kind, command):
    name, text, _ = BROKEN.get(kind, (f"{V3}_raises.py", RAISES, ""))
    path = box.write(name, text)
    before = journal_and_db(box)

    result = cli(box, *command)

    assert result.returncode == 4, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("FAILED: ")
    assert str(path) in line
    assert "Traceback" not in result.stderr
    if kind != "raises at import":  # a pre-flight refusal journals its run as failed
        assert journal_and_db(box) == before
    assert cli(box, "list", "--json").stdout.count('"applied"') == 1


def status_twice(app: Appliance) -> list[tuple[str, int]]:
    """Run status until its answer is memoized, then once more: the second answers from it.

    Each answer is also what a status without the memo says (the discovery cache alone).
    """
    deadline = time.monotonic() + 20
    while True:
        first = cli(app, "status")
        if statusmemo.lookup(str(app.root), None, "status") is not None:
            break
        assert time.monotonic() < deadline, "no memo was ever written"
        past_the_racy_window(app.root)
    hit = statusmemo.lookup(str(app.root), None, "status")
    second = cli(app, "status")
    assert hit == (second.stdout, "", second.returncode), "the second status is a memo hit"
    unmemoized = cli(app, "status", env={"FLYWALL_NO_STATUS_MEMO": "1"})
    assert (unmemoized.stdout, unmemoized.returncode) == (second.stdout, second.returncode)
    return [(first.stdout, first.returncode), (second.stdout, second.returncode)]


def test_the_memo_and_the_discovery_cache_follow_a_file_breaking_and_being_fixed(box):
    """Both transitions, through the console script, each status run twice in a row."""
    good = box.migrations_dir / f"{V3}_rules.py"
    good.write_text("component = 'database'\ndef up(ctx, db):\n    pass\n")
    cache = box.root / "var/cache/flywall/migrations.msgpack"
    time.sleep(discovery.RACY_NS / 1e9 + 0.2)  # old enough to enter the discovery cache
    healthy = status_twice(box)
    assert [code for _, code in healthy] == [0, 0]
    assert "2 pending" in healthy[0][0]
    assert str(good).encode() in cache.read_bytes(), "the valid file is in the discovery cache"

    good.write_text("component = 'database'\ndef up(ctx, db)\n")  # broken, in place
    broken = status_twice(box)
    assert [code for _, code in broken] == [4, 4]
    assert all(f"BROKEN      {good}: line 2:" in text for text, _ in broken)
    assert "1 pending" in broken[0][0]

    good.write_text("component = 'database'\ndef up(ctx, db):\n    pass\n")  # fixed
    fixed = status_twice(box)
    assert [code for _, code in fixed] == [0, 0]
    assert all("BROKEN" not in text and "2 pending" in text for text, _ in fixed)


def test_the_api_status_carries_the_broken_list(box, tmp_path):
    path = box.write(*BROKEN["sql without sections"][:2])
    with serving(box, tmp_path / "serve.log") as server:
        answer = server.client.get("/api/migration/status")
    assert answer.status_code == 200
    assert answer.json()["broken"] == json.loads(cli(box, "status", "--json").stdout)["broken"]
    assert answer.json()["broken"][0]["path"] == str(path)


def test_the_api_refuses_a_run_over_a_broken_file_as_422_naming_it(box, tmp_path):
    """A broken file is a refusal (the CLI's exit 4), not a server error (it was a 500)."""
    path = box.write(*BROKEN["sql without sections"][:2])
    with serving(box, tmp_path / "serve.log") as server:
        for body in ({}, {"dry_run": True}, {"target_version": "202401010001"}):
            answer = server.client.post("/api/migrations/apply", json=body)
            assert answer.status_code == 422, (body, answer.text)
            assert str(path) in answer.json()["error"]
