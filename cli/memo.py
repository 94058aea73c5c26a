"""What both answer memos share: identities, the racy rule, the key, the seal, the file.

An answer memo (`status`: flywall.cli.statusmemo; `migrate` with nothing to do:
flywall.cli.bootmemo) keeps a command's output and exit code, keyed by the identity of every
input the answer was computed from: the command line and environment (`context`), the code
that answered (`code_files`), files (`stamp`) and folders with every entry. The fast entry
point (flywall.cli.fast) answers from it before click or the core are imported, while every
identity is as it was. Why an identity stands for a file's bytes, when one is too recent to
(`racy`), and what each memo keys on: docs/caches.md.

Only the standard library and blake3 are imported here (the seal through
flywall.core.appliance.caches): a memo is worth it only if a hit costs less than the imports
it saves.
"""

from __future__ import annotations

import os
import sys

import blake3

TYPE_CHECKING = False  # typing itself costs a memo hit an import (~2 ms)
if TYPE_CHECKING:
    from flywall.core.appliance.caches import Cache

    Memo = tuple[bytes, int, list[str], list[str], list[str], str]
    """(key, exit code, files, dirs, probes, text): what a memo file holds."""

DIGEST = 32
_KEY = 2 * DIGEST  # the files' key, then the key of files and directories
RACY_COARSE_NS = 3_000_000_000
"""Trust window for a file whose ctime shows whole seconds: such filesystems (FAT: 2 s; ext4
with small inodes: 1 s) cannot tell two changes within one or two seconds apart."""
RACY_TICK_NS = 100_000_000
"""Margin over the timestamp granularity for filesystems with sub-second ctimes: Linux
stamps files from its coarse clock, which lags real time by at most one tick (10 ms at
HZ=100, the lowest), so a change made after `began_ns` gets a ctime later than
`began_ns - RACY_TICK_NS`, and later than any ctime older than that."""


def memo_path(root: str, variant: str) -> str:
    """Where the memo of `variant` (e.g. "status-v-j", "migrate") lives: beside the caches."""
    return os.path.join(root, "var/cache/flywall", f"{variant}.memo")  # noqa: PTH118


def config_path(root: str, config: str | None) -> str:
    """The settings file as load_settings finds it (migration.hcl in the layout found)."""
    if config is not None:
        return config
    from flywall.core.appliance.layout import detect

    return detect(root).settings


def context(root: str, config: str | None, variant: str) -> bytes:
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


def identity(st: os.stat_result) -> bytes:
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


def racy(st: os.stat_result, began_ns: int) -> bool:
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
    if began_ns is not None and racy(st, began_ns):
        raise _Unusable
    return identity(st)


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


def key(ctx: bytes, parts: list[bytes]) -> bytes:
    """The digest of a context and identities (what a memo is filed under)."""
    return blake3.blake3(b"\0".join([ctx, *parts])).digest()


def matches(memo: Memo, ctx: bytes) -> bool:
    """True if every file, then every folder and entry, of `memo` is as it was stamped.

    The files first: after a writer run the journal or state.db tells at once, without
    listing the migrations.
    """
    memo_key, _, files, dirs = memo[:4]
    parts = stamp(files, [])
    if parts is None or key(ctx, parts) != memo_key[:DIGEST]:
        return False
    listed = stamp([], dirs)
    return listed is not None and key(ctx, parts + listed) == memo_key[DIGEST:]


def device_key_configured(root: str, config: str | None) -> bool:
    """True unless the config file surely configures no device key (no such word in it).

    With a device key no memo is read or written: a memo can be checked only by a digest,
    not a MAC (finding the key file needs the settings, which the memo avoids), and the
    key's point is that a file writer cannot forge what a command shows or skips.
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


_LIBRARIES = ("flywall", "msgspec", "apsw", "blake3", "transitions", "hcl2", "lark")


def code_files() -> list[str]:
    """The module files of flywall and the libraries whose code shaped the answer.

    The libraries that were loaded: the compiled ones, the lifecycle's state machine and
    the HCL parser (with its grammar engine) a non-plain file needs.
    """
    files = set()
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        path = getattr(module, "__file__", None)
        if top in _LIBRARIES and isinstance(path, str):
            files.add(path)
    return sorted(files)


def body(
    memo_key: bytes, code: int, files: list[str], dirs: list[str], probes: list[str], text: str
) -> bytes:
    """A memo's unsealed bytes; ValueError if a path holds NUL or the code is not a byte.

    `probes`: paths the lookup checks by other means than their identity (the lock).
    """
    paths = [os.fsencode(p) for p in (*files, *dirs, *probes)]
    if any(b"\0" in p for p in paths) or not 0 <= code < 256:  # noqa: PLR2004
        raise ValueError("not representable")
    counts = (len(files), len(dirs), len(probes))
    return b"".join(
        [
            memo_key,
            bytes([code]),
            *(n.to_bytes(4, "little") for n in counts),
            *(p + b"\0" for p in paths),
            text.encode("utf-8", "surrogatepass"),
        ]
    )


def decode(cache: Cache, data: bytes) -> Memo | None:
    """The memo sealed in `data` by `cache`; None if of another version, damaged or cut."""
    sealed = cache.unseal(data)
    if sealed is None:
        return None
    memo_key, code = sealed[:_KEY], sealed[_KEY]
    counts = [int.from_bytes(sealed[i : i + 4], "little") for i in range(_KEY + 1, _KEY + 13, 4)]
    at = _KEY + 13
    paths = []
    for _ in range(sum(counts)):
        end = sealed.index(b"\0", at)
        paths.append(os.fsdecode(sealed[at:end]))
        at = end + 1
    text = sealed[at:].decode("utf-8", "surrogatepass")
    nfiles, ndirs = counts[0], counts[0] + counts[1]
    return memo_key, code, paths[:nfiles], paths[nfiles:ndirs], paths[ndirs:], text


def read(cache: Cache, path: str) -> Memo | None:
    """The memo at `path`; None if missing, unreadable, or not trusted."""
    try:
        with open(path, "rb") as f:  # noqa: PTH123
            return decode(cache, f.read())
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def write(
    cache: Cache,
    path: str,
    ctx: bytes,
    *,
    began_ns: int,
    files: list[str],
    dirs: list[str],
    lock: str,
    probes: list[str],
    text: str,
    code: int,
    unwritten: list[str] = [],  # noqa: B006 - never mutated
) -> bool:
    """Keep (text, code) for inputs read since `began_ns`; best effort.

    Returns whether a memo was written: nothing is if an input is racy (it changed while,
    or since, the answer was computed), cannot be stamped, or a writer holds `lock` once
    they are stamped (its run may change them yet), or one of `unwritten` (files not
    keyed on, such as caches) was written since `began_ns`. The code that answered is
    added to `files`.
    """
    files = [*files, *code_files()]
    parts = stamp(files, [], began_ns)
    listed = stamp([], dirs, began_ns)
    if parts is None or listed is None or stamp(unwritten, [], began_ns) is None:
        return False
    if writer_holds_lock(lock):
        return False
    memo_key = key(ctx, parts) + key(ctx, parts + listed)
    try:
        sealed_body = body(memo_key, code, files, dirs, probes, text)
    except ValueError:
        return False
    # 0600: the memo is for the user whose answer it holds (the user is in its key too)
    return cache.write(path, sealed_body, mode=0o600)
