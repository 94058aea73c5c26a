"""Who may talk to the API and where it listens: bearer tokens and the loopback rule.

Tokens live in one file (`settings.paths.tokens_file`), one `name token` per line, `#`
comments; the file must not be readable by group or others, as SSH insists for its keys.
The token's name becomes the journal's actor, so an auditor sees which client acted.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import stat
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from flywall.core.commands import SettingsError, UsageError

if TYPE_CHECKING:
    from collections.abc import Sequence

MIN_TOKEN_LENGTH = 16


def load_tokens(path: Path) -> list[tuple[str, str]]:
    """Read `(name, token)` pairs from the tokens file.

    Refuses, naming the file and line, anything that would make a token mean something
    other than what its writer meant: a `#` inside a token (the rest would silently become
    a comment), one token under two names (the journal could not say who acted), control
    characters in a name (they would reach the journal and the terminal), bytes that are
    not UTF-8.

    :raises SettingsError: the file is missing, not a file, readable by others, empty or
        malformed.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SettingsError(
            f"{path}: no API tokens file; write `name token` lines into it (mode 0600)"
        ) from None
    except OSError as e:
        raise SettingsError(f"{path}: cannot read the API tokens file: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SettingsError(f"{path}: not a file; the API tokens file holds `name token` lines")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise SettingsError(
            f"{path}: mode {mode:04o} lets others read the API tokens; "
            f"it must be 0600 (chmod 600 {path})"
        )
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SettingsError(f"{path}: cannot read the API tokens file: {e.strerror}") from None
    tokens: list[tuple[str, str]] = []
    seen: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(raw.split(b"\n"), start=1):
        entry = _token_line(path, number, line)
        if entry is None:
            continue
        name, token = entry
        if token in seen:
            first, at = seen[token]
            raise SettingsError(
                f"{path}:{number}: the token of {name!r} is also the token of {first!r} "
                f"(line {at}); give each client its own token"
            )
        seen[token] = (name, number)
        tokens.append(entry)
    if not tokens:
        raise SettingsError(f"{path}: no tokens; nobody could use the API")
    return tokens


_COMMENT = re.compile(r"(?:^|\s)#.*")
_TOKEN = re.compile(r"[!-~]+")  # visible ASCII: what an HTTP header carries unchanged


def _token_line(path: Path, number: int, raw: bytes) -> tuple[str, str] | None:
    """Parse one line: `name token`, a comment, or blank (None).

    :raises SettingsError: the line is not valid, naming the file and line.
    """
    where = f"{path}:{number}"
    try:
        line = raw.decode("utf-8").removesuffix("\r")
    except UnicodeDecodeError:
        raise SettingsError(f"{where}: not UTF-8 text") from None
    words = _COMMENT.sub("", line).split()
    if not words:
        return None
    if len(words) != 2:  # noqa: PLR2004 - the format is exactly `name token`
        raise SettingsError(f"{where}: expected `name token`")
    name, token = words
    if any(unicodedata.category(char).startswith("C") for char in name):
        raise SettingsError(f"{where}: the name {name[:64]!r} holds a control character")
    if "#" in token:
        raise SettingsError(
            f"{where}: the token of {name!r} holds '#' (a comment starts only after a space)"
        )
    if not _TOKEN.fullmatch(token):
        raise SettingsError(f"{where}: the token of {name!r} must be visible ASCII characters")
    if len(token) < MIN_TOKEN_LENGTH:
        raise SettingsError(
            f"{where}: token of {name!r} is shorter than {MIN_TOKEN_LENGTH} characters"
        )
    return name, token


def token_name(tokens: Sequence[tuple[str, str]], given: str) -> str | None:
    """Return the name of the token `given`, comparing in constant time with every token."""
    found = None
    for name, token in tokens:  # no early exit: the time taken says nothing about a match
        if hmac.compare_digest(token.encode(), given.encode()):
            found = name
    return found


class Address(NamedTuple):
    """Where `serve` listens: a TCP `host` and `port`, or a unix socket `path`."""

    host: str | None = None
    port: int | None = None
    path: Path | None = None

    def url(self) -> str:
        """How the start-up line names it."""
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"http://{host}:{self.port}"


_PORT = re.compile(r"[0-9]{1,5}")  # ASCII only: `int()` also takes other scripts' digits


def parse_listen(listen: str, *, allow_remote: bool) -> Address:
    """Parse `HOST:PORT` (`[::1]:8089` for IPv6) or `unix:PATH`; refuse a remote host.

    A unix socket only reaches this machine, so it needs no `allow_remote`.

    :raises UsageError: a malformed address, or a remote one without `allow_remote`.
    """
    if listen.startswith("unix:"):
        path = listen.removeprefix("unix:")
        if not path or "\0" in path:
            raise UsageError(
                f"bad --listen {listen[:80]!r}: use unix:PATH, e.g. unix:/run/api.sock"
            )
        return Address(path=Path(path))
    host, sep, port_text = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:  # noqa: PLR2004
        raise UsageError(
            f"bad --listen {listen[:80]!r}: use HOST:PORT (ASCII digits), e.g. 127.0.0.1:8089, "
            "or unix:PATH"
        )
    if not allow_remote and not is_loopback(host):
        raise UsageError(
            f"--listen {listen}: {host} is not a loopback address; "
            "add --allow-remote to serve the API beyond this machine"
        )
    return Address(host=host, port=int(port_text))


def is_loopback(host: str) -> bool:
    """Tell whether `host` (an IP address or `localhost`) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name could resolve anywhere
