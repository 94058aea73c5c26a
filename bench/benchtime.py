"""benchtime.py - whole-process timer (stdlib only); from ../shared/peers/benchtime.py.

Measures a command from spawn to reap (start-up included): wall-clock time, user+sys CPU
and peak RSS as the kernel reports them for the finished child (os.wait4 ru_maxrss: the
largest single process among the child and the descendants it waited for, so for
`sh -c 'cp ... && exec tool'` it is max(sh, cp, tool)).

Usage:
    benchtime.py [-n 5] [--warmup 1] [--label L] [--out results.jsonl]
                 [--slow 30 --slow-runs 3] [--log FILE] [--env K=V ...] -- CMD [ARG ...]

With `--alt LABEL=SHELL` (repeatable), each SHELL command (run through `sh -c`) is timed
too, interleaved run by run with CMD, the order rotated each round: two I/O-bound commands
on a shared VM then meet the same disk weather, and each gets its own line and record.

Runs CMD `warmup` times (not counted), then `n` times; prints the median, min and max wall
seconds, the median CPU seconds and the peak RSS (MiB, max over runs), and appends one JSON
object to --out. `others` is the CPU that every other process on the machine used during a
run, in cores (from /proc/stat, minus the command's own): on a shared box it says which
numbers were taken under someone else's load. --quiet-wait S first waits (up to S seconds)
until other processes use under 0.3 cores. The command's output goes to --log. If the first warm-up takes longer
than --slow seconds, only --slow-runs runs are counted (the JSON's `runs` says how many);
if it takes less than --fast seconds, --fast-runs are (a 30 ms command's median of 5 moves
with a single scheduler hiccup; 15 such runs cost half a second).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine since boot (all cores, /proc/stat)."""
    with Path("/proc/stat").open(encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICK


def wait_quiet(limit_s: float, max_busy: float = 0.3) -> float:
    """Wait (up to limit_s) until other processes use < max_busy cores; return the last reading."""
    deadline = time.monotonic() + limit_s
    while True:
        b0, t0 = busy_seconds(), time.monotonic()
        time.sleep(0.5)
        used = (busy_seconds() - b0) / (time.monotonic() - t0)
        if used < max_busy or time.monotonic() > deadline:
            return used
        time.sleep(1.0)


def run_once(cmd: list[str], log, env: dict[str, str]) -> dict:
    b0 = busy_seconds()
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    t1 = time.monotonic()
    b1 = busy_seconds()
    p.returncode = os.waitstatus_to_exitcode(status)
    cpu = ru.ru_utime + ru.ru_stime
    return {
        "wall": t1 - t0,
        "cpu": cpu,
        "rss_mib": ru.ru_maxrss / 1024.0,  # Linux: KiB
        "rc": p.returncode,
        # CPU used meanwhile by every other process, in cores (0 on a quiet machine)
        "others": max(0.0, (b1 - b0) - cpu) / max(t1 - t0, 1e-3),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=None)
    ap.add_argument("--log", default=os.devnull)
    ap.add_argument("--slow", type=float, default=1e9)
    ap.add_argument("--slow-runs", type=int, default=3)
    ap.add_argument("--fast", type=float, default=0.0)
    ap.add_argument("--fast-runs", type=int, default=5)
    ap.add_argument("--env", action="append", default=[], help="K=V for the command")
    ap.add_argument(
        "--quiet-wait", type=float, default=0.0, help="wait up to S s for a quiet machine"
    )
    ap.add_argument(
        "--alt",
        action="append",
        default=[],
        metavar="LABEL=SHELL",
        help="another command (sh -c), interleaved with CMD run by run",
    )
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        ap.error("no command")
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in a.env)
    commands = [(a.label, cmd)] + [
        (label, ["sh", "-c", shell]) for label, shell in (x.split("=", 1) for x in a.alt)
    ]
    runs_wanted = a.n
    if a.quiet_wait > 0:
        wait_quiet(a.quiet_wait)
    results: dict[str, list[dict]] = {label: [] for label, _ in commands}
    with Path(a.log).open("ab") as log:
        for i in range(a.warmup):
            for label, c in commands:
                w = run_once(c, log, env)
                if i == 0 and label == a.label and w["wall"] > a.slow:
                    runs_wanted = min(a.n, a.slow_runs)
                if i == 0 and label == a.label and w["wall"] < a.fast:
                    runs_wanted = max(a.n, a.fast_runs)
        for i in range(runs_wanted):
            for label, c in commands[i % len(commands) :] + commands[: i % len(commands)]:
                results[label].append(run_once(c, log, env))
    failed = False
    for label, c in commands:
        failed |= report(label, c, results[label], a.out)
    return 1 if failed else 0


def report(label: str, cmd: list[str], res: list[dict], out_path: str | None) -> bool:
    """Print one line and append one JSON record for `label`; True if a run failed."""
    walls = [r["wall"] for r in res]
    out = {
        "label": label,
        "cmd": cmd,
        "runs": len(res),
        "median": statistics.median(walls),
        "min": min(walls),
        "max": max(walls),
        "cpu_median": statistics.median(r["cpu"] for r in res),
        "peak_rss_mib": max(r["rss_mib"] for r in res),
        "rcs": sorted({r["rc"] for r in res}),
        "others_median": statistics.median(r["others"] for r in res),
        "others_max": max(r["others"] for r in res),
        # a child's peak RSS cannot read below the timer's own RSS at spawn (inherited by exec)
        "rss_floor_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    name = label or " ".join(cmd)[:40]
    print(
        f"{name:<40} median {out['median']:8.3f}s  [{out['min']:.3f}-{out['max']:.3f}]  "
        f"cpu {out['cpu_median']:7.3f}s  peak {out['peak_rss_mib']:6.1f} MiB  "
        f"n={out['runs']} rc={out['rcs']} others {out['others_median']:.2f}",
        flush=True,
    )
    if out_path:
        with Path(out_path).open("a", encoding="utf-8") as f:
            f.write(json.dumps(out) + "\n")
    return out["rcs"] != [0]


if __name__ == "__main__":
    sys.exit(main())
