"""The `flywall` and `flywall-migration` entry points: two answers before click, then click.

Two names (issue 14): `flywall-migration COMMAND` is ours alone; `flywall migration COMMAND`
is the seed's spelling, kept through a `flywall` script that handles only `migration` and
hands every other first word to Flywall's own `flywall` binary (`flywall_binary`), so
installing us never hides the firmware's commands (`flywall check`, `flywall upgrade`...).

Issue 7: a fleet agent runs `status` every minute and people type `--help`; importing click
and every command module costs more than those answers. Issue 18: every boot runs
`migrate`, which nearly always has nothing to do. So three answers are served here, with
nothing but the standard library (and blake3, for the memos) at import time:

- the help, usage and version texts of every `flywall migration` command, rendered by
  click itself into `flywall.cli._texts` (regenerate with `make cli-texts`; a test
  re-renders them and compares, so they cannot drift from the click definitions);
- `status` while none of its inputs changed: the answer the `status` command memoized
  (`flywall.cli.statusmemo`);
- `migrate` with nothing to do while none of its inputs changed, under the writer lock:
  the answer a quiet `migrate` memoized (`flywall.cli.bootmemo`).

Every other command line, and any it does not recognise exactly, is click's
(`flywall.cli.main`): one command line, whose commands are a few lines over
`flywall.core.commands`. FLYWALL_NO_FAST_PATH=1 turns the answers off (tests compare
them with click's, byte for byte).
"""

from __future__ import annotations

import atexit
import codecs
import gc
import os
import stat
import sys

TYPE_CHECKING = False  # typing itself costs this path an import (~2 ms)
if TYPE_CHECKING:
    from collections.abc import Callable
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
    """Run `flywall`: `migration` is ours (a text, a memo, else click); other words: Flywall."""
    if sys.argv[1:2] != ["migration"]:
        _exit(hand_off(sys.argv))
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    code = None if os.environ.get("FLYWALL_NO_FAST_PATH") else fast(sys.argv)
    if code is None:
        from flywall.cli.main import main as click_main

        code = _click(click_main.main)
    _exit(code)


def migration_main() -> None:
    """Run `flywall-migration COMMAND`: the same as `flywall migration COMMAND`."""
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    code = None if os.environ.get("FLYWALL_NO_FAST_PATH") else fast(sys.argv)
    if code is None:
        from flywall.cli.main import migration

        code = _click(lambda: migration.main(args=sys.argv[1:], prog_name=MIGRATION_PROG))
    _exit(code)


def _click(run: Callable[[], object]) -> int:
    """Run click's main (which ends in sys.exit) and return its exit code.

    A SystemExit whose code is not a number (a message) propagates: the interpreter prints it.
    """
    try:
        run()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        raise
    return 0


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
    """Answer `argv` from a help text or a memo (status, boot); None means "ask click".

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
    elif may_be_text(args):
        from flywall.cli._texts import TEXTS

        text = TEXTS.get(args)
        if text is not None:
            if _columns() < HELP_WIDTH:
                return None
            return _write(*text)
    if args[:1] != ("migration",):
        return None
    parsed = _parse_status(args[1:])
    if parsed is not None:
        return _memo_hit(*parsed)
    booted = _parse_migrate(args[1:])
    return None if booted is None else _boot_memo_hit(*booted)


TEXT_ENDINGS = ("--help", "-h", "--version")
GROUPS = ("backup", "journal")
"""The command groups: one alone (`flywall migration backup`) prints its help (exit 2)."""


def may_be_text(args: tuple[str, ...]) -> bool:
    """False if `args` surely has no text in cli/_texts.py, whose import a writer then saves.

    A test checks that every command line of the texts passes.
    """
    return args[-1:] in [(e,) for e in TEXT_ENDINGS] or args[1:] in [(), *[(g,) for g in GROUPS]]


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


_GROUP_OPTIONS = ("--root", "--config")
_STATUS_FLAGS = {"-v": "-v", "--verbose": "-v", "--json": "-j"}
_MIGRATE_FLAGS = {"--json": "-j"}


def _parse_status(args: tuple[str, ...]) -> tuple[str, str | None, str] | None:
    """Read `[--root R] [--config C] [--traceback] status [-v|--verbose] [--json]` strictly.

    Returns (root, config, memo variant) as the `migration` group receives them; None for
    any other command line, or a spelling click might read in a subtler way (a value
    starting with "-", an empty one, `--`, combined short flags...).
    """
    return _parse(args, "status", _STATUS_FLAGS)


def _parse_migrate(args: tuple[str, ...]) -> tuple[str, str | None, str] | None:
    """Read `[--root R] [--config C] [--traceback] migrate [--json]` strictly (as status).

    The boot memo's variants ("migrate", "migrate-j"): any other option of `migrate`
    (`--target`, `--dry-run`, `--wait`...) is click's.
    """
    return _parse(args, "migrate", _MIGRATE_FLAGS)


def _parse(
    args: tuple[str, ...], command: str, flags_of: dict[str, str]
) -> tuple[str, str | None, str] | None:
    given: dict[str, str] = {}
    i = 0
    while i < len(args) and args[i] != command:
        option, eq, value = args[i].partition("=")
        if option == "--traceback" and not eq:
            i += 1
            continue
        if option not in _GROUP_OPTIONS:
            return None
        if not eq:
            i += 1
            value = args[i] if i < len(args) else ""
        if not value or value.startswith("-"):
            return None
        given[option] = value
        i += 1
    if i >= len(args) or any(a not in flags_of for a in args[i + 1 :]):
        return None
    flags = {flags_of[a] for a in args[i + 1 :]}
    variant = command + "".join(f for f in ("-v", "-j") if f in flags)
    root = given.get("--root") or os.environ.get("FLYWALL_ROOT") or "/"
    return root, given.get("--config"), variant


def _path_ok(value: str, *, file_okay: bool, dir_okay: bool, exists: bool = False) -> bool:
    """Mirror click.Path's checks; False sends the command line to click for its error."""
    try:
        st = os.stat(value)  # noqa: PTH116 - as click.Path does, on the string given
    except OSError:
        return not exists
    if (not file_okay and stat.S_ISREG(st.st_mode)) or (not dir_okay and stat.S_ISDIR(st.st_mode)):
        return False
    return os.access(value, os.R_OK)


def _memo_hit(root: str, config: str | None, variant: str) -> int | None:
    """Answer `status` from its memo while every input is as it was; None: ask click.

    The `status` command wrote the memo (`statusmemo.keep`), keyed by the same option
    values; see flywall.cli.statusmemo for what else it is keyed by and why that is sound.
    """
    if os.environ.get("FLYWALL_NO_STATUS_MEMO"):
        return None
    if not _path_ok(root, file_okay=False, dir_okay=True, exists=True):
        return None
    if config is not None and not _path_ok(config, file_okay=True, dir_okay=False):
        return None
    from flywall.cli import statusmemo

    hit = statusmemo.lookup(root, config, variant)
    return None if hit is None else _write(*hit)


def _boot_memo_hit(root: str, config: str | None, variant: str) -> int | None:
    """Answer a `migrate` with nothing to do from the boot memo; None: ask click.

    The `migrate` command wrote the memo after a quiet run (`bootmemo.keep`); the answer
    is written while the writer lock is held (`bootmemo.lookup`). See flywall.cli.bootmemo
    and docs/caches.md for what it is keyed by and why that is sound.
    """
    if not _path_ok(root, file_okay=False, dir_okay=True, exists=True):
        return None
    if config is not None and not _path_ok(config, file_okay=True, dir_okay=False):
        return None
    from flywall.cli import bootmemo

    written: list[int] = []
    hit = bootmemo.lookup(root, config, variant, lambda *a: written.append(_write(*a)))
    return None if hit is None else written[0]
