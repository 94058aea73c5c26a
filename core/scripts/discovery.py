"""Find migration files and describe them without running them (DESIGN §4).

Listing must stay cheap even for a thousand migrations, and a broken or hostile file must
not run just because someone asked for `status`. So Python migrations are read with `ast`
only; their code runs solely through `load_module`, when the engine applies them. A
declarative `.hcl` file (Flywall's format, core/scripts/declarative.py) is data: it is checked
here, and `load_module` turns it into an `up` and a `down`.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import time
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import blake3
import msgspec

from flywall.core.appliance.caches import Cache
from flywall.core.model.errors import DiscoveryError

if TYPE_CHECKING:
    import ast
    from collections.abc import Sequence

__all__ = [
    "COMPONENTS",
    "Broken",
    "Migration",
    "checksum",
    "discover",
    "from_source",
    "load_module",
    "scan",
    "shipped_directory",
]

COMPONENTS = ("database", "state", "config", "api")
# Patterns, not compiled ones: `status` and the writers mostly take files from the cache,
# and re compiles (and keeps) a pattern on its first use only.
_FILE_NAME = r"^([0-9]{12,})_([a-z0-9][a-z0-9_]*)\.(py|sql|hcl)$"
_EXPECTED_NAME = "expected NNNNNNNNNNNN_slug.py, .sql or .hcl, version of at least 12 digits"
_VERSION = r"^[0-9]{12,}\Z"  # ASCII: `\d` also matches other scripts' digits
_BOM = b"\xef\xbb\xbf"
_SQL_MARKERS = {f"-- migrate:{section}": section for section in ("up", "down", "verify")}
_SQL_HEADER = r"^(schema_version|depends_on):(.*)$"
_PY_METADATA = ("component", "schema_version", "depends_on", "deprecations")
_CONFIG_PATH = r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$"


class Migration(msgspec.Struct, frozen=True, kw_only=True):
    """One migration file as found on disk or in the journal; never its running code.

    `checksum` is the blake3 digest of `source`, the normalized bytes, so a source stored
    in the journal verifies by hashing it as it is, never by normalizing it again.

    `deprecations` maps a flywall.hcl key the migration retires (a dotted path of block
    types from the top of the file, ending in a block type or an attribute name, such as
    ``api.listen``) to what replaces it; `validate` warns about each one still present.
    """

    version: str
    slug: str
    component: str
    path: str
    kind: Literal["python", "sql", "hcl"]
    checksum: str
    source: bytes
    description: str = ""
    schema_version: str | None = None
    depends_on: tuple[str, ...] = ()
    has_down: bool = False
    has_verify: bool = False
    up_sql: str | None = None
    down_sql: str | None = None
    verify_sql: str | None = None
    deprecations: dict[str, str] = {}

    @property
    def name(self) -> str:
        """The file name without its extension, e.g. ``202312010001_add_zone_services``."""
        return f"{self.version}_{self.slug}"


class Broken(msgspec.Struct, frozen=True, kw_only=True):
    """A file in a migrations folder that is not a usable migration, and the one-line why.

    Readers show it beside the others, so one bad file never hides the box; writers refuse.
    """

    path: str
    reason: str

    @property
    def version(self) -> str:
        """The version its name gives (12+ leading digits), or "" for a name without one."""
        match = re.match(r"([0-9]{12,})_", self.path.rpartition("/")[2])
        return match[1] if match else ""


def checksum(raw: bytes) -> tuple[bytes, str]:
    """Return the normalized bytes and their hex blake3 digest.

    A UTF-8 BOM is stripped and CRLF folded to LF (a lone CR is kept), so an editor's
    line endings never look like an edit of an applied migration.
    """
    normalized = raw.removeprefix(_BOM).replace(b"\r\n", b"\n")
    return normalized, blake3.blake3(normalized).hexdigest()


def from_source(path: str, raw: bytes) -> Migration:
    """Describe one migration from its path and raw bytes, without executing it.

    :param path: where the bytes came from; its file name gives version and slug.
    :raises DiscoveryError: the name, encoding or content is not a valid migration.
    """
    # The text after the last "/" is Path(path).name whenever it can be a migration's
    # name (no Path object per file); anything else is asked of Path, as before.
    match = re.match(_FILE_NAME, path.rpartition("/")[2]) or re.match(_FILE_NAME, Path(path).name)
    if match is None:
        raise DiscoveryError(path, _EXPECTED_NAME)
    version, slug, extension = match.groups()
    source, digest = checksum(raw)
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DiscoveryError(path, f"is not UTF-8 ({e.reason} at byte {e.start})") from e
    parse = {"py": _parse_python, "sql": _parse_sql, "hcl": _parse_declarative}[extension]
    return Migration(
        version=version,
        slug=slug,
        path=path,
        checksum=digest,
        source=source,
        **parse(path, text),
    )


RACY_NS = 3_000_000_000
"""A file changed this recently (before the scan began) is read, never cached.

A file's timestamps have a granularity (a clock tick; a second or two on some
filesystems): a write right after the scan read a file could leave every stat field as it
was. Files older than this cannot be rewritten with their old ctime, since ctime is set
by the kernel to "now" on every change (git's "racily clean" entries, done the safe way)."""


def discover(
    directories: Sequence[Path], cache: Path | None = None, *, key: bytes | None = None
) -> list[Migration]:
    """Describe every migration file in `directories`, ordered by version.

    The strict form of `scan`, for callers that must not go on past a broken file.

    :raises DiscoveryError: a file is invalid, or two files share a version.
    """
    migrations, broken = scan(directories, cache, key=key)
    if broken:
        raise broken[0][1]
    return migrations


def scan(
    directories: Sequence[Path], cache: Path | None = None, *, key: bytes | None = None
) -> tuple[list[Migration], list[tuple[Broken, DiscoveryError]]]:
    """Describe every usable migration file, ordered by version, and every broken one.

    A configured directory that does not exist yet holds no migrations; that is not an
    error, because a fresh appliance has only the shipped ones. A file that is not a valid
    migration (name, encoding, syntax, a version used twice) is returned as broken, with
    the error that describes it, so readers can show the rest of the box.

    With `cache`, a file whose (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) are
    those recorded is taken from the cache (its source, checksum and metadata) instead of
    read, hashed and parsed again. That is sound for the reason git trusts its index: any
    write to a file, and any `touch` or `os.utime` putting its mtime back, sets its ctime
    to the current time, which no process can choose; so equal stat fields mean the bytes
    cached are the bytes on disk. Files changed within `RACY_NS` of the scan are never
    cached, and a broken file never is (it is read again on every scan). The cache file
    is sealed by `CACHE` (docs/caches.md): its version (this code's) and a blake3 digest,
    keyed with `key` (the device key) when there is one, so a cache written by other code,
    edited or damaged on disk is ignored.

    :raises DiscoveryError: a folder cannot be listed.
    """
    known = _load_cache(cache, key) if cache is not None else {}
    fresh_before = time.time_ns() - RACY_NS
    seen: _CacheEntries = {}
    found: dict[str, Migration] = {}
    broken: list[tuple[Broken, DiscoveryError]] = []
    for directory in directories:
        entries = _listing(directory)
        if entries is None:
            continue
        base = str(directory)
        prefix = "" if base == "." else base.rstrip("/") + "/"  # as str(directory / name)
        for entry in entries:
            # Packages, caches, hidden files and anything else that is not a migration.
            if entry.name.startswith(("_", ".")) or not entry.is_file():
                continue
            stat = entry.stat()
            stamp = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
            path = prefix + entry.name
            hit = known.get(path)
            try:
                if hit is not None and hit[0] == stamp:
                    migration = hit[1]
                else:
                    migration = from_source(path, _read(path, stat.st_size))
            except DiscoveryError as e:
                broken.append((_broken(path, e), e))
                continue
            if max(stat.st_ctime_ns, stat.st_mtime_ns) < fresh_before:
                seen[path] = (stamp, migration)
            other = found.setdefault(migration.version, migration)
            if other is not migration:
                detail = f"version {migration.version} is also used by {other.path}"
                error = DiscoveryError(migration.path, detail)
                broken.append((_broken(migration.path, error), error))
    if cache is not None and seen != known:
        _save_cache(cache, seen, key)
    return sorted(found.values(), key=lambda m: (int(m.version), m.version)), broken


def _broken(path: str, error: DiscoveryError) -> Broken:
    """The file and the error's message without its leading location (shown as `path`)."""
    message = str(error)
    if not message.startswith(path):
        return Broken(path=path, reason=message)
    rest = message[len(path) :]
    if rest.startswith(":") and rest[1:2].isdigit():  # path:LINE:COL: detail
        return Broken(path=path, reason="line " + rest[1:])
    return Broken(path=path, reason=rest.removeprefix(": "))


def _listing(directory: Path) -> list[os.DirEntry[str]] | None:
    """The folder's .py, .sql and .hcl entries by name; None when it does not exist.

    :raises DiscoveryError: it is not a folder, or cannot be listed (permissions).
    """
    try:
        # scandir: one stat per file (entry.stat()); its type comes with the listing
        with os.scandir(directory) as listing:
            return sorted(
                (e for e in listing if e.name.endswith((".py", ".sql", ".hcl"))),
                key=lambda e: e.name,
            )
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise DiscoveryError(str(directory), "is not a directory") from None
    except OSError as e:
        raise DiscoveryError(str(directory), f"cannot list: {e.strerror}") from e


def _read(path: str, size: int) -> bytes:
    """The whole file: os.open/os.read, no file object (buffer, fstat) per file.

    Sized by the stat just taken, and read until read(2) says end of file, so a file
    that grew since, or a filesystem that returns short reads, still gives every byte.

    :raises DiscoveryError: the file cannot be read (permissions, I/O error).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = [os.read(fd, size + 1)]
            while chunk := os.read(fd, max(size, 1 << 16)):
                chunks.append(chunk)
        finally:
            os.close(fd)
    except OSError as e:
        raise DiscoveryError(path, f"cannot read: {e.strerror}") from e
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_Stamp = tuple[int, int, int, int, int]
_CacheEntries = dict[str, tuple[_Stamp, Migration]]
_cache_decoder = msgspec.msgpack.Decoder(_CacheEntries)
CACHE = Cache(
    "discovery cache",
    2,  # 2: sealed by the cache helper, with its version
    ("scripts/discovery.py", "scripts/declarative.py"),  # how a file becomes a Migration
    point="discovery-cache",
)


def _load_cache(path: Path, key: bytes | None) -> _CacheEntries:
    """The cached entries; none if the file is missing, damaged, altered or of another key."""
    body = CACHE.read(path, key)
    try:
        return {} if body is None else _cache_decoder.decode(body)
    except msgspec.DecodeError:
        return {}


def _save_cache(path: Path, entries: _CacheEntries, key: bytes | None) -> None:
    """Best effort: a cache that cannot be written only costs the next read of every file."""
    CACHE.write(path, msgspec.msgpack.encode(entries), key)


def shipped_directory() -> Path:
    """Return the folder of the `flywall.migrations` package (its migrations are data)."""
    package = importlib.import_module("flywall.migrations")
    assert package.__file__ is not None  # a regular package, never a namespace one
    return Path(package.__file__).parent


def load_module(migration: Migration) -> types.ModuleType:
    """Execute a Python migration's stored source as a fresh, unregistered module.

    Running from `migration.source` rather than the file lets a migration roll back after
    a firmware downgrade removed its file (DESIGN §4).

    A declarative migration (`.hcl`) gives a module whose `up` and `down` apply its
    operations (core/scripts/declarative.py), so the engine calls it as it calls any other.

    :raises DiscoveryError: the module body raised.
    """
    if migration.kind == "hcl":
        from flywall.core.scripts.declarative import functions

        return functions(migration)
    if migration.kind != "python":
        raise ValueError(f"{migration.path} is a SQL migration; there is no module to load")
    name = f"flywall_migration_{migration.version}"
    module = types.ModuleType(name)
    module.__file__ = migration.path
    # Registered only while the body runs: dataclasses and typing look their defining
    # module up in sys.modules, but a lasting entry would go stale across versions.
    sys.modules[name] = module
    try:
        code = compile(migration.source.decode("utf-8"), migration.path, "exec")
        exec(code, module.__dict__)  # noqa: S102 - running the vendor's migration is the point
    except Exception as e:
        raise DiscoveryError(migration.path, f"failed to load: {type(e).__name__}: {e}") from e
    finally:
        del sys.modules[name]
    return module


def _parse_python(path: str, text: str) -> dict[str, Any]:
    """Read metadata from the module's syntax tree; nothing in the file is executed."""
    import ast  # only when a file is not in the discovery cache

    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError as e:
        error = DiscoveryError(f"{path}:{e.lineno}:{e.offset}", f"syntax error: {e.msg}")
        error.path = path  # the location belongs in the message, not in the field
        raise error from e
    except ValueError as e:  # Python 3.11 reports NUL bytes this way
        raise DiscoveryError(path, f"syntax error: {e}") from e
    values, functions = _module_names(path, tree)
    if "up" not in functions:
        raise DiscoveryError(path, "has no module-level 'def up(ctx, ...)'")
    component = values.get("component")
    if component not in COMPONENTS:
        detail = f"component must be one of {', '.join(COMPONENTS)}, got {component!r}"
        raise DiscoveryError(path, detail)
    schema_version = values.get("schema_version")
    if schema_version is not None and not isinstance(schema_version, str):
        raise DiscoveryError(path, f"schema_version must be a string, got {schema_version!r}")
    docstring = (ast.get_docstring(tree) or "").strip()
    return {
        "component": component,
        "kind": "python",
        "description": docstring.splitlines()[0].strip() if docstring else "",
        "schema_version": schema_version,
        "depends_on": _versions(path, values.get("depends_on", [])),
        "has_down": "down" in functions,
        "has_verify": "verify" in functions,
        "deprecations": _deprecations(path, values.get("deprecations", {})),
    }


def _deprecations(path: str, value: Any) -> dict[str, str]:
    """Check a `deprecations` value: a dict of dotted config paths to their replacements."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise DiscoveryError(path, f"deprecations must map str to str, got {value!r}")
    for key in value:
        if not re.match(_CONFIG_PATH, key):
            detail = f"deprecations: {key!r} is not a dotted path of HCL names (e.g. api.listen)"
            raise DiscoveryError(path, detail)
    return value


def _module_names(path: str, tree: ast.Module) -> tuple[dict[str, Any], set[str]]:
    """Collect the module-level metadata values and the names of module-level functions."""
    import ast

    values: dict[str, Any] = {}
    functions: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            functions.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id in _PY_METADATA:
                    values[target.id] = _literal(path, target.id, node.value)
    return values, functions


def _literal(path: str, variable: str, node: ast.expr) -> Any:
    """Evaluate a metadata value that must be a literal, since the file is not run."""
    import ast

    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError) as e:
        raise DiscoveryError(path, f"{variable} must be a literal value") from e


def _versions(path: str, value: Any) -> tuple[str, ...]:
    """Check a `depends_on` value: a list of versions, each of at least 12 digits."""
    if not isinstance(value, list | tuple) or not all(
        isinstance(item, str) and re.match(_VERSION, item) for item in value
    ):
        raise DiscoveryError(path, f"depends_on must list versions of 12+ digits, got {value!r}")
    return tuple(value)


def _parse_sql(path: str, text: str) -> dict[str, Any]:
    """Split a SQL migration into its sections and read its leading comment block.

    An empty down (or verify) section counts as absent: the migration is irreversible, so
    a rollback must say so instead of silently doing nothing.
    """
    sections: dict[str, list[str]] = {}
    preamble: list[str] = []
    current: list[str] = preamble
    for number, line in enumerate(text.split("\n"), start=1):
        # Only a line holding the marker's text can be one (a substring test, in C).
        section = _SQL_MARKERS.get(line.strip()) if "-- migrate:" in line else None
        if section is None:
            current.append(line)
        elif section in sections:
            raise DiscoveryError(path, f"line {number}: '-- migrate:{section}' repeated")
        else:
            current = sections[section] = []
    body = {section: "\n".join(lines).strip() or None for section, lines in sections.items()}
    if body.get("up") is None:
        raise DiscoveryError(path, "has no '-- migrate:up' section, or it is empty")
    # Most files open with their first marker: nothing to read before it then.
    headers, description = _sql_preamble(path, preamble) if any(preamble) else ({}, "")
    depends_on = [v.strip() for v in headers.get("depends_on", "").split(",") if v.strip()]
    return {
        "component": "database",
        "kind": "sql",
        "description": description,
        "schema_version": headers.get("schema_version") or None,
        "depends_on": _versions(path, depends_on) if depends_on else (),
        "has_down": body.get("down") is not None,
        "has_verify": body.get("verify") is not None,
        "up_sql": body["up"],
        "down_sql": body.get("down"),
        "verify_sql": body.get("verify"),
    }


def _sql_preamble(path: str, lines: list[str]) -> tuple[dict[str, str], str]:
    """Read the comments before the first marker: header lines, then the description.

    Any statement there would belong to no section and silently never run, so it is an
    error rather than ignored.
    """
    headers: dict[str, str] = {}
    description = ""
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("--"):
            raise DiscoveryError(path, f"line {number}: SQL before the first marker is never run")
        comment = stripped.removeprefix("--").strip()
        header = re.match(_SQL_HEADER, comment)
        if header is not None:
            headers[header[1]] = header[2].strip()
        elif comment and not description:
            description = comment
    return headers, description


def _parse_declarative(path: str, text: str) -> dict[str, Any]:
    """Read Flywall's declarative format (FLYWALL.md §4); its down is always inferred.

    Each rename retires its target, so `validate` warns where the config still uses it.
    """
    from flywall.core.scripts.declarative import parse

    steps = parse(path, text)
    renames = [o for s in steps for o in s.operations if o.new_name is not None]
    return {
        "component": "config",
        "kind": "hcl",
        "description": "; ".join(s.description for s in steps if s.description),
        "schema_version": steps[-1].to_version,
        "has_down": True,
        "deprecations": {o.target: ".".join([*o.parent, o.new_name or ""]) for o in renames},
    }
