"""The boot memo: `migrate` with nothing to do, answered again while none of its inputs changed.

Every boot runs `migrate` (and `recover`), and on all but the boots after a firmware update
it ends in "nothing to do": ~0.2 s of imports, replay, checksums and drift checks on a
1,000-migration box, to print one line. The `migrate` command keeps that answer (`keep`)
when the run was quiet (`flywall.core.commands.quiet.is_quiet`: it journaled, recovered
and wrote nothing, and its answer depends on no clock, key or other host), keyed like the
status memo (flywall.cli.memo) by the identity of every input the core names
(`quiet.inputs`). The fast entry point answers from it (`lookup`) without click or the
core, holding the writer lock as a writer would and probing Flywall's pid file again.
Why each check of a `migrate` is kept by this: docs/caches.md, "The boot memo".

Only the standard library and blake3 are imported on a hit, as for the status memo.
"""

from __future__ import annotations

import os

from flywall.cli import memo
from flywall.core.appliance.caches import Cache

TYPE_CHECKING = False  # typing itself costs a memo hit an import (~2 ms)
if TYPE_CHECKING:
    from collections.abc import Callable

    from flywall.core.commands import Workspace

MEMO = Cache("boot memo", 1, point="boot-memo")
"""No code digest: every module file that answered is among the memo's stamped inputs."""


def enabled() -> bool:
    """False under FLYWALL_NO_BOOT_MEMO=1 (every migrate runs) or FLYWALL_NO_FAST_PATH=1.

    Without the fast path nothing reads a memo, so none is written either.
    """
    return not (os.environ.get("FLYWALL_NO_BOOT_MEMO") or os.environ.get("FLYWALL_NO_FAST_PATH"))


def variant(*, as_json: bool) -> str:
    """The memo's name for a command line: "migrate" or "migrate-j"."""
    return "migrate-j" if as_json else "migrate"


def lookup(
    root: str,
    config: str | None,
    variant: str,
    write: Callable[[str, str, int], object] | None = None,
) -> tuple[str, str, int] | None:
    """The memoized (stdout, stderr, exit code) of `variant`, if it may answer; None: run it.

    The lock is taken as a writer takes it (exclusive, here without waiting) and held
    while the inputs are checked and the answer is written (by `write`, when given), so
    no writer runs in between. Its holder line is not written (that would change a file
    status keys on): a writer probing meanwhile sees a nameless holder and retries, as it
    does for a reader's probe. Flywall's pid file is probed again: its identity alone
    cannot say whether the process it names still lives.
    """
    if not enabled() or memo.device_key_configured(root, config):
        return None
    found = memo.read(MEMO, memo.memo_path(root, variant))
    if found is None or len(found[4]) != 2:  # noqa: PLR2004 - the lock and the pid file
        return None
    lock, pid_file = found[4]
    fd = _take(lock)
    if fd is None:
        return None
    try:
        ctx = memo.context(root, config, variant)
        if not memo.matches(found, ctx) or daemon_may_run(pid_file):
            return None
        hit = found[5], "", found[1]
        if write is not None:
            write(*hit)
        return hit
    finally:
        os.close(fd)  # releases the flock


def _take(lock: str) -> int | None:
    """The writer lock's fd, held exclusively; None if it is missing, busy or not writable."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def daemon_may_run(pid_file: str) -> bool:
    """True unless Flywall's pid file surely names no live process (`daemon.live_pid`).

    A missing file, or one naming a pid that no longer exists, is no daemon; anything
    else (a live pid, a zombie, a file that cannot be read or parsed) is left to the run.
    """
    try:
        with open(pid_file, "rb") as f:  # noqa: PTH123
            pid = int(f.read(64).split()[0])
        if pid <= 0:
            return True
        os.kill(pid, 0)
    except FileNotFoundError:
        return False
    except ProcessLookupError:
        return False
    except (OSError, ValueError, IndexError):
        return True
    return True


def keep(
    root: str, config: str | None, variant: str, *, began_ns: int, ws: Workspace, text: str
) -> bool:
    """Memoize a quiet `migrate` just answered (`text`, exit 0) if it may be.

    Called only after the core said the run was quiet (`commands.migrate`'s `on_quiet`).
    `root` and `config` are the option values as given: the fast entry point looks the
    memo up by them before anything has parsed them.
    """
    if not enabled() or "\x1b" in text or memo.device_key_configured(root, config):
        return False
    from flywall.core.commands.quiet import inputs

    found = inputs(ws)
    return memo.write(
        MEMO,
        memo.memo_path(root, variant),
        memo.context(root, config, variant),
        began_ns=began_ns,
        files=found.files,
        dirs=found.dirs,
        lock=found.lock,
        probes=[found.lock, found.pid_file],
        text=text,
        code=0,
        unwritten=found.caches,
    )
