"""Trees many tests start from, built once per test process and copied for each test.

`demo.build` writes a 2 MB state.db row by row (0.3 s idle, 0.8 s on a loaded machine); its
output is the same bytes every time and holds no absolute path, so a copy of one build is
the tree a fresh build would give. Tests about the demo itself still call `demo.build`.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from flywall.core.appliance import demo

_TEMPLATES: dict[str, tuple[Path, dict[str, str]]] = {}


def build_demo(directory: Path, layout: str = "flywall") -> dict[str, str]:
    """What `demo.build(directory, layout)` returns and writes, copied from a template.

    The copy keeps each file's bytes and modes (shutil.copytree); no process has the
    template's state.db open, so the plain file is the whole database.
    """
    if layout not in _TEMPLATES:
        where = Path(tempfile.mkdtemp(prefix="flywall-demo-"))
        atexit.register(shutil.rmtree, where, ignore_errors=True)
        _TEMPLATES[layout] = where / "box", demo.build(where / "box", layout)
    template, paths = _TEMPLATES[layout]
    if directory.exists() and any(directory.iterdir()):
        return demo.build(directory, layout)  # its refusal, as the real call gives it
    shutil.copytree(template, directory, symlinks=True, dirs_exist_ok=True)
    return {k: _rebase(v, template, directory) for k, v in paths.items()}


def _rebase(value: str, template: Path, directory: Path) -> str:
    path = Path(value)
    if path == template or template in path.parents:
        return str(directory / path.relative_to(template))
    return value  # the layout's name
