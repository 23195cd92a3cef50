"""Round 7: a bearer token an HTTP header cannot carry is reported as what it is.

A token with a non-ASCII character (or a line break, from an environment variable) made http.client
raise UnicodeEncodeError / ValueError inside delivery: no `pacsguard.witness.unreachable` was
recorded, only a traceback in the log after every backoff, for ever."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from pacsguard.events import Event
from pacsguard.store.store import Checkpoint
from pacsguard.witness.delivery import WitnessDelivery
from pacsguard.witness.http import WitnessClient
from pacsguard.witness.push import HttpWitness


@pytest.mark.parametrize("token", ["токен-сайта", "abc\r\nX-Injected: 1"])
def test_an_unsendable_token_is_recorded_as_the_reason_the_witness_is_unreachable(
        token: str, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # nothing needs to listen: the token is refused before any connection
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    published: list[Event] = []
    push = HttpWitness(WitnessClient(url, token), lambda start, end: [])
    delivery = WitnessDelivery([push], published.append, backoff=(0.05, 0.1), close_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="pacsguard.witness"):
        delivery.signed(Checkpoint(0, bytes(32), 1_780_000_000_000_000, "0123456789abcdef", bytes(64)))
        end = time.monotonic() + 10
        while not published and time.monotonic() < end:
            time.sleep(0.02)
        delivery.close()
    assert [e.kind for e in published] == ["pacsguard.witness.unreachable"]
    assert "the token holds characters a bearer token cannot" in published[0].details["error"]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
