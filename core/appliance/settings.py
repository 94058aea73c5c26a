"""The `migration { }` block of migration.hcl, validated and placed under a root (DESIGN §9).

The block lives in its own file, `migration.hcl` beside `flywall.hcl` (or `--config FILE`):
Flywall's strict loader refuses any block it does not know, so nothing of ours may sit in
its config. The block is converted into msgspec Structs so every validation error comes
from one place, rewritten into one line naming the file and the dotted key. Paths are
resolved here, once, so no other module needs the rule: a path key left out sits beside
Flywall's own files in the layout found (`layout.detect`); a relative one is relative to
the settings file's folder; an absolute one is placed under `--root`.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import msgspec

from flywall.core.appliance import layout as layouts
from flywall.core.appliance.caches import Cache
from flywall.core.formats.plainhcl import read_plain
from flywall.core.model.errors import ConfigParseError, SettingsError

__all__ = [
    "Duration",
    "EmailSettings",
    "MigrationSettings",
    "Paths",
    "ServerSettings",
    "Settings",
    "SlackSettings",
    "StateSettings",
    "check_parses",
    "disabled",
    "load_settings",
    "parse_duration",
]

Strategy = Literal["incremental", "full", "custom"]
Channel = Literal["email", "slack"]
Identifier = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
ConfigVersion = Annotated[str, msgspec.Meta(pattern=r"^[0-9]+\.[0-9]+$")]
Command = Annotated[
    tuple[Annotated[str, msgspec.Meta(min_length=1)], ...], msgspec.Meta(min_length=1)
]

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_CHOICES = {"strategy": get_args(Strategy), "notification_channels": get_args(Channel)}


class Duration(float):
    """A span of time in seconds, written in the config as text such as "30m" or "1h30m".

    A float subclass, so `settings.timeout` can be handed straight to `time.sleep` or a
    timeout argument while the config stays readable.
    """


def parse_duration(text: str) -> Duration:
    """Read "500ms", "30s", "10m", "2h", "7d", "1w" or a sum like "1h30m" as seconds.

    :raises ValueError: the text is not a duration; the message says how to write one.
    """
    if not _DURATION.fullmatch(text):
        raise ValueError(f'bad duration "{text}" (use e.g. 30s, 10m, 2h, 7d)')
    return Duration(sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(text)))


class _Block(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every block: a misspelt key is an error, never silently ignored."""


class EmailSettings(_Block, frozen=True):
    """`email { }`: where failure (and optional start/complete) notices are mailed."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 25
    from_: str | None = msgspec.field(default=None, name="from")
    to: tuple[str, ...] = ()
    starttls: bool = False
    ca_file: str | None = None
    """PEM CA certificates to trust for STARTTLS (a relay with a private CA); default: the
    system's."""
    credentials_file: str | None = None


class SlackSettings(_Block, frozen=True):
    """`slack { }`: the incoming webhook notices are posted to."""

    webhook_url: str | None = None


class ServerSettings(_Block, frozen=True):
    """`server { }`: the HTTP API; `tokens_file` here overrides the block-level one."""

    listen: str = "127.0.0.1:8089"  # never Flywall's own 8080/8443
    tokens_file: str | None = None


class StateSettings(_Block, frozen=True):
    """`state { }`: how the state database target runs its migrations."""

    resume_on_crash: bool = True
    batch_size: Annotated[int, msgspec.Meta(ge=1)] | None = None


class MigrationSettings(_Block, frozen=True):
    """Every key of the `migration { }` block, with the seed's defaults; paths as written."""

    enabled: bool = True
    directory: str | None = None
    """None: `migrations/` in the config folder of the layout found."""
    auto_migrate: bool = False
    backup_before: bool = True
    timeout: Duration = parse_duration("30m")
    version_table: Identifier = "schema_versions"
    current_version: str | None = None
    strategy: Strategy = "incremental"
    validate_before: bool = True
    validate_after: bool = True
    dry_run: bool = False
    backup_retention: Duration = parse_duration("7d")
    backup_location: str | None = None
    auto_rollback: bool = False
    rollback_timeout: Duration = parse_duration("10m")
    max_rollback_attempts: Annotated[int, msgspec.Meta(ge=0)] = 3
    notify_on_start: bool = False
    notify_on_complete: bool = False
    notify_on_failure: bool = True
    notification_channels: tuple[Channel, ...] = ()
    confirm_within: Duration | None = None
    include_shipped: bool = True
    require_signatures: bool = False
    trusted_keys: tuple[str, ...] = ()
    device_key_file: str | None = None
    journal: str | None = None
    state_db: str | None = None
    api_document: str | None = None
    tokens_file: str | None = None
    max_config_version: ConfigVersion = "1.1"
    """The highest config `schema_version` the firmware accepts (Flywall v0.3: "1.1")."""
    stop_command: Command | None = None
    start_command: Command | None = None
    """Argument lists that stop and start the Flywall daemon around a run (both or none)."""
    check_command: Command | None = None
    """Argument list checking a migrated config before it replaces flywall.hcl; `{config}`
    is the temporary file's path (e.g. ["flywall", "check", "{config}"])."""
    email: EmailSettings | None = None
    slack: SlackSettings | None = None
    server: ServerSettings = ServerSettings()
    state: StateSettings = StateSettings()


class Paths(msgspec.Struct, frozen=True, kw_only=True):
    """Every file and folder the tool touches, absolute and already placed under the root."""

    config: Path
    """Flywall's flywall.hcl in the layout found."""
    migrations_dir: Path
    state_db: Path
    api_document: Path
    journal: Path
    lock: Path
    backups: Path
    tokens_file: Path
    device_key_file: Path | None
    email_credentials_file: Path | None
    email_ca_file: Path | None = None
    settings: Path | None = None
    """Our settings file (migration.hcl, or --config)."""
    run_dir: Path | None = None
    """Flywall's run folder: `flywall.pid` there names the daemon."""
    ui_backups: Path | None = None
    """Flywall's UI backups (`<config dir>/backups`), where a run's config backup also goes."""


class Settings(MigrationSettings, frozen=True, kw_only=True):
    """The validated block plus where it came from and where its paths point."""

    root: Path
    config_path: Path
    """The settings file read (migration.hcl, or --config), whether or not it exists."""
    paths: Paths
    layout: str = layouts.NONE
    """"flywall", "seed" or "none" (no Flywall config under the root)."""


def load_settings(
    root: Path, config_path: Path | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Read the `migration { }` block of migration.hcl into `Settings`; no file means defaults.

    :param root: prefix of every absolute path; `/` is the real filesystem.
    :param config_path: the settings file as the user named it (it must exist); default
        `migration.hcl` beside `flywall.hcl` in the layout found under the root.
    :param environ: the environment holding Flywall's `FLYWALL_*_DIR` overrides.
    :raises ConfigParseError: the file is not valid HCL.
    :raises SettingsError: the block is invalid; the message names the file and key.
    """
    root = Path(root).absolute()
    found = layouts.detect(str(root), environ)
    config = Path(found.settings) if config_path is None else Path(config_path).absolute()
    shown = _shown(config, root)
    try:
        text = config.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        if config_path is not None:  # named by the operator: a typo must not mean defaults
            raise SettingsError(f"{shown}: cannot read: {e.strerror}") from e
        text = ""
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"{shown}: cannot read: {e}") from e
    raw = _cached_block(text, shown, root)
    try:
        block = msgspec.convert(raw, MigrationSettings, dec_hook=_decode)
    except msgspec.ValidationError as e:
        raise SettingsError(_rewrite(str(e), shown)) from e
    for channel in block.notification_channels:
        if getattr(block, channel) is None:
            raise SettingsError(
                f'{shown}: migration.notification_channels: "{channel}" is listed '
                f"but the migration.{channel} {{ }} block is missing"
            )
    if (block.stop_command is None) != (block.start_command is None):
        raise SettingsError(
            f"{shown}: migration.stop_command and migration.start_command go together: "
            "a run that stops the daemon must start it again"
        )
    return Settings(
        **msgspec.structs.asdict(block),
        root=root,
        config_path=config,
        paths=_resolve(block, config, root, found),
        layout=found.name,
    )


def _shown(config: Path, root: Path) -> str:
    """Name the file as the operator knows it: relative to a demo root, else absolute."""
    demo = root != Path("/") and config.is_relative_to(root)
    return str(config.relative_to(root) if demo else config)


def disabled(settings: Settings) -> str | None:
    """Why migrations may not move on this box, or None when `enabled` is true.

    "migrations are disabled in PATH (line N: enabled = false)": the line is found again in
    the file (the parsed block keeps no lines), so the operator can go straight to it.
    """
    if settings.enabled:
        return None
    shown = _shown(settings.config_path, settings.root)
    try:
        text = settings.config_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""  # changed since it was read: still disabled, by what was read
    line = _enabled_line(text)
    where = f"line {line}: " if line is not None else ""
    return f"migrations are disabled in {shown} ({where}enabled = false)"


def _enabled_line(text: str) -> int | None:
    """The line setting `enabled` directly inside the `migration { }` block."""
    depth, in_comment, heredoc = 0, False, None
    for number, line in enumerate(text.splitlines(), 1):
        if heredoc is not None:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        key = None if in_comment or depth != 1 else _KEY.match(line)
        if key and key[1] == "enabled":
            return number
        depth, in_comment, heredoc = layouts.scan_line(line, depth, in_comment)
    return None


CACHE = Cache(
    "settings cache",
    2,  # 2: sealed by the cache helper, with its version
    ("appliance/settings.py",),  # how a parsed file becomes the block kept
    point="settings-cache",
)


def _cached_block(text: str, shown: str, root: Path) -> dict[str, Any]:
    """Return the `migration { }` body: read plainly if we can, else parsed by hcl2 and cached.

    Plain files (literal values only, see `plainhcl`) are read directly in well under a
    millisecond, with no cache I/O. Anything else goes to python-hcl2 (~80 ms and ~23 MiB
    per cold process: see bench/RESULTS.md), so its answer is cached under
    `var/cache/flywall/`, keyed by the file's digest and sealed by `CACHE` (docs/caches.md):
    a fleet agent asks every minute while the file changes a few times a year. The cache is
    derived data: a miss, a stale entry or an unwritable folder only costs the parse. Only
    a file that parsed is cached, so errors are always reported. It carries no device-key
    MAC: the key's file is named by these very settings.
    """
    plain = read_plain(text)
    if plain is not None:
        return _pick_block(plain, shown)
    import blake3

    digest = blake3.blake3(text.encode()).hexdigest()
    cache = root / "var/cache/flywall/settings.msgpack"
    stored = CACHE.read(cache)
    with contextlib.suppress(msgspec.DecodeError, AttributeError, TypeError, KeyError):
        entry = None if stored is None else msgspec.msgpack.decode(stored)
        if entry is not None and entry.get("digest") == digest:
            block: dict[str, Any] = entry["block"]
            return block
    _refuse_duplicates(text, shown)
    block = _pick_block(_parse_hcl2(text, shown), shown)
    # OverflowError: an integer msgpack cannot hold; validation, not the cache, judges it.
    with contextlib.suppress(OverflowError):
        CACHE.write(cache, msgspec.msgpack.encode({"digest": digest, "block": block}))
    return block


def _resolve(block: MigrationSettings, settings: Path, root: Path, found: layouts.Layout) -> Paths:
    """Apply DESIGN §9's rule to every path key, so nothing else needs to know it.

    A key left out sits beside Flywall's files: settings, migrations and tokens in the
    config folder; journal, backups, state.db and the api document in the state folder.
    """
    config_dir, state_dir = Path(found.config_dir), Path(found.state_dir)

    def place(value: str | None, default: Path) -> Path:
        if value is None:
            return default
        path = Path(value)
        if path.is_absolute():
            return root / path.relative_to(path.anchor)
        return settings.parent / path

    journal = place(block.journal, state_dir / "migration-journal.db")
    credentials = block.email.credentials_file if block.email else None
    ca_file = block.email.ca_file if block.email else None
    tokens = block.server.tokens_file or block.tokens_file
    return Paths(
        config=Path(found.config),
        migrations_dir=place(block.directory, config_dir / "migrations"),
        state_db=place(block.state_db, state_dir / "state.db"),
        api_document=place(block.api_document, state_dir / "api.json"),
        journal=journal,
        lock=journal.with_name(journal.name + ".lock"),
        backups=place(block.backup_location, state_dir / "migration-backups"),
        tokens_file=place(tokens, config_dir / "migration-api.tokens"),
        device_key_file=place(block.device_key_file, root) if block.device_key_file else None,
        email_credentials_file=place(credentials, root) if credentials else None,
        email_ca_file=place(ca_file, root) if ca_file else None,
        settings=settings,
        run_dir=Path(found.run_dir),
        ui_backups=config_dir / "backups",
    )


def check_parses(text: str, shown: str) -> None:
    """Refuse an HCL text that does not parse, naming file, line and column (DESIGN §8).

    Plain files are known to parse without python-hcl2 (see `plainhcl`); only the rest
    pays for its import.

    :raises ConfigParseError: naming `shown`, the line and the column.
    """
    if read_plain(text) is None:
        _parse_hcl2(text, shown)


def _parse_hcl2(text: str, shown: str) -> dict[str, Any]:
    """Parse the whole file with python-hcl2, the parser of record; syntax errors name the line."""
    import hcl2  # costly (bench/RESULTS.md, cache figures): only for files `read_plain` declines
    from lark.exceptions import UnexpectedInput

    options = hcl2.SerializationOptions(strip_string_quotes=True, with_comments=False)
    try:
        return hcl2.loads(text, serialization_options=options)
    except UnexpectedInput as e:
        raise ConfigParseError(shown, e.line, e.column, _parse_detail(e)) from e
    except RuntimeError as e:  # its semantic checks, e.g. "Attribute x is already defined."
        raise SettingsError(f"{shown}: {e}") from e


_KEY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_-]*)\s*=(?!=)")


def _refuse_duplicates(text: str, shown: str) -> None:
    """Refuse a key set twice in one block, naming both lines (python-hcl2 lets the last win).

    :raises SettingsError: "<file>:<line>: <key>: set twice (first on line N)".
    """
    scopes: dict[int, dict[str, int]] = {0: {}}
    depth, in_comment, heredoc = 0, False, None
    for number, line in enumerate(text.splitlines(), 1):
        if heredoc is not None:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        key = None if in_comment else _KEY.match(line)
        if key:
            seen = scopes.setdefault(depth, {})
            if key[1] in seen:
                raise SettingsError(
                    f"{shown}:{number}: {key[1]}: set twice in one block "
                    f"(first on line {seen[key[1]]}); keep one"
                )
            seen[key[1]] = number
        new_depth, in_comment, heredoc = layouts.scan_line(line, depth, in_comment)
        for level in [d for d in scopes if d > min(depth, new_depth)]:
            del scopes[level]  # a block closed or opened: its keys are its own
        depth = new_depth


def _pick_block(data: dict[str, Any], shown: str) -> dict[str, Any]:
    """Return the one `migration { }` body of a parsed file, with block markers stripped."""
    if "migration" not in data:
        return {}
    if not _is_block(data["migration"]):
        raise SettingsError(f"{shown}: migration: expected one unlabelled block")
    return _unwrap(data["migration"], "migration", shown)


def _is_block(value: object) -> bool:
    """Tell blocks from attributes: python-hcl2 8.x marks each block's dict `__is_block__`."""
    if not isinstance(value, list) or not value:
        return False
    return all(isinstance(b, dict) and "__is_block__" in b for b in value)


def _unwrap(value: list[dict[str, Any]], key: str, shown: str) -> dict[str, Any]:
    """Turn a block list into its single body; a repeated block is ambiguous, so an error."""
    if len(value) > 1:
        raise SettingsError(f"{shown}: {key}: block appears {len(value)} times; allowed once")
    return {
        k: _unwrap(v, f"{key}.{k}", shown) if _is_block(v) else v
        for k, v in value[0].items()
        if k != "__is_block__"
    }


def _parse_detail(error: Exception) -> str:
    """Say briefly what lark found; its own message lists every token it expected."""
    token = getattr(error, "token", None)
    if token is not None and token.type != "$END":
        words = str(token).split()
        return f"unexpected token {words[0][:20]!r}" if words else "unexpected end of line"
    char = getattr(error, "char", None)
    return f"unexpected character {char!r}" if char else "unexpected end of input"


def _decode(type_: type, value: Any) -> Any:
    """Decode our one custom type in msgspec, so its errors gain the key's location."""
    if type_ is Duration:
        if not isinstance(value, str):
            got = "null" if value is None else type(value).__name__
            raise TypeError(f"expected a duration string, got {got}")
        return parse_duration(value)
    raise NotImplementedError


def _rewrite(message: str, shown: str) -> str:
    """Turn msgspec's "<what> - at `$.a[0]`" into "<file>: migration.a[0]: <what>"."""
    what, _, where = message.partition(" - at `")
    key = "migration" + where.rstrip("`").removeprefix("$")
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", what)
    if unknown:
        return f"{shown}: {key}.{unknown[1]}: unknown key"
    if what.startswith("Expected `"):  # msgspec's type names, in HCL's words
        what = what.replace("`array", "`list").replace("`object", "`block")
    detail = what.replace("`", "")
    wanted = 'a version "X.Y" such as "1.1"' if key.endswith("_version") else None
    detail = re.sub(r"str matching regex '.*'", wanted or "a plain SQL identifier", detail)
    choices = _CHOICES.get(re.sub(r"\[\d+\]$", "", key).rpartition(".")[2])
    if detail.startswith("Invalid enum value") and choices:
        detail += f" (use one of: {', '.join(choices)})"
    return f"{shown}: {key}: {detail[:1].lower()}{detail[1:]}"
