"""hcl_edits.py - what a config migration's edits cost on a large flywall.hcl.

Usage (with the project's venv python):  python bench/hcl_edits.py [BLOCKS] [EDITS]

Builds a config of BLOCKS zone blocks (200: ~19 KB), then sets one attribute in EDITS
different blocks (30), as a migration's `up` does, and prints the cpu seconds of the edits
two ways, each the median of 5 runs: as shipped (an edit inside one block re-parses that
block alone and grafts it, `hcl._reparse`) and with every edit re-parsing the whole file
(the graft switched off in this process only). No peer edits HCL, so there is no ratio to a
peer; the second figure is what the same edits cost before the graft.
"""

from __future__ import annotations

import statistics
import sys
import time

from flywall.core.formats import hcl


def config(blocks: int) -> str:
    return "".join(
        f'zone "z{i}" {{\n  mtu = 1500\n  description = "zone number {i}"\n'
        f'  match {{ interface = "eth{i}" }}\n}}\n\n'
        for i in range(blocks)
    )


def edits_cpu(text: str, blocks: int, edits: int) -> float:
    hcl._RECENT.clear()  # noqa: SLF001 - every run starts with nothing remembered
    document = hcl.Document.parse(text)
    started = time.process_time()
    for i in range(0, blocks, max(1, blocks // edits))[:edits]:
        document.block("zone", f"z{i}").set("mtu", 9000)
    return time.process_time() - started


def main() -> None:
    blocks = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    edits = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    text = config(blocks)
    grafted = statistics.median(edits_cpu(text, blocks, edits) for _ in range(5))
    hcl._innermost_block = lambda *_: None  # noqa: SLF001 - whole parses only
    whole = statistics.median(edits_cpu(text, blocks, edits) for _ in range(5))
    print(f"flywall.hcl of {len(text):,} bytes ({blocks} blocks), {edits} attribute edits:")
    print(f"  each edit re-parses its block (as shipped): {grafted:.3f} s cpu")
    print(f"  each edit re-parses the whole file:          {whole:.3f} s cpu")
    print(f"  ratio: {grafted / whole:.2f}x")


if __name__ == "__main__":
    main()
