"""How much the default suite samples, and how to ask for everything.

The default run (`make test`) samples: crash points spread evenly over each scenario
(always its first and last), a bounded soak, and Hypothesis examples well above what
finds a regression. `FLYWALL_TORTURE=long` runs everything: every crash point, every
power-cut point, the long soak, and each property's full example count.
"""

from __future__ import annotations

import os

LONG = os.environ.get("FLYWALL_TORTURE") == "long"
"""True under FLYWALL_TORTURE=long: run every point and the full example counts."""


def examples(default: int, long: int) -> int:
    """Hypothesis `max_examples`: `default` in the default run, `long` under FLYWALL_TORTURE=long.

    `long` is never below what the property ran before sampling, so the long run proves at
    least what the suite used to prove in every run.
    """
    return long if LONG else default
