"""Delivery of every signed checkpoint to the witnesses, never blocking the store's writer.

The store calls `signed()` after each checkpoint commits (store.CheckpointListener); each witness
has a courier thread with a bounded queue. A checkpoint that cannot be delivered stays queued and
is retried with exponential backoff; when the queue is full the oldest is dropped (a later
checkpoint, proven consistent, covers the events of the ones dropped). The first failure of an
outage is recorded as `pacsguard.witness.unreachable`, the first success after it as
`pacsguard.witness.reachable`; a witness that refuses a checkpoint (it does not verify, or is not
consistent with what it holds: a fork or a rollback as the witness sees it) as
`pacsguard.witness.refused`, and that checkpoint is not sent again. A witness that goes on refusing
has its refusals recorded once an hour (`REFUSED_REPEAT`), with their count: each record is an
event, which the next checkpoint signs, which the witness refuses again, so a record per refusal
grew the store by an alert each checkpoint interval for as long as the witness refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from pacsguard.events.model import Event, Outcome, Severity
from pacsguard.store.store import Checkpoint
from pacsguard.witness.errors import WitnessError, WitnessRefused

log = logging.getLogger("pacsguard.witness")

QUEUE_SIZE = 1000  # checkpoints per witness: at the default interval, 16 hours of outage
REFUSED_REPEAT = 3600.0  # seconds between records of one witness's run of refusals


class Destination(Protocol):
    """One witness: ``name`` says which in events and logs; ``deliver`` raises WitnessError (try
    again later) or WitnessRefused (the witness will never take this checkpoint)."""

    name: str

    def deliver(self, checkpoint: Checkpoint) -> None: ...

    def close(self) -> None: ...


class WitnessDelivery:
    """The store's checkpoint listener: one courier per witness. ``publish`` records the witness
    events (None: logged only); it is not used once ``close()`` has begun, as the bus may be gone."""

    def __init__(self, destinations: Sequence[Destination], publish: Callable[[Event], None] | None = None, *,
                 queue_size: int = QUEUE_SIZE, backoff: tuple[float, float] = (0.5, 60.0),
                 close_timeout: float = 10.0) -> None:
        self.publish = publish
        self.close_timeout = close_timeout
        self.couriers = [_Courier(d, self, queue_size, backoff) for d in destinations]

    def signed(self, checkpoint: Checkpoint) -> None:
        for courier in self.couriers:
            courier.put(checkpoint)

    def close(self) -> None:
        """Deliver what is queued (the final checkpoint among it) within ``close_timeout`` seconds."""
        self.publish = None
        deadline = time.monotonic() + self.close_timeout
        for courier in self.couriers:
            courier.finish(deadline)

    def record(self, event: Event) -> None:
        publish = self.publish
        if publish is None:
            return
        try:
            publish(event)
        except Exception as exc:  # noqa: BLE001 - a closed bus must not stop delivery
            log.warning("could not record %s: %s", event.kind, exc)


class _Courier:
    def __init__(self, destination: Destination, owner: WitnessDelivery, size: int,
                 backoff: tuple[float, float]) -> None:
        self.destination = destination
        self.owner = owner
        self.queue: deque[Checkpoint] = deque(maxlen=size)
        self.dropped = 0
        self.delivered = 0
        self.backoff = backoff
        self.cond = threading.Condition()
        self.deadline: float | None = None
        self.refused_at: float | None = None  # when a refusal was last recorded; None: accepted since
        self.refusals = 0  # refusals since the last one recorded
        self.thread = threading.Thread(target=self.run, name=f"witness {destination.name}", daemon=True)
        self.thread.start()

    def put(self, checkpoint: Checkpoint) -> None:
        with self.cond:
            if len(self.queue) == self.queue.maxlen:
                self.dropped += 1
            self.queue.append(checkpoint)
            self.cond.notify()

    def finish(self, deadline: float) -> None:
        with self.cond:
            self.deadline = deadline
            self.cond.notify()
        self.thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
        with self.cond:
            left = len(self.queue)
        if left:
            log.warning("witness %s: %d checkpoint(s) not delivered at close", self.destination.name, left)
        self.destination.close()

    def _expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def run(self) -> None:
        wait, outage = self.backoff[0], 0
        while True:
            with self.cond:
                while not self.queue and self.deadline is None:
                    self.cond.wait()
                if not self.queue or self._expired():
                    return
                checkpoint = self.queue[0]
            try:
                self.destination.deliver(checkpoint)
            except WitnessRefused as exc:
                self._done(checkpoint)
                self._refused(checkpoint, str(exc))
                continue
            except WitnessError as exc:
                outage += 1
                if outage == 1:
                    self.owner.record(_event("pacsguard.witness.unreachable", self.destination.name, checkpoint,
                                             str(exc)))
                    log.warning("%s; retrying", exc)
                self._pause(wait)
                wait = min(wait * 2, self.backoff[1])
                continue
            except Exception:  # noqa: BLE001 - a bug must not end delivery for good
                log.exception("witness %s: delivery failed", self.destination.name)
                outage += 1
                self._pause(self.backoff[1])
                continue
            self._done(checkpoint)
            self.delivered += 1
            self.refused_at, self.refusals = None, 0
            if outage:
                self.owner.record(_event("pacsguard.witness.reachable", self.destination.name, checkpoint,
                                         f"after {outage} failed attempt(s)"))
            wait, outage = self.backoff[0], 0

    def _refused(self, checkpoint: Checkpoint, error: str) -> None:
        """Record a refusal: the first of a run at once, then at most one an hour with the count."""
        log.error("%s", error)
        self.refusals += 1
        now = time.monotonic()
        if self.refused_at is not None and now - self.refused_at < REFUSED_REPEAT:
            return
        if self.refusals > 1:
            error = f"{error} ({self.refusals} checkpoints refused since the last record of it)"
        self.owner.record(_event("pacsguard.witness.refused", self.destination.name, checkpoint, error))
        self.refused_at, self.refusals = now, 0

    def _pause(self, seconds: float) -> None:
        """Back off; close() cuts a long backoff short so the final checkpoint is tried, and then
        tries again every half second until its deadline."""
        with self.cond:
            if self.deadline is None:
                self.cond.wait_for(lambda: self.deadline is not None, timeout=seconds)
            else:
                self.cond.wait_for(self._expired, timeout=min(seconds, 0.5))

    def _done(self, checkpoint: Checkpoint) -> None:
        with self.cond:
            if self.queue and self.queue[0] is checkpoint:
                self.queue.popleft()


_WHAT = {
    "pacsguard.witness.unreachable": (Severity.WARNING, Outcome.MINOR_FAILURE, "witness {w} unreachable: {e}"),
    "pacsguard.witness.reachable": (Severity.NOTICE, Outcome.SUCCESS, "witness {w} reachable again ({e})"),
    "pacsguard.witness.refused": (Severity.ALERT, Outcome.MAJOR_FAILURE, "witness {w} refused the checkpoint at "
                                  "size {n}: {e}"),
}


def _event(kind: str, witness: str, checkpoint: Checkpoint, error: str) -> Event:
    severity, outcome, text = _WHAT[kind]
    return Event(kind=kind, component="witness", severity=severity, outcome=outcome,
                 message=text.format(w=witness, e=error, n=checkpoint.tree_size),
                 details={"witness": witness, "tree_size": checkpoint.tree_size, "error": error})
