"""Ctrl-C lands only where `Interruptible` raises it: never inside library code holding a lock
(the hang `darkbloom login` had when interrupted as its code appeared)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from darkbloom.cli.interruptible import Interruptible


@pytest.fixture(autouse=True)
def _python_sigint() -> Iterator[None]:
    """A fresh process's SIGINT handler: earlier tests in this process may leave another (a
    library's handler installed from C reads back as None)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if before is not None:
        signal.signal(signal.SIGINT, before)


def _ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)  # Python runs the handler at the next bytecode of the main thread


def test_a_ctrl_c_inside_a_lock_does_not_strand_it() -> None:
    lock = threading.Lock()
    with Interruptible() as waiting:
        lock.acquire()
        _ctrl_c()  # with Python's default handler this would raise here, the lock still held
        lock.release()
        assert waiting.cancelled
        with pytest.raises(KeyboardInterrupt):  # the next wait is cancelled at once
            waiting.run(lambda: time.sleep(30))
    assert not lock.locked()


def test_a_ctrl_c_after_the_last_wait_cancels_nothing() -> None:
    with Interruptible() as waiting:
        assert waiting.run(lambda: "token") == "token"
        _ctrl_c()  # e.g. while the spinner stops: the token is kept, nothing is raised
    assert waiting.cancelled


def test_an_ignored_sigint_stays_ignored() -> None:
    """A background job (`cmd &` from sh) ignores SIGINT: a Ctrl-C meant for the foreground job
    must not cancel it."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with Interruptible() as waiting:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            _ctrl_c()
            assert waiting.run(lambda: 7) == 7
    finally:
        signal.signal(signal.SIGINT, before)


def test_run_raises_promptly_on_ctrl_c_while_the_work_blocks() -> None:
    release = threading.Event()
    threading.Timer(0.2, _ctrl_c).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), Interruptible() as waiting:
        waiting.run(lambda: release.wait(30))
    release.set()
    assert time.monotonic() - started < 10  # long before the work's 30 s


def test_results_and_exceptions_cross_back() -> None:
    with Interruptible() as waiting:
        assert waiting.run(lambda: 42) == 42
        with pytest.raises(ValueError, match="boom"):
            waiting.run(lambda: int("boom"))


def test_the_previous_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGINT)
    with Interruptible():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


def test_off_the_main_thread_it_only_runs_the_work() -> None:
    seen: list[object] = []

    def worker() -> None:
        with Interruptible() as waiting:
            seen.append(waiting.run(lambda: "done"))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)
    assert seen == ["done"]
