"""The answer memo of `status`: the last output, reused while none of its inputs changed.

A fleet agent asks `status` every minute and the answer changes a few times a year, so the
`status` command keeps (`keep`), per variant of the command line, the rendered output and
exit code, and the fast entry point answers from it (`lookup`) without click or the core,
keyed by the identity (`stamp`) of every input the answer was computed from: the
command line and environment (`_context`), the code that answered (`code_files`), the
files a status reads and the migration folders with every entry. What each input is, what
invalidates a memo and why it is safe to lose: docs/caches.md. When one may be written or
read is said by the predicates below (`device_key_configured`, `writer_holds_lock`,
`_racy`); figures: bench/RESULTS.md.

Only the standard library and blake3 are imported here (the seal through
flywall.core.appliance.caches): the memo is worth it only if a hit costs less than the
imports it saves.
"""

from __future__ import annotations

import os
import sys

import blake3

from flywall.core.appliance.caches import Cache

TYPE_CHECKING = False  # typing itself costs a memo hit an import (~2 ms)
if TYPE_CHECKING:
    from flywall.core.commands import Workspace
    from flywall.core.commands.reports import StatusReport

MEMO = Cache("status memo", 3, point="status-memo")  # 3: sealed by the cache helper
"""No code digest: every module file that answered is among the memo's stamped inputs."""
_DIGEST = 32
_KEY = 2 * _DIGEST  # the files' key, then the key of files and directories
RACY_COARSE_NS = 3_000_000_000
"""Trust window for a file whose ctime shows whole seconds: such filesystems (FAT: 2 s; ext4
with small inodes: 1 s) cannot tell two changes within one or two seconds apart."""
RACY_TICK_NS = 100_000_000
"""Margin over the timestamp granularity for filesystems with sub-second ctimes: Linux
stamps files from its coarse clock, which lags real time by at most one tick (10 ms at
HZ=100, the lowest), so a change made after `began_ns` gets a ctime later than
`began_ns - RACY_TICK_NS`, and later than any ctime older than that."""


def enabled() -> bool:
    """False under FLYWALL_NO_STATUS_MEMO=1 (every status afresh) or FLYWALL_NO_FAST_PATH=1.

    Without the fast path nothing reads a memo, so none is written either; tests compare
    an answer from the memo with one from click that way.
    """
    return not (os.environ.get("FLYWALL_NO_STATUS_MEMO") or os.environ.get("FLYWALL_NO_FAST_PATH"))


def variant(*, verbose: bool, as_json: bool) -> str:
    """The memo's name for a command line: "status", "status-v", "status-j", "status-v-j"."""
    return "status" + ("-v" if verbose else "") + ("-j" if as_json else "")


def memo_path(root: str, variant: str) -> str:
    """Where the memo of `variant` (e.g. "status-vj") lives: beside the other caches."""
    return os.path.join(root, "var/cache/flywall", f"{variant}.memo")  # noqa: PTH118


def config_path(root: str, config: str | None) -> str:
    """The settings file as load_settings finds it (migration.hcl in the layout found)."""
    if config is not None:
        return config
    from flywall.core.appliance.layout import detect

    return detect(root).settings


def _context(root: str, config: str | None, variant: str) -> bytes:
    """Everything besides files the answer depends on, as bytes.

    The interpreter is its version and environment (sys.prefix: `python` and `python3`
    of one venv are one), and this module's own path tells one installation from another.
    Who asks is part of it: a user who may not read state.db gets that error afresh, never
    root's answer.
    """
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith("FLYWALL_"))
    who = (os.geteuid(), os.getegid(), sorted(os.getgroups()))
    return repr(
        (sys.version, sys.prefix, __file__, os.getcwd(), root, config, variant, env, who)  # noqa: PTH109
    ).encode("utf-8", "surrogatepass")


def _identity(st: os.stat_result) -> bytes:
    """What stands for a file's bytes ("-" for an absent one, `_stat`).

    Any write, and any `touch` putting mtime back, sets ctime to the kernel's current time,
    which no process chooses (as git trusts its index, and discovery its cache).
    """
    return b"%d,%d,%d,%d,%d,%d" % (
        st.st_dev,
        st.st_ino,
        st.st_mode,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


def _racy(st: os.stat_result, began_ns: int) -> bool:
    """True if this identity is too recent to stand for the bytes read since `began_ns`.

    Identities are taken after the answer was computed: a change at any moment after
    `began_ns` would leave the file a ctime too recent, so one that is old proves the file
    did not change while it was read. The timestamp granularity of a filesystem divides
    10**9 ns and every timestamp it keeps, so gcd(ctime's sub-second part, 10**9) bounds
    it; a whole-second ctime gets the coarse window. mtime is checked too: one set in the
    future is never trusted.
    """
    from math import gcd

    fraction = st.st_ctime_ns % 1_000_000_000
    window = RACY_COARSE_NS if fraction == 0 else gcd(fraction, 1_000_000_000) + RACY_TICK_NS
    return max(st.st_ctime_ns, st.st_mtime_ns) > began_ns - window


class _Unusable(Exception):
    """An input that cannot be stamped: unreadable, or racy."""


def _one(st: os.stat_result, began_ns: int | None) -> bytes:
    if began_ns is not None and _racy(st, began_ns):
        raise _Unusable
    return _identity(st)


def _stat(path: str, began_ns: int | None) -> bytes:
    try:
        return _one(os.stat(path), began_ns)  # noqa: PTH116
    except (FileNotFoundError, NotADirectoryError):
        return b"-"


def stamp(files: list[str], dirs: list[str], began_ns: int | None = None) -> list[bytes] | None:
    """The identities of `files` and of `dirs` with every entry; None if one is unusable.

    Unusable: unreadable (anything but "absent"), or, with `began_ns`, racy.
    """
    try:
        parts = [_stat(path, began_ns) for path in files]
        for path in dirs:
            parts.append(_stat(path, began_ns))
            if parts[-1] == b"-":
                continue
            with os.scandir(path) as listing:
                entries = sorted(listing, key=lambda e: e.name)
            for entry in entries:
                parts.append(os.fsencode(entry.name))
                try:
                    parts.append(_one(entry.stat(), began_ns))
                except FileNotFoundError:  # a dangling symlink
                    parts.append(b"-")
    except (OSError, _Unusable):
        return None
    return parts


def _key(context: bytes, parts: list[bytes]) -> bytes:
    return blake3.blake3(b"\0".join([context, *parts])).digest()


def device_key_configured(root: str, config: str | None) -> bool:
    """True unless the config file surely configures no device key (no such word in it).

    With a device key no memo is read or written: a memo can be checked only by a digest,
    not a MAC (finding the key file needs the settings, which the memo avoids), and the
    key's point is that a file writer cannot forge what status shows.
    """
    try:
        with open(config_path(root, config), "rb") as f:  # noqa: PTH123
            return b"device_key_file" in f.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True


def writer_holds_lock(path: str) -> bool:
    """True if a writer holds (or may hold) the lock: the probe of `lock.current_holder`.

    Its run is about to change the answer, through files it may not have written yet.
    """
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _encode(
    key: bytes, code: int, files: list[str], dirs: list[str], lock: str, text: str
) -> bytes:
    """The memo's file: its body sealed by `MEMO` (version and digest)."""
    return MEMO.seal(_body(key, code, files, dirs, lock, text))


def _body(key: bytes, code: int, files: list[str], dirs: list[str], lock: str, text: str) -> bytes:
    paths = [os.fsencode(p) for p in (*files, *dirs, lock)]
    if any(b"\0" in p for p in paths) or not 0 <= code < 256:  # noqa: PLR2004
        raise ValueError("not representable")
    return b"".join(
        [
            key,
            bytes([code]),
            len(files).to_bytes(4, "little"),
            len(dirs).to_bytes(4, "little"),
            *(p + b"\0" for p in paths),
            text.encode("utf-8", "surrogatepass"),
        ]
    )


def _decode(data: bytes) -> tuple[bytes, int, list[str], list[str], str, str] | None:
    body = MEMO.unseal(data)
    if body is None:  # another version of the memo, damaged or cut short
        return None
    key, code = body[:_KEY], body[_KEY]
    nfiles = int.from_bytes(body[_KEY + 1 : _KEY + 5], "little")
    ndirs = int.from_bytes(body[_KEY + 5 : _KEY + 9], "little")
    at = _KEY + 9
    paths = []
    for _ in range(nfiles + ndirs + 1):
        end = body.index(b"\0", at)
        paths.append(os.fsdecode(body[at:end]))
        at = end + 1
    text = body[at:].decode("utf-8", "surrogatepass")
    return key, code, paths[:nfiles], paths[nfiles:-1], paths[-1], text


def lookup(root: str, config: str | None, variant: str) -> tuple[str, str, int] | None:
    """The memoized (stdout, stderr, exit code) of `variant`, if every input is as it was."""
    memo = None if device_key_configured(root, config) else _read(memo_path(root, variant))
    if memo is None:
        return None
    key, code, files, dirs, lock, text = memo
    # the files first: after a migrate or a drift the journal or state.db tells at once,
    # without listing the migrations
    context = _context(root, config, variant)
    parts = stamp(files, [])
    if parts is None or _key(context, parts) != key[:_DIGEST]:
        return None
    listed = stamp([], dirs)
    if listed is None or _key(context, parts + listed) != key[_DIGEST:] or writer_holds_lock(lock):
        return None
    return text, "", code


def _read(path: str) -> tuple[bytes, int, list[str], list[str], str, str] | None:
    try:
        with open(path, "rb") as f:  # noqa: PTH123
            return _decode(f.read())
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def code_files() -> list[str]:
    """The module files of flywall and the libraries whose code shaped the answer."""
    files = set()
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        path = getattr(module, "__file__", None)
        if top in ("flywall", "msgspec", "apsw", "blake3") and isinstance(path, str):
            files.add(path)
    return sorted(files)


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
    files = [*files, *code_files()]
    parts = stamp(files, [], began_ns)
    listed = stamp([], dirs, began_ns)
    if parts is None or listed is None or writer_holds_lock(lock):
        return False
    context = _context(root, config, variant)
    key = _key(context, parts) + _key(context, parts + listed)
    try:
        body = _body(key, code, files, dirs, lock, text)
    except ValueError:
        return False
    # 0600: the memo is for the user whose answer it holds (the user is in its key too)
    return MEMO.write(memo_path(root, variant), body, mode=0o600)


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
