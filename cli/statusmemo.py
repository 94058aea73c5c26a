"""The answer memo of `status`: the last output, reused while none of its inputs changed.

A fleet agent asks `status` every minute and the answer changes a few times a year, so the
`status` command keeps (`keep`), per variant of the command line, the rendered output and
exit code, and the fast entry point answers from it (`lookup`) without click or the core,
keyed by the identity (`stamp`) of every input the answer was computed from: the
command line and environment (`memo.context`), the code that answered (`code_files`), the
files a status reads and the migration folders with every entry. What each input is, what
invalidates a memo and why it is safe to lose: docs/caches.md. When one may be written or
read is said by the predicates of the shared part, flywall.cli.memo (`device_key_configured`,
`writer_holds_lock`, `racy`); figures: bench/RESULTS.md.

Only the standard library and blake3 are imported here (the seal through
flywall.core.appliance.caches): the memo is worth it only if a hit costs less than the
imports it saves.
"""

from __future__ import annotations

import os

from flywall.cli import memo
from flywall.cli.memo import (  # noqa: F401 - this memo's names for the shared parts
    code_files,
    config_path,
    device_key_configured,
    memo_path,
    stamp,
    writer_holds_lock,
)
from flywall.cli.memo import racy as _racy  # noqa: F401
from flywall.core.appliance.caches import Cache

TYPE_CHECKING = False  # typing itself costs a memo hit an import (~2 ms)
if TYPE_CHECKING:
    from flywall.core.commands import Workspace
    from flywall.core.commands.reports import StatusReport

MEMO = Cache("status memo", 4, point="status-memo")  # 4: the shared memo format (cli/memo.py)
"""No code digest: every module file that answered is among the memo's stamped inputs."""


def enabled() -> bool:
    """False under FLYWALL_NO_STATUS_MEMO=1 (every status afresh) or FLYWALL_NO_FAST_PATH=1.

    Without the fast path nothing reads a memo, so none is written either; tests compare
    an answer from the memo with one from click that way.
    """
    return not (os.environ.get("FLYWALL_NO_STATUS_MEMO") or os.environ.get("FLYWALL_NO_FAST_PATH"))


def variant(*, verbose: bool, as_json: bool) -> str:
    """The memo's name for a command line: "status", "status-v", "status-j", "status-v-j"."""
    return "status" + ("-v" if verbose else "") + ("-j" if as_json else "")


def _context(root: str, config: str | None, variant: str) -> bytes:
    return memo.context(root, config, variant)


def _encode(
    key: bytes, code: int, files: list[str], dirs: list[str], lock: str, text: str
) -> bytes:
    """The memo's file: its body sealed by `MEMO` (version and digest)."""
    return MEMO.seal(memo.body(key, code, files, dirs, [lock], text))


def _decode(data: bytes) -> tuple[bytes, int, list[str], list[str], str, str] | None:
    found = memo.decode(MEMO, data)
    if found is None or len(found[4]) != 1:
        return None
    key, code, files, dirs, probes, text = found
    return key, code, files, dirs, probes[0], text


def lookup(root: str, config: str | None, variant: str) -> tuple[str, str, int] | None:
    """The memoized (stdout, stderr, exit code) of `variant`, if every input is as it was."""
    if device_key_configured(root, config):
        return None
    found = memo.read(MEMO, memo_path(root, variant))
    if found is None or len(found[4]) != 1:
        return None
    if not memo.matches(found, _context(root, config, variant)) or writer_holds_lock(found[4][0]):
        return None
    return found[5], "", found[1]


def store(
    root: str,
    config: str | None,
    variant: str,
    *,
    began_ns: int,
    files: list[str],
    dirs: list[str],
    lock: str,
    text: str,
    code: int,
) -> bool:
    """Keep (text, code) as the answer for inputs read since `began_ns`; best effort.

    Returns whether a memo was written (nothing is, if an input is racy or the lock is held).
    """
    if device_key_configured(root, config):
        return False
    return memo.write(
        MEMO,
        memo_path(root, variant),
        _context(root, config, variant),
        began_ns=began_ns,
        files=files,
        dirs=dirs,
        lock=lock,
        probes=[lock],
        text=text,
        code=code,
    )


def keep(
    root: str,
    config: str | None,
    variant: str,
    *,
    began_ns: int,
    ws: Workspace,
    report: StatusReport,
    text: str,
    code: int,
) -> bool:
    """Memoize a status just answered (`text`, `code`) if it may be; see `inputs`.

    `root` and `config` are the option values as given: the fast entry point looks the
    memo up by them before anything has parsed them.
    """
    if not enabled() or "\x1b" in text:  # click.echo strips escapes off a non-terminal
        return False
    found = inputs(ws, report)
    if found is None:
        return False
    files, dirs, lock = found
    return store(
        root,
        config,
        variant,
        began_ns=began_ns,
        files=files,
        dirs=dirs,
        lock=lock,
        text=text,
        code=code,
    )


def inputs(ws: Workspace, report: StatusReport) -> tuple[list[str], list[str], str] | None:
    """The files and directories a status was computed from, and the lock; None: no memo.

    None while a writer holds the lock, a migration is interrupted (its evidence reads temp
    files beside the file targets), a run awaits confirmation (it expires with the clock,
    not a file), a device key is configured, or no appliance was found.
    """
    paths = ws.paths
    if report.lock_holder is not None or report.interrupted or paths.device_key_file is not None:
        return None
    if report.awaiting_confirmation or ws.settings.layout == "none":
        return None
    from flywall.core.appliance.layout import candidates

    files: list[str] = list(candidates(str(ws.settings.root)))
    for path in (paths.config, paths.settings, paths.api_document, paths.lock):
        if path is not None:  # the loader always places the settings file
            files += dict.fromkeys((str(path), os.path.realpath(path)))
    for path in (paths.journal, paths.state_db):
        for name in dict.fromkeys((str(path), os.path.realpath(path))):
            files += [name, name + "-wal", name + "-journal"]
    dirs = [str(d) for d in ws.directories()]
    return files, dirs, str(paths.lock)
