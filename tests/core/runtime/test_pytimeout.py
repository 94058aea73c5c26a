"""core/runtime/pytimeout: where the alarm and SIGINT/SIGTERM may stop a run, in one process."""

from __future__ import annotations

import os
import signal
import time

import pytest

from flywall.core.runtime import pytimeout


def test_a_signal_in_the_engines_code_waits_for_the_next_safe_point():
    with pytimeout.ending_runs():
        os.kill(os.getpid(), signal.SIGTERM)  # not in vendor code: held
        time.sleep(0.05)
        with pytest.raises(pytimeout.Interrupted) as caught:
            pytimeout.checkpoint()
    assert caught.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back


def test_a_signal_in_vendor_code_stops_it_at_once_and_a_second_is_ignored():
    def vendor_body() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)

    t0 = time.monotonic()
    with pytimeout.ending_runs():
        with pytest.raises(pytimeout.Interrupted):
            pytimeout.vendor(vendor_body)()
        os.kill(os.getpid(), signal.SIGINT)  # while the run ends: ignored
        time.sleep(0.05)
        pytimeout.checkpoint()
    assert time.monotonic() - t0 < 3


def test_the_alarm_waits_out_the_engines_commit_inside_vendor_code():
    seen: list[str] = []

    def vendor_body() -> None:
        with pytimeout.engine_code():
            time.sleep(0.5)  # past the deadline: the commit is not cut
            seen.append("committed")
        seen.append("never: raised on the way back into vendor code")

    with pytimeout.limit(0.1), pytest.raises(pytimeout.PythonTimeout):
        pytimeout.vendor(vendor_body)()
    assert seen == ["committed"]
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_no_alarm_outside_the_main_thread():
    import threading

    armed: list[bool] = []

    def worker() -> None:
        with pytimeout.limit(0.1) as on:
            armed.append(on)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert armed == [False]
