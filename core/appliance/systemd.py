"""The systemd units shipped in the package, and placing them under a root.

Two units tie migrations to Flywall's boot (README, "Boot sequence"):
`flywall-migration-boot.service` runs `recover` before `flywall.service` and is required by
it, so a failure holds Flywall back; `flywall-migration-confirm.service` runs after it and
confirms a `confirm_within` run once the daemon answers. The files are package data
(`systemd_units/`); `{executable}` in them becomes the absolute path of this installation's
`flywall-migration`, because systemd runs no PATH search we could rely on.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from flywall.core.runtime import fileio

UNITS = ("flywall-migration-boot.service", "flywall-migration-confirm.service")
"""The units, with the service of Flywall's that each is attached to in [Install]."""
_ENABLED_BY = {
    "flywall-migration-boot.service": "flywall.service.requires",
    "flywall-migration-confirm.service": "flywall.service.wants",
}


def unit_text(name: str, executable: str) -> str:
    """The unit `name` as shipped, with `{executable}` filled in."""
    template = resources.files("flywall.core.appliance").joinpath("systemd_units", name)
    return template.read_text(encoding="utf-8").replace("{executable}", executable)


def install(root: Path, executable: str) -> list[Path]:
    """Write the units into ROOT/etc/systemd/system and enable them as `systemctl enable` would.

    Each file is replaced atomically (a cut leaves the old unit or the new one, never half);
    enabling is the [Install] symlink in `flywall.service.requires/` or `.wants/`, made by
    renaming a fresh link over the old one. Running it twice changes nothing.

    :returns: the paths written, unit files then links.
    """
    folder = root / "etc/systemd/system"
    written: list[Path] = []
    for name in UNITS:
        path = folder / name
        fileio.replace(path, unit_text(name, executable).encode())
        written.append(path)
    for name in UNITS:
        link = folder / _ENABLED_BY[name] / name
        link.parent.mkdir(parents=True, exist_ok=True)
        temp = fileio.temp_path(link)
        temp.unlink(missing_ok=True)
        temp.symlink_to(Path("..") / name)
        temp.replace(link)
        written.append(link)
    return written
