"""Ctrl-C lands only where `Interruptible` raises it: never inside library code holding a lock
(the hang `darkbloom login` had when interrupted as its code appeared)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from darkbloom.cli.interruptible import Interruptible


def _ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)  # Python runs the handler at the next bytecode of the main thread


def test_a_ctrl_c_inside_a_lock_does_not_strand_it() -> None:
    lock = threading.Lock()
    with pytest.raises(KeyboardInterrupt), Interruptible() as waiting:
        lock.acquire()
        _ctrl_c()  # with Python's default handler this would raise here, the lock still held
        lock.release()
        assert waiting.cancelled
    assert not lock.locked()


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
