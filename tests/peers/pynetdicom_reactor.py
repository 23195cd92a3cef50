"""pynetdicom 3.0's requestor can lose a response to its own reactor thread (pydicom/pynetdicom
issue 875: "Received unexpected N-CREATE service message", then a DIMSE timeout and an abort).
A ``send_*()`` pauses the reactor by clearing a checkpoint and waiting for a flag the reactor
sets just before it waits there; the flag is also still set for an instant after the wait has
returned, so under load the send may go ahead while the reactor goes on to take the next message.

``quiet_reactor`` before a ``send_*()`` clears the checkpoint, lets the reactor finish the pass
it may be in, and waits for it to stop at the checkpoint: the send then finds it truly paused.
Seen once in CI under two test workers; a fault of the test peer, not of the gateway."""

from __future__ import annotations

import time
from typing import Any

_PASS = 0.1  # seconds: far longer than one reactor pass (a 1 ms sleep and a queue check)


def quiet_reactor(assoc: Any) -> None:
    assoc._reactor_checkpoint.clear()
    time.sleep(_PASS)
    end = time.monotonic() + 5
    while not assoc._is_paused and time.monotonic() < end:
        time.sleep(0.001)
