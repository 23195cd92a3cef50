"""Refusals of one kind from one sender, recorded the first few at a time and then counted: a flood
of bad requests, failed TLS handshakes or silent connections from one host must not fill the sealed
store with one record each (each is an event the store keeps for ever), yet `atna sources` must
count every one. Used by the RESTful endpoint and the syslog listeners."""

from __future__ import annotations

from dataclasses import dataclass

from pacsguard.atna.ingest import Sender

#: Refusals (each problem, from each sender host) recorded one by one in each RECORD_INTERVAL
#: seconds; the others are counted into one record at its end (as too-many-connections is
#: recorded at most every 10 s).
RECORDED_EACH = 10
RECORD_INTERVAL = 60.0
#: (sender, problem) pairs and hosts tracked at once; beyond, a flood from many addresses is counted
#: under the sender "*", so that the tracking itself stays bounded.
MOST_TRACKED = 10_000


@dataclass(slots=True)
class _Repeats:
    """The refusals of one problem from one sender host in the current interval: how many were
    recorded, how many counted since, and the last one's words."""

    sender: Sender
    problem: str
    started: float
    recorded: int = 0
    counted: int = 0
    error: str = ""
    method: str = ""
    path: str = ""


class Repeats:
    """Which refusals to record one by one: the first RECORDED_EACH of each problem from each host in
    each RECORD_INTERVAL; `due` gives the intervals over, whose others are recorded as one count."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], _Repeats] = {}
        self._looked = float("-inf")  # when `due` last looked through them all

    def note(self, sender: Sender, problem: str, error: str, method: str, path: str, now: float) -> bool:
        """Count one refusal; whether to record it by itself."""
        key = (sender.host, problem)
        if key not in self._open and len(self._open) >= MOST_TRACKED:
            key, sender = ("*", problem), Sender("*", None, sender.transport)
        slot = self._open.get(key)
        if slot is None:
            slot = self._open[key] = _Repeats(sender, problem, now)
        if slot.recorded < (1 if problem == "throttled" else RECORDED_EACH):  # a 429 says the same each time
            slot.recorded += 1
            return True
        slot.counted += 1
        slot.error, slot.method, slot.path = error, method, path
        return False

    def due(self, now: float) -> list[_Repeats]:
        """The intervals over by ``now`` (all of them for infinity), forgotten; those with refusals
        counted, not recorded, returned."""
        if now - self._looked < 1.0:  # once a second at most: a flood must not make each refusal a scan
            return []
        self._looked = now
        over = [k for k, slot in self._open.items() if now - slot.started >= RECORD_INTERVAL]
        return [slot for slot in (self._open.pop(k) for k in over) if slot.counted]

    def counting(self) -> bool:
        """Whether any interval still has refusals counted, not recorded."""
        return any(slot.counted for slot in self._open.values())
