"""A witness that goes on refusing checkpoints has its refusals recorded once an hour with their
count, not one alert per checkpoint: each alert is an event the next checkpoint signs, which the
witness refused again, so the store grew by an alert every interval (an outside probe: 38 events
to 71 in a few seconds of checkpoint_interval 2, 24 of them refusals, with no traffic)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from pacsguard.events import Event
from pacsguard.store.store import Checkpoint
from pacsguard.witness import delivery
from pacsguard.witness.delivery import WitnessDelivery
from pacsguard.witness.errors import WitnessRefused


class Refusing:
    """A witness that refuses every checkpoint until told to take them."""

    name = "w1"

    def __init__(self) -> None:
        self.taking = False
        self.seen = 0
        self.lock = threading.Lock()

    def deliver(self, checkpoint: Checkpoint) -> None:
        with self.lock:
            self.seen += 1
        if not self.taking:
            raise WitnessRefused(f"w1 refused the checkpoint at size {checkpoint.tree_size}")

    def close(self) -> None:
        pass


def _checkpoint(size: int) -> Checkpoint:
    return Checkpoint(size, bytes(32), 0, "k", bytes(64))


def _wait(check: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + 10
    while not check():
        assert time.monotonic() < end, what
        time.sleep(0.01)


def test_a_run_of_refusals_is_one_record_until_an_hour_passes_or_one_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    witness = Refusing()
    recorded: list[Event] = []
    sending = WitnessDelivery([witness], recorded.append)
    for size in range(1, 6):
        sending.signed(_checkpoint(size))
    _wait(lambda: witness.seen == 5, "five tries")
    assert [e.details["tree_size"] for e in recorded] == [1]  # the first of the run only
    monkeypatch.setattr(delivery, "REFUSED_REPEAT", 0.0)  # an hour later
    sending.signed(_checkpoint(6))
    _wait(lambda: len(recorded) == 2, "the hourly record")
    assert "(5 checkpoints refused since the last record of it)" in recorded[1].message
    monkeypatch.setattr(delivery, "REFUSED_REPEAT", 3600.0)
    witness.taking = True
    sending.signed(_checkpoint(7))  # taken: the run ends
    _wait(lambda: witness.seen == 7, "the seventh")
    witness.taking = False
    sending.signed(_checkpoint(8))  # a new run: recorded at once
    _wait(lambda: len(recorded) == 3, "the new run's first")
    sending.close()
    assert [e.kind for e in recorded] == ["pacsguard.witness.refused"] * 3
    assert recorded[2].details["tree_size"] == 8 and "since the last record" not in recorded[2].message
