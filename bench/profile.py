"""profile.py - where our time goes: import time and cProfile of the benchmarked commands.

Usage (with the project's venv python):  profile.py WORKDIR M
Builds a fresh tree of M trivial migrations (gen.py) under WORKDIR/profile/ and writes there:
  importtime-help.txt, importtime-status.txt   python -X importtime, biggest imports first
  <command>.prof + <command>.txt                cProfile of migrate (M pending), status
                                                (M applied), rollback --steps 1, migrate (1)
  data.txt, state.txt, full.txt, noop-events.txt  the (e), state, `full` strategy and
                                                long-journal trees of a previous bench
                                                run, when they are there
  summary.md                                    the top entries of each, for a report
Profiled runs are slower than the timed ones (cProfile's overhead); use the shares.
"""

from __future__ import annotations

import io
import pstats
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen

RUNNER = """import sys
from flywall.cli.main import main
sys.argv = ["flywall", *sys.argv[1:]]
main()
"""


def importtime(py: str, args: list[str], out: Path) -> list[str]:
    code = "import sys; from flywall.cli.main import main; sys.argv = ['flywall', *sys.argv[1:]]; main()"
    p = subprocess.run(
        [py, "-X", "importtime", "-c", code, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    rows = []
    for line in p.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m[2]), int(m[1]), len(m[3]) // 2, m[4]))
    total = sum(c for c, _, depth, _ in rows if depth == 0)
    rows.sort(reverse=True)
    lines = [
        f"total of top-level imports: {total / 1000:.1f} ms",
        "cumulative_ms self_ms depth module",
    ]
    lines += [f"{c / 1000:8.1f} {s / 1000:8.1f} {d:3d} {name}" for c, s, d, name in rows[:60]]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines[:22]


def cprofile(py: str, runner: Path, args: list[str], out: Path, cwd: Path) -> list[str]:
    prof = out.with_suffix(".prof")
    subprocess.run(
        [py, "-m", "cProfile", "-o", str(prof), str(runner), *args],
        cwd=cwd,
        capture_output=True,
        check=False,
    )
    buf = io.StringIO()
    stats = pstats.Stats(str(prof), stream=buf)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(25)
    out.write_text(buf.getvalue(), encoding="utf-8")
    # a compact view: our own functions (and the heaviest C calls) by cumulative time
    total = stats.total_tt
    rows = []
    for (file, line, func), (_, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        ours = "/work/" in file and "site-packages" not in file
        if ours or (file == "~" and tt > 0.02 * total):
            short = file.split("/main/")[-1] if ours else "builtin"
            rows.append((ct, tt, nc, f"{short}:{line}({func})"))
    rows.sort(reverse=True)
    lines = [f"total {total:.3f} s (under cProfile)", "cum_s  self_s  calls  function"]
    lines += [f"{ct:6.3f} {tt:6.3f} {nc:7d}  {name}" for ct, tt, nc, name in rows[:25]]
    return lines


def main() -> int:
    work, m = Path(sys.argv[1]), int(sys.argv[2])
    py = sys.executable
    flywall = str(Path(py).parent / "flywall")
    out = work / "profile"
    shutil.rmtree(out, ignore_errors=True)
    tree = out / "tree"
    gen.gen_flywall(tree, gen.trivial(m))
    runner = out / "runner.py"
    runner.write_text(RUNNER, encoding="utf-8")
    summary = [f"# Profile of flywall migration, {m} trivial migrations\n"]

    def section(title: str, lines: list[str]) -> None:
        summary.extend([f"## {title}\n", "```", *lines, "```", ""])

    root = ["migration", "--root", str(tree)]
    section("import time: `migration --help`", importtime(py, ["migration", "--help"], out / "importtime-help.txt"))  # fmt: skip
    section(f"cProfile: migrate, {m} pending", cprofile(py, runner, [*root, "migrate"], out / "migrate.txt", out))  # fmt: skip
    section("import time: `status`", importtime(py, [*root, "status"], out / "importtime-status.txt"))  # fmt: skip
    section(f"cProfile: status, {m} applied", cprofile(py, runner, [*root, "status"], out / "status.txt", out))  # fmt: skip
    section("cProfile: rollback --steps 1", cprofile(py, runner, [*root, "rollback", "--steps", "1"], out / "rollback.txt", out))  # fmt: skip
    section("cProfile: migrate, 1 pending", cprofile(py, runner, [*root, "migrate"], out / "migrate1.txt", out))  # fmt: skip
    section("cProfile: migrate, nothing pending", cprofile(py, runner, [*root, "migrate"], out / "noop.txt", out))  # fmt: skip
    # the bench's bigger trees, when a bench run left them (copied, so they stay as they are)
    for name, src, title in (
        ("data", work / "data/flywall", "migrate, the (e) 1M-row ADD COLUMN + UPDATE"),
        ("state", work / "state/batched", "migrate, the batched 1M-row state migration"),
    ):
        if (src / "base_var").is_dir():
            dst = out / name
            shutil.copytree(src / "etc", dst / "etc", symlinks=True)
            shutil.copytree(src / "base_var", dst / "var", symlinks=True)
            args = ["migration", "--root", str(dst), "migrate"]
            section(f"cProfile: {title}", cprofile(py, runner, args, out / f"{name}.txt", out))
            shutil.rmtree(dst)
    full = work / f"flywall-full-{m}"
    if (full / "etc").is_dir():  # strategy = "full": copy its config and migrations, no state
        dst = out / "full"
        shutil.copytree(full / "etc", dst / "etc", symlinks=True)
        args = ["migration", "--root", str(dst), "migrate"]
        section(f"cProfile: migrate, {m} pending, strategy = full", cprofile(py, runner, args, out / "full.txt", out))  # fmt: skip
        shutil.rmtree(dst)
    events = work / "flywall-events"
    if (events / "var").is_dir():
        args = ["migration", "--root", str(events), "migrate"]
        section("cProfile: migrate, nothing pending, the long journal", cprofile(py, runner, args, out / "noop-events.txt", out))  # fmt: skip
    check = subprocess.run([flywall, *root, "status"], capture_output=True, text=True, check=False)
    summary.append(f"status afterwards (exit {check.returncode}):\n\n```\n{check.stdout}```\n")
    (out / "summary.md").write_text("\n".join(summary), encoding="utf-8")
    print(f"wrote {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
