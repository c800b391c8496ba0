"""The stages of a stop, driven by signals: what each one does and says."""

from __future__ import annotations

import os
import signal
from typing import NoReturn

import pytest
import trio

from kumo.cli.shutdown import FORCED_EXIT_STATUS, Shutdown


class Exited(Exception):
    pass


class Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.cuts: list[str] = []
        self.status: int | None = None

    def exit(self, status: int) -> NoReturn:
        self.status = status
        raise Exited

    def shutdown(self) -> Shutdown:
        return Shutdown(report=self.lines.append, exit=self.exit)


def test_first_signal_requests_second_hurries_third_exits() -> None:
    recorder = Recorder()
    shutdown = recorder.shutdown()
    shutdown.when_hurried(lambda: recorder.cuts.append("serving"))

    shutdown.on_signal(signal.SIGTERM)
    assert shutdown.requested.is_set()
    assert not shutdown.hurried
    assert recorder.cuts == []
    assert recorder.lines == [
        "kumo: SIGTERM: stopping gracefully (a second signal stops waiting, a third exits at once)"
    ]

    shutdown.on_signal(signal.SIGINT)  # either signal counts
    assert shutdown.hurried
    assert recorder.cuts == ["serving"]
    assert recorder.lines[-1].startswith("kumo: SIGINT again: not waiting any longer")
    shutdown.when_hurried(lambda: recorder.cuts.append("engine"))  # late: cut at once
    assert recorder.cuts == ["serving", "engine"]

    with pytest.raises(Exited):
        shutdown.on_signal(signal.SIGTERM)
    assert recorder.status == FORCED_EXIT_STATUS == 3
    assert recorder.lines[-1].startswith("kumo: SIGTERM a third time: exiting now with status 3")
    assert len(recorder.lines) == 3
    assert recorder.cuts == ["serving", "engine"]  # each cut once


def test_a_stop_requested_without_a_signal() -> None:
    stop = trio.Event()
    shutdown = Shutdown(requested=stop, report=Recorder().lines.append)
    stop.set()
    assert shutdown.requested.is_set()
    assert not shutdown.hurried


async def test_signals_reach_the_watcher() -> None:
    recorder = Recorder()
    shutdown = recorder.shutdown()
    hurried = trio.Event()
    shutdown.when_hurried(hurried.set)
    async with trio.open_nursery() as nursery:
        await nursery.start(shutdown.watch_signals)
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt while it watches
        with trio.fail_after(5):
            await shutdown.requested.wait()
        os.kill(os.getpid(), signal.SIGTERM)  # and no death either
        with trio.fail_after(5):
            await hurried.wait()
        nursery.cancel_scope.cancel()
    assert [line.split(":")[1].strip() for line in recorder.lines] == ["SIGINT", "SIGTERM again"]
