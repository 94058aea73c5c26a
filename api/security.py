"""Who may talk to the API and where it listens: bearer tokens and the loopback rule.

Tokens live in one file (`settings.paths.tokens_file`), one `name token` per line, `#`
comments; the file must not be readable by group or others, as SSH insists for its keys.
The token's name becomes the journal's actor, so an auditor sees which client acted.
"""

from __future__ import annotations

import hmac
import ipaddress
import stat
from typing import TYPE_CHECKING

from flywall.core.errors import SettingsError, UsageError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

MIN_TOKEN_LENGTH = 16


def load_tokens(path: Path) -> list[tuple[str, str]]:
    """Read `(name, token)` pairs from the tokens file.

    :raises SettingsError: the file is missing, readable by others, empty or malformed.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise SettingsError(
            f"{path}: no API tokens file; write `name token` lines into it (mode 0600)"
        ) from None
    if mode & 0o077:
        raise SettingsError(
            f"{path}: mode {mode:04o} lets others read the API tokens; "
            f"it must be 0600 (chmod 600 {path})"
        )
    tokens: list[tuple[str, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2:  # noqa: PLR2004 - the format is exactly `name token`
            raise SettingsError(f"{path}:{number}: expected `name token`")
        name, token = words
        if len(token) < MIN_TOKEN_LENGTH:
            raise SettingsError(
                f"{path}:{number}: token of {name!r} is shorter than {MIN_TOKEN_LENGTH} characters"
            )
        tokens.append((name, token))
    if not tokens:
        raise SettingsError(f"{path}: no tokens; nobody could use the API")
    return tokens


def token_name(tokens: Sequence[tuple[str, str]], given: str) -> str | None:
    """Return the name of the token `given`, comparing in constant time with every token."""
    found = None
    for name, token in tokens:  # no early exit: the time taken says nothing about a match
        if hmac.compare_digest(token.encode(), given.encode()):
            found = name
    return found


def parse_listen(listen: str, *, allow_remote: bool) -> tuple[str, int]:
    """Split `HOST:PORT` (`[::1]:8080` for IPv6) and refuse a non-loopback host unless allowed.

    :raises UsageError: a malformed address, or a remote one without `allow_remote`.
    """
    host, sep, port_text = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:  # noqa: PLR2004
        raise UsageError(f"bad --listen {listen!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
    if not allow_remote and not is_loopback(host):
        raise UsageError(
            f"--listen {listen}: {host} is not a loopback address; "
            "add --allow-remote to serve the API beyond this machine"
        )
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Tell whether `host` (an IP address or `localhost`) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name could resolve anywhere
