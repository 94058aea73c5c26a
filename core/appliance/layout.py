"""Where Flywall's own files are under a root: its layout, detected (DESIGN §9, FLYWALL.md §1).

Two layouts exist in the field. Flywall's own puts everything under `/opt/flywall`
(`etc/flywall.hcl`, `var/lib/state.db`, `var/run/flywall.pid`) and honours environment
overrides; the seed's (and some distributions') uses `/etc/flywall` and `/var/lib/flywall`.
Our files sit beside Flywall's in whichever layout is found, so an operator finds them where
the firmware keeps its own, and nothing is ever invented on a folder that is not an appliance.

Only the standard library is used (os.path, no pathlib): the fast status path calls this
before it decides whether anything heavier is needed.
"""

from __future__ import annotations

import os
import re

__all__ = [
    "FLYWALL",
    "NONE",
    "SEED",
    "Layout",
    "candidates",
    "detect",
    "migration_block_line",
    "scan_line",
    "top_level_lines",
]

FLYWALL = "flywall"
SEED = "seed"
NONE = "none"

CONFIG_NAME = "flywall.hcl"
SETTINGS_NAME = "migration.hcl"

_OPT = "opt/flywall"
_STATE_DIR = re.compile(r'state_dir\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:#.*|//.*)?$')


class Layout:
    """The folders of one appliance under a root; `name` is "flywall", "seed" or "none".

    "none" means neither layout has a config under the root: its folders are Flywall's
    defaults (for `status` to show), and writing commands refuse to run there.
    """

    __slots__ = ("config_dir", "name", "root", "run_dir", "state_dir")

    def __init__(self, name: str, root: str, config_dir: str, state_dir: str, run_dir: str) -> None:
        self.name = name
        self.root = root
        self.config_dir = config_dir
        self.state_dir = state_dir
        self.run_dir = run_dir

    @property
    def config(self) -> str:
        """Flywall's config file, `flywall.hcl` in the config folder."""
        return os.path.join(self.config_dir, CONFIG_NAME)  # noqa: PTH118

    @property
    def settings(self) -> str:
        """Our settings file, `migration.hcl` beside `flywall.hcl`."""
        return os.path.join(self.config_dir, SETTINGS_NAME)  # noqa: PTH118

    @property
    def found(self) -> bool:
        """True if a Flywall config was found under the root."""
        return self.name != NONE


def candidates(root: str, environ: dict[str, str] | None = None) -> list[str]:
    """Every config file detection looks at, in order (the status memo stamps them all)."""
    env = dict(os.environ) if environ is None else environ
    dirs = (_flywall_config_dir(os.path.abspath(root), env), _under(root, "etc/flywall"))  # noqa: PTH100
    return [os.path.join(d, CONFIG_NAME) for d in dirs]  # noqa: PTH118


def detect(root: str, environ: dict[str, str] | None = None) -> Layout:
    """Find the appliance under `root`: Flywall's layout first, then the seed's.

    Flywall's folders follow FLYWALL.md §1, first override wins: the config folder from
    `FLYWALL_CONFIG_DIR`, else `FLYWALL_PREFIX/config`, else `/opt/flywall/etc`; the state
    folder from `FLYWALL_STATE_DIR`, else the config's top-level `state_dir`, else
    `FLYWALL_PREFIX/state`, else `/opt/flywall/var/lib`; the run folder from
    `FLYWALL_RUN_DIR`, else `FLYWALL_PREFIX/run`, else `/opt/flywall/var/run`. Every
    absolute path is placed under `root`, as settings paths are.
    """
    env = dict(os.environ) if environ is None else environ
    root = os.path.abspath(root)  # noqa: PTH100
    prefix = env.get("FLYWALL_PREFIX")
    config_dir = _flywall_config_dir(root, env)
    seed_config = _under(root, "etc/flywall")
    if os.path.isfile(os.path.join(config_dir, CONFIG_NAME)):  # noqa: PTH113, PTH118
        name = FLYWALL
    elif os.path.isfile(os.path.join(seed_config, CONFIG_NAME)):  # noqa: PTH113, PTH118
        return Layout(
            SEED, root, seed_config, _under(root, "var/lib/flywall"), _under(root, "var/run")
        )
    else:
        name = NONE
    state_dir = (
        _env_dir(root, env, "FLYWALL_STATE_DIR")
        or _config_state_dir(root, os.path.join(config_dir, CONFIG_NAME))  # noqa: PTH118
        or (_under(root, os.path.join(prefix, "state")) if prefix else None)  # noqa: PTH118
        or _under(root, f"{_OPT}/var/lib")
    )
    run_dir = (
        _env_dir(root, env, "FLYWALL_RUN_DIR")
        or (_under(root, os.path.join(prefix, "run")) if prefix else None)  # noqa: PTH118
        or _under(root, f"{_OPT}/var/run")
    )
    return Layout(name, root, config_dir, state_dir, run_dir)


def _flywall_config_dir(root: str, env: dict[str, str]) -> str:
    prefix = env.get("FLYWALL_PREFIX")
    return (
        _env_dir(root, env, "FLYWALL_CONFIG_DIR")
        or (_under(root, os.path.join(prefix, "config")) if prefix else None)  # noqa: PTH118
        or _under(root, f"{_OPT}/etc")
    )


def _env_dir(root: str, env: dict[str, str], name: str) -> str | None:
    value = env.get(name)
    return _under(root, value) if value else None


def _under(root: str, path: str) -> str:
    """Place `path` under `root`: an absolute path loses its leading slash, as in settings."""
    return os.path.normpath(os.path.join(os.path.abspath(root), path.lstrip("/")))  # noqa: PTH100, PTH118


def _config_state_dir(root: str, config: str) -> str | None:
    """The config's top-level `state_dir = "..."`, if it sets one (placed under `root`)."""
    try:
        with open(config, encoding="utf-8") as f:  # noqa: PTH123
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    if "state_dir" not in text:
        return None
    for _, line in top_level_lines(text):
        match = _STATE_DIR.match(line.strip())
        if match:
            return _under(root, match[1])
    return None


def top_level_lines(text: str) -> list[tuple[int, str]]:
    """The lines of an HCL text that start at brace depth 0, with their 1-based numbers.

    A light scan, not a parse: it skips strings, `#`, `//` and `/* */` comments and
    heredocs, which is all it takes to tell a top-level `migration {` or `state_dir = ...`
    from the same words inside a block or a string.
    """
    out: list[tuple[int, str]] = []
    depth = 0
    in_comment = False
    heredoc: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        if depth == 0 and not in_comment:
            out.append((number, line))
        depth, in_comment, heredoc = scan_line(line, depth, in_comment)
    return out


_HEREDOC = re.compile(r"<<-?([A-Za-z_][A-Za-z0-9_]*)\s*$")


def scan_line(line: str, depth: int, in_comment: bool) -> tuple[int, bool, str | None]:  # noqa: C901
    """Advance the brace depth over one line; return (depth, inside /* */, heredoc end)."""
    i, n = 0, len(line)
    while i < n:
        if in_comment:
            end = line.find("*/", i)
            if end < 0:
                return depth, True, None
            in_comment, i = False, end + 2
            continue
        char = line[i]
        if char == "#" or line.startswith("//", i):
            break
        if line.startswith("/*", i):
            in_comment, i = True, i + 2
            continue
        if char == '"':
            i += 1
            while i < n and line[i] != '"':
                i += 2 if line[i] == "\\" else 1
        elif char in "{[(":
            depth += 1
        elif char in "}])":
            depth = max(depth - 1, 0)
        elif char == "<" and _HEREDOC.match(line, i):
            return depth, False, _HEREDOC.match(line, i)[1]  # type: ignore[index]
        i += 1
    return depth, in_comment, None


_MIGRATION_BLOCK = re.compile(r"\s*migration\s*\{")


def migration_block_line(text: str) -> int | None:
    """The line of a top-level `migration { }` block in flywall.hcl, if it has one.

    Flywall's strict decoder refuses an unknown block (FLYWALL.md §2): a config holding
    ours is one the daemon would replace with its nearly empty built-in one.
    """
    if "migration" not in text:
        return None
    for number, line in top_level_lines(text):
        if _MIGRATION_BLOCK.match(line):
            return number
    return None
