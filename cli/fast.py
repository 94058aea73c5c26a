"""The `flywall` and `flywall-migration` entry points: the hot command lines without click.

Two names (issue 14): `flywall-migration COMMAND` is ours alone; `flywall migration COMMAND`
is the seed's spelling, kept through a `flywall` script that handles only `migration` and
hands every other first word to Flywall's own `flywall` binary (`flywall_binary`), so
installing us never hides the firmware's commands (`flywall check`, `flywall upgrade`...).

Issue 7: a fleet agent runs `status` every minute and people type `--help`; importing click
and every command module costs more than the answer.

So this module serves, with nothing but the standard library at import time:

- the help, usage and version texts of every `flywall migration` command,
  rendered by click itself into `flywall.cli._texts` (regenerate with `make cli-texts`;
  a test re-renders them and compares, so they cannot drift from the click definitions);
- `flywall migration [--root R] [--config C] [--traceback] status [-v|--verbose] [--json]`
  and `... list [--pending] [--applied] [--json]`, parsed here and answered by the same
  `commands` and `render` functions the click commands call; `status` answers from its
  memo (`flywall.cli.statusmemo`) while none of its inputs changed, without even those;
- `... migrate [--target V] [--dry-run] [--accept-drift] [--json] [--events jsonl]` and
  `... rollback [VERSION] [--steps N] [--to V] [--yes] [--accept-drift] [--json]
  [--events jsonl]`, run by the functions of `flywall.cli.run` the click commands call.

Anything else, anything it does not recognise exactly, goes to click (`flywall.cli.main`),
so behaviour and messages stay click's. `status` and `list` only read (their caches
aside), so when they fail here they simply run again under click, which prints the error
as it always has; a writer cannot run twice, so its errors go through the same function
the click group uses (`run.error_exit_code`). FLYWALL_NO_FAST_PATH=1 turns this module off
(the equivalence tests compare both paths, byte for byte).
"""

from __future__ import annotations

import atexit
import codecs
import errno
import gc
import os
import stat
import sys

TYPE_CHECKING = False  # typing itself costs this path an import (~2 ms)
if TYPE_CHECKING:
    from typing import NoReturn

PROG = "flywall"
MIGRATION_PROG = "flywall-migration"
HELP_WIDTH = 80  # click's HelpFormatter: max(min(columns, 80) - 2, 50); _texts assume 80+


GC_THRESHOLD = 100_000
"""Young objects between two collections of the fast path (CPython's default is 700).

Importing msgspec, apsw and transitions and reading 1000 migrations allocates ~100,000
objects that live until the process ends; at 700 the collector walks them over and over
(~4 ms of a writer's ~90 ms). Memory stays bounded: a run that keeps allocating (a large
state migration) is still collected, every 100,000 net new objects."""


def main() -> None:
    """Run `flywall`: `migration` is ours (fast path, else click); any other word is Flywall's."""
    if sys.argv[1:2] != ["migration"]:
        _exit(hand_off(sys.argv))
    if not os.environ.get("FLYWALL_NO_FAST_PATH"):
        gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
        code = fast(sys.argv)
        if code is not None:
            _exit(code)
    from flywall.cli.main import main as click_main

    click_main()


def migration_main() -> None:
    """Run `flywall-migration COMMAND`: the same as `flywall migration COMMAND`."""
    if not os.environ.get("FLYWALL_NO_FAST_PATH"):
        gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
        code = fast(sys.argv)
        if code is not None:
            _exit(code)
    from flywall.cli.main import migration

    migration.main(args=sys.argv[1:], prog_name=MIGRATION_PROG)


def hand_off(argv: list[str]) -> int:
    """Replace this process with Flywall's own `flywall`, same arguments; 2 if none is found."""
    binary = flywall_binary(argv[0])
    if binary is not None:
        try:
            os.execv(binary, [binary, *argv[1:]])  # noqa: S606 - the operator's own binary
        except OSError as e:
            return _write("", f"FAILED: {binary}: cannot run Flywall's flywall: {e.strerror}\n", 2)
    return _write(
        "",
        "FAILED: Flywall's own flywall command was not found (FLYWALL_BIN, "
        "ROOT/opt/flywall/bin/flywall, PATH); this one runs only `flywall migration ...` "
        "(also `flywall-migration ...`)\n",
        2,
    )


def flywall_binary(me: str) -> str | None:
    """Find Flywall's own `flywall`, never this script.

    FLYWALL_BIN, else opt/flywall/bin/flywall under the root (FLYWALL_ROOT, default /),
    else the next `flywall` on PATH after this script itself (else any other one on it).
    """
    named = os.environ.get("FLYWALL_BIN")
    if named:
        return None if _same(named, me) else named  # never exec ourselves in a loop
    root = os.environ.get("FLYWALL_ROOT") or "/"
    shipped = os.path.join(root, "opt/flywall/bin", PROG)  # noqa: PTH118
    if _runnable(shipped) and not _same(shipped, me):
        return shipped
    others: list[str] = []
    seen_me = False
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(folder or ".", PROG)  # noqa: PTH118
        if not _runnable(candidate):
            continue
        if _same(candidate, me):
            seen_me = True
        elif seen_me:
            return candidate
        else:
            others.append(candidate)
    return others[0] if others else None


def _runnable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)  # noqa: PTH113


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)  # noqa: PTH121
    except OSError:
        return False


def _exit(code: int) -> NoReturn:
    """End the process now, as `sys.exit(code)` would, without the interpreter's teardown.

    Tearing down frees every module and object one by one: ~10 ms of a writer over 1000
    migrations (~5 ms for the imports alone), for a process about to end anyway. What a
    normal exit does that matters is done here first: the atexit handlers run and the
    streams are flushed. Anything else takes the normal exit: a stream that cannot be
    flushed (Python reports that its way), a thread the interpreter would wait for, or a
    SQLite connection still open (its close checkpoints the WAL). By then every journal
    write of the command is durable and its connections closed; the crash tests show the
    journal and the targets survive even a SIGKILL at any point, let alone after the end.
    """
    if _exit_is_plain():
        atexit._run_exitfuncs()  # noqa: SLF001 - what Py_Finalize would call
        if _flushed():
            os._exit(code)
    sys.exit(code)


def _exit_is_plain() -> bool:
    """True if a normal exit would only flush, run atexit handlers and free memory."""
    if not _flushed():
        return False
    threading = sys.modules.get("threading")
    if threading is not None and any(
        not t.daemon for t in threading.enumerate() if t is not threading.main_thread()
    ):
        return False
    apsw = sys.modules.get("apsw")
    return apsw is None or not apsw.connections()


def _flushed() -> bool:
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return False
    return True


def fast(argv: list[str]) -> int | None:
    """Answer `argv` without click and return the exit code; None means "ask click".

    Only taken when the output would be exactly click's: the program is called `flywall`
    (click names it after argv[0]), the streams are not ASCII-only (click re-wraps those).
    """
    # os.path, not pathlib: pathlib costs an import this path otherwise avoids
    program = os.path.basename(argv[0])  # noqa: PTH119
    if program not in (PROG, MIGRATION_PROG) or not (_plain(sys.stdout) and _plain(sys.stderr)):
        return None
    args = tuple(argv[1:])
    if program == MIGRATION_PROG:  # the texts name `flywall migration`: click renders its own
        args = ("migration", *args)
    else:
        from flywall.cli._texts import TEXTS

        text = TEXTS.get(args)
        if text is not None:
            if _columns() < HELP_WIDTH:
                return None
            return _write(*text)
    if args[:1] == ("migration",):
        parsed = _parse(args[1:])
        if parsed is not None:
            return _run(*parsed)
    return None


def _plain(stream: object) -> bool:
    """True if click.echo would write to `stream` as it is (it re-wraps ASCII streams)."""
    encoding = getattr(stream, "encoding", None)
    if stream is None or not encoding:
        return False
    try:
        return codecs.lookup(encoding).name != "ascii"
    except LookupError:
        return False


def _columns() -> int:
    """The terminal width as `shutil.get_terminal_size()` (which click uses) reports it."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    try:
        lines = int(os.environ["LINES"])
    except (KeyError, ValueError):
        lines = 0
    if columns <= 0 or lines <= 0:
        try:
            size = os.get_terminal_size(sys.__stdout__.fileno())  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            size = os.terminal_size((80, 24))
        if columns <= 0:
            columns = size.columns or 80
    return columns


def _write(out: str, err: str, code: int) -> int:
    try:
        if out:
            sys.stdout.write(out)
            sys.stdout.flush()
        if err:
            sys.stderr.write(err)
            sys.stderr.flush()
    except BrokenPipeError:
        # as click does on EPIPE: exit 1, and keep the interpreter's final flush quiet
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: PTH123, SIM115
        return 1
    return code


_MAX_WAIT = 86400  # --wait's click.FloatRange(min=0, max=86400)
_GROUP_OPTIONS = {"--root": "root", "--config": "config"}
# command: (flags, options taking a value, positional arguments allowed)
_COMMANDS: dict[str, tuple[dict[str, str], dict[str, str], tuple[str, ...]]] = {
    "status": ({"--verbose": "verbose", "-v": "verbose", "--json": "as_json"}, {}, ()),
    "list": ({"--pending": "pending", "--applied": "applied", "--json": "as_json"}, {}, ()),
    "migrate": (
        {"--dry-run": "dry_run", "--accept-drift": "accept_drift", "--json": "as_json"},
        {"--target": "target", "--events": "events", "--wait": "wait"},
        (),
    ),
    "rollback": (
        {"--yes": "yes", "--accept-drift": "accept_drift", "--json": "as_json"},
        {"--steps": "steps", "--to": "to", "--events": "events", "--wait": "wait"},
        ("version",),
    ),
    # a flag named "!x" sets x to False (click's --x/--no-x pair: x defaults to True)
    "backup create": (
        {"--verify": "verify", "--no-verify": "!verify", "--json": "as_json"},
        {"--wait": "wait"},
        (),
    ),
}
_SUBCOMMANDS = {("backup", "create")}


def _parse(args: tuple[str, ...]) -> tuple[str, dict[str, object], dict[str, object]] | None:
    """Parse `[group options] COMMAND [its options]` strictly; None for anything else.

    Only plain spellings are taken (`--opt value`, `--opt=value`, flags alone); whatever
    click might read in a subtler way (a value starting with "-", an empty one, a
    non-canonical number, `--`, combined short flags) is left to click.
    """
    group: dict[str, object] = {"root": None, "config": None, "traceback": False}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] == "--traceback":
            group["traceback"] = True
            i += 1
            continue
        taken = _option_value(args, i, _GROUP_OPTIONS)
        if taken is None:
            return None
        name, group[name], i = taken
    if args[i : i + 2] in _SUBCOMMANDS:
        i += 1
        command = " ".join(args[i - 1 : i + 1])
    elif i < len(args) and args[i] in _COMMANDS:
        command = args[i]
    else:
        return None
    flags, options, positional = _COMMANDS[command]
    negated = {name[1:] for name in flags.values() if name.startswith("!")}
    values: dict[str, object] = {name.lstrip("!"): name[1:] in negated for name in flags.values()}
    values.update(dict.fromkeys([*options.values(), *positional]))
    free = list(positional)
    i += 1
    while i < len(args):
        arg = args[i]
        if arg in flags:
            values[flags[arg].lstrip("!")] = not flags[arg].startswith("!")
            i += 1
        elif not arg.startswith("-") and arg and free:
            values[free.pop(0)] = arg
            i += 1
        else:
            taken = _option_value(args, i, options)
            if taken is None:
                return None
            name, values[name], i = taken
    return (command, group, values) if _converted(values) else None


def _converted(values: dict[str, object]) -> bool:
    """Convert `--steps` as click would; False where click would refuse or read otherwise."""
    if values.get("events") not in (None, "jsonl"):
        return False  # click.Choice(["jsonl"]) says why
    steps = values.get("steps")
    if isinstance(steps, str):
        if not (steps.isascii() and steps.isdigit() and steps[0] != "0"):
            return False  # click.IntRange(min=1) reads and refuses the rest
        values["steps"] = int(steps)
    wait = values.get("wait")
    if isinstance(wait, str):
        digits = wait.replace(".", "", 1)
        if not (digits.isascii() and digits.isdigit() and float(wait) <= _MAX_WAIT):
            return False  # click.FloatRange(min=0, max=86400) reads and refuses the rest
        values["wait"] = float(wait)
    return True


def _option_value(
    args: tuple[str, ...], i: int, options: dict[str, str]
) -> tuple[str, str, int] | None:
    """Read `--opt value` or `--opt=value` at args[i]: (name, value, next index)."""
    option, eq, value = args[i].partition("=")
    if option not in options:
        return None
    if not eq:
        i += 1
        if i >= len(args):
            return None
        value = args[i]
    if not value or value.startswith("-"):
        return None
    return options[option], value, i + 1


def _path_ok(value: str, *, file_okay: bool, dir_okay: bool, exists: bool = False) -> bool:
    """Mirror click.Path's checks; False sends the command line to click for its error."""
    try:
        st = os.stat(value)  # noqa: PTH116 - as click.Path does, on the string given
    except OSError:
        return not exists
    if (not file_okay and stat.S_ISREG(st.st_mode)) or (not dir_okay and stat.S_ISDIR(st.st_mode)):
        return False
    return os.access(value, os.R_OK)


def _run(command: str, group: dict[str, object], values: dict[str, object]) -> int | None:
    """Run a parsed command line as click would; None (ask click) where that is not sure."""
    root = str(group["root"] or os.environ.get("FLYWALL_ROOT") or "/")
    config = group["config"]
    if not _path_ok(root, file_okay=False, dir_okay=True, exists=True):
        return None
    if config is not None and not _path_ok(str(config), file_okay=True, dir_okay=False):
        return None
    memo = command == "status" and statusmemo_enabled()
    if memo:
        from flywall.cli import statusmemo

        variant = (
            "status" + ("-v" if values["verbose"] else "") + ("-j" if values["as_json"] else "")
        )
        hit = statusmemo.lookup(root, None if config is None else str(config), variant)
        if hit is not None:
            return _write(*hit)
    from pathlib import Path

    obj = {
        "root": Path(root),
        "config": Path(str(config)) if config is not None else None,
        "traceback": group["traceback"],
    }
    if memo:
        return _status_memoized(root, None if config is None else str(config), variant, obj, values)
    if command in ("status", "list"):
        return _read_only(command, obj, values)
    return _writer(command, obj, values)


def statusmemo_enabled() -> bool:
    """FLYWALL_NO_STATUS_MEMO=1 answers every status afresh (tests compare both)."""
    return not os.environ.get("FLYWALL_NO_STATUS_MEMO")


def _status_memoized(
    root: str, config: str | None, variant: str, obj: dict[str, object], flags: dict[str, object]
) -> int | None:
    """Answer `status` afresh (its memo did not match) and memoize the answer if it may be.

    See flywall.cli.statusmemo for what the memo is keyed by and why that is sound.
    """
    import time

    from flywall.cli import statusmemo

    began_ns = time.time_ns()
    answered: dict[str, object] = {}
    code = _read_only("status", obj, flags, answered)
    if code is not None and answered:
        statusmemo.store(root, config, variant, began_ns=began_ns, **answered)  # type: ignore[arg-type]
    return code


def _read_only(
    command: str,
    obj: dict[str, object],
    flags: dict[str, object],
    answered: dict[str, object] | None = None,
) -> int | None:
    """Run `status` or `list` as the click commands do; None (ask click) on any error.

    With `answered`, a status fit for the memo (no writer holding the lock, nothing
    interrupted) fills it with its output, exit code and the inputs it read.
    """
    from flywall.cli import render
    from flywall.core import commands
    from flywall.core.commands import EXIT_VALIDATION, Workspace

    code = 0
    try:
        with render.captured() as out:
            ws = Workspace.load(obj["root"], obj["config"])
            if command == "status":
                report = commands.status(ws, verbose=flags["verbose"])
                render.emit_json(report) if flags["as_json"] else render.status(report)
                code = EXIT_VALIDATION if report.drift or report.broken else 0
            else:
                rows = commands.list_migrations(
                    ws, pending=flags["pending"], applied=flags["applied"]
                )
                render.emit_json(rows) if flags["as_json"] else render.migrations(rows)
                code = EXIT_VALIDATION if any(r.state == "broken" for r in rows) else 0
    except KeyboardInterrupt:
        return _write("", "\nAborted!\n", 1)
    except Exception:
        return None  # read-only: click runs it again and reports the error its way
    text = "".join(out)
    if "\x1b" in text:
        return None  # click.echo strips ANSI escapes when stdout is not a terminal
    if answered is not None and command == "status":
        answered.update(_memo_inputs(ws, report, text, code))
    return _write(text, "", code)


def _memo_inputs(ws: object, report: object, text: str, code: int) -> dict[str, object]:
    """The output of a status and every file and directory it was computed from.

    Empty (no memo) while a writer holds the lock, a migration is interrupted (its
    evidence reads temp files beside the file targets) or a device key is configured.
    """
    paths = ws.paths  # type: ignore[attr-defined]
    if report.lock_holder is not None or report.interrupted or paths.device_key_file is not None:  # type: ignore[attr-defined]
        return {}
    if report.awaiting_confirmation:  # type: ignore[attr-defined]  # it expires with the clock, not a file
        return {}
    if ws.settings.layout == "none":  # type: ignore[attr-defined]  # no appliance: no memo in it
        return {}
    from flywall.core.appliance.layout import candidates

    files: list[str] = list(candidates(str(ws.settings.root)))  # type: ignore[attr-defined]
    inputs = (paths.config, paths.settings, paths.api_document, paths.lock)
    for path in (*inputs, paths.journal, paths.state_db):
        for name in dict.fromkeys((str(path), os.path.realpath(path))):
            files.append(name)
            if path in (paths.journal, paths.state_db):
                files += [name + "-wal", name + "-journal"]
    dirs = [str(d) for d in ws.directories()]  # type: ignore[attr-defined]
    return {"files": files, "dirs": dirs, "lock": str(paths.lock), "text": text, "code": code}


def _writer(command: str, obj: dict[str, object], values: dict[str, object]) -> int:
    """Run `migrate`, `rollback` or `backup create` through the functions click's commands call.

    A writer cannot be run twice, so its errors are reported here exactly as the click
    group does (flywall.cli.run.error_exit_code, shared with it) and as click's main
    does for ^C, EOF and a closed pipe; anything else propagates, as under click.
    """
    from flywall.cli import run

    obj = {**obj, "wait": values.pop("wait")}  # --wait goes with the workspace, as under click
    if command == "backup create":  # as under click: not interruptible as a run
        call = lambda: run.backup_create(obj, **values)  # noqa: E731
    else:
        body = run.migrate if command == "migrate" else run.rollback
        call = lambda: run.interruptible(lambda: body(obj, **values))  # noqa: E731
    try:
        call()
    except (EOFError, KeyboardInterrupt):
        return _write("", "\nAborted!\n", 1)
    except Exception as e:
        if isinstance(e, OSError) and e.errno == errno.EPIPE:
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: PTH123, SIM115 - as click
            return 1
        code = run.error_exit_code(e, traceback=obj["traceback"])
        if code is None:
            raise
        return code
    return 0
