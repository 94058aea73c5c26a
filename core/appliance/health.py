"""Waiting for Flywall's daemon to answer, before its upgrade is confirmed.

The daemon's API listens on :8080 (FLYWALL.md §1). Any HTTP answer below 500 means the
daemon loaded a config and serves: what "healthy" needs before `confirm` keeps a run.
A refused connection, a timeout or a 5xx means not yet; the caller's deadline decides.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

_SERVER_ERROR = 500


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether `url` gives an HTTP answer below 500 now."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) only, checked by the caller
            return int(response.status) < _SERVER_ERROR
    except urllib.error.HTTPError as e:  # 401/404 still prove the daemon serves
        return e.code < _SERVER_ERROR
    except (OSError, ValueError):
        return False


def wait_until_answering(url: str, deadline_s: float, interval_s: float = 1.0) -> bool:
    """Ask `url` every `interval_s` until it answers or `deadline_s` seconds have passed."""
    end = time.monotonic() + deadline_s
    while True:
        if answers(url, timeout=min(2.0, max(0.1, end - time.monotonic()))):
            return True
        if time.monotonic() + interval_s > end:
            return False
        time.sleep(interval_s)
