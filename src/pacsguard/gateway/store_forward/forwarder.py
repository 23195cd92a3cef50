"""Sending: one forwarder thread per destination of a store-and-forward route, a Storage SCU
(PS3.4 B.2.1, sender.py) that sends each spooled object in the transfer syntax it was received
in, byte for byte (the file's data set is sent as stored, never decoded).

The association stays open between batches for ``idle_release`` seconds (5 by default, as
Orthanc's DicomAssociationCloseDelay): objects that arrive one at a time, as a modality sends
them, share it instead of costing an association each. A batch with a kind of object the open
association did not propose gets a new one; one the destination ended or spoke on while idle
(its own idle timeout) is replaced before anything is sent on it.

Exactly once per destination, as far as DICOM allows: before a batch of C-STOREs an attempt
marker (``ID.DEST.sending``) per object is made durable (one fsync for the batch); a
destination's Success (or warning, PS3.4 B.2.3) is written as ``ID.DEST.sent`` (synced) before
the next object, and an object so marked is never
sent to that destination again, also after a restart. An object with an attempt marker and no
sent marker (a crash, or an association lost between the C-STORE and its response) may have
arrived: before it is sent again the destination is asked with a C-FIND (verify.py, PS3.4 C.4.1)
and an object it holds is marked sent instead. A destination that cannot be asked gets the object
again (at-least-once for that one object; ``verify_resend: never`` chooses that without asking).
Failures wait with exponential backoff (``retry``), interrupted by `pacsguard gateway spool retry`
(a token in the spool each forwarder compares with the last it saw: one request reaches all).
Any error of a round (the spool read-only for a moment, a bug) is recorded with the destination's
name and the batch retried after the backoff: a forwarder outlives it. A forwarder thread that
ends anyway ends the forwarding process (``died``), which the gateway starts again: a destination
is never left unserved while the process looks alive.
The object in flight when an association ends goes to the back of the queue and the forwarder
waits out the backoff, as after any failure, so one object a destination aborts on is retried
without holding back the others, and without a tight loop when it is the only one (objects may
then arrive out of the order received; DICOM asks for none). A spooled file without a data set
is never sent (sender.Undeliverable): recorded, left spooled for an administrator."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from pacsguard.config.schema import Destination, Route
from pacsguard.dicom.dimse import status_category
from pacsguard.events import Event, Party
from pacsguard.gateway.store_forward import records, verify
from pacsguard.gateway.store_forward.sender import Refused, StoreAssociation, Undeliverable, status_text
from pacsguard.gateway.store_forward.spool import Spool, SpooledMeta

log = logging.getLogger("pacsguard.gateway")

MAX_CONTEXTS = 128  # presentation contexts per A-ASSOCIATE-RQ (PS3.8 9.3.2.2: odd IDs 1-255)
POLL = 0.5  # seconds between looks at the retry request while waiting
# Stands for "the destination accepted no presentation context for this object" (PS3.8 9.3.3.2),
# which has no C-STORE status: 0x0122, SOP class not supported (PS3.7 C.4.2), is the nearest.
STATUS_NO_CONTEXT = 0x0122


class Round(NamedTuple):
    """How one batch ended: the ids to send again first, why, whether that was recorded already (a
    failure status per object is), and the object whose association ended before its answer (it
    waits at the back of the queue, in doubt: PS3.4 B.2 cannot say whether it arrived)."""

    left: list[str]
    error: str = ""
    reported: bool = False
    ended_on: str | None = None

    @property
    def failed(self) -> bool:
        """Whether the forwarder waits before the next batch."""
        return bool(self.left) or self.ended_on is not None


class Forwarder:
    """Sends a route's spooled objects to one destination until it has them all."""

    def __init__(self, route: Route, destination: Destination, spool: Spool, publish: Callable[[Event], object],
                 ssl_context: ssl.SSLContext | None = None, died: Callable[[str], object] | None = None) -> None:
        self.route = route
        self.destination = destination
        self.name = destination.key
        self.spool = spool
        self.publish = publish
        self.ssl_context = ssl_context
        self.queue: deque[str] = deque()
        self.wake = threading.Condition()
        self.stopping = False
        self.delay = route.retry.initial_delay
        self.died = died  # called when the thread ends while not stopping (forwarding.py ends the process)
        self._retry_seen = spool.retry_token()  # the last retry request this forwarder answered
        self._failing = True  # whether the destination's failure note may exist (cleared at a success)
        # The association kept open between batches (destination.idle_release), what it proposed,
        # and since when it has had nothing to send. Used by the forwarder's thread only.
        self._assoc: StoreAssociation | None = None
        self._assoc_pairs: frozenset[tuple[str, str]] = frozenset()
        self._idle_since = 0.0
        self.thread = threading.Thread(target=self._run, name=f"pacsguard-forward-{route.name}-{self.name}",
                                       daemon=True)

    @property
    def party(self) -> Party:
        d = self.destination
        return Party(ae_title=d.ae_title, host=d.host, port=d.port)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def add(self, meta: SpooledMeta) -> None:
        if self.name not in meta.destinations:
            return
        with self.wake:
            self.queue.append(meta.id)
            self.wake.notify()

    # --- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        why = "it returned"
        try:
            self._forward()
        except BaseException as exc:
            why = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            try:
                self._end_association()
            except Exception:  # noqa: BLE001 - ending anyway
                log.exception("route %s: ending the association to %s failed", self.route.name, self.name)
            if not self.stopping and self.died is not None:
                self._ended(why)

    def _ended(self, why: str) -> None:
        """The thread ends while it should not: recorded, then ``died`` (the process ends and is
        started again: a forwarder's queue is only rebuilt from the spool at a start)."""
        why = f"the forwarder of {self.name} ended ({why}); the forwarding process is started again"
        try:
            self.publish(records.delayed(self.route.name, self.name, self.party, why, retry_in=self.delay))
        except BaseException:  # noqa: BLE001 - ending anyway: `died` must be called
            log.exception("route %s: recording the end of %s failed", self.route.name, self.name)
        assert self.died is not None
        self.died(why)

    def _forward(self) -> None:
        while not self.stopping:
            batch: list[str] = []
            try:
                batch = self._take()
                if not batch:
                    self._release_if_idle()
                    continue
                self._round(batch)
            except Exception as exc:  # noqa: BLE001 - the forwarder must outlive any one failure
                self._failed(batch, exc)

    def _round(self, batch: list[str]) -> None:
        """Send ``batch``; after a failure, queue what is left and wait out the backoff."""
        try:
            outcome = self._send(batch)
        except Exception as exc:  # noqa: BLE001 - recorded; the batch is retried
            log.exception("route %s: forwarding to %s failed", self.route.name, self.name)
            outcome = Round(batch, f"{type(exc).__name__}: {exc}")
        if not outcome.failed:
            self.delay = self.route.retry.initial_delay
            self._reachable()
            return
        with self.wake:
            self.queue.extendleft(reversed(outcome.left))
            if outcome.ended_on is not None:
                # Behind every other queued object: a destination that aborts on one object (a
                # data set its software cannot take) must not hold back the rest. Retried after
                # the backoff even when it is the only one: one try per round, not a tight loop.
                self.queue.append(outcome.ended_on)
        if outcome.ended_on is not None and not self.stopping:
            self._charge(outcome.ended_on, outcome.error)
        elif not outcome.reported and not self.stopping:
            self._unreachable(outcome.error)
        self._end_association()  # not held open through the wait
        self._backoff()

    def _charge(self, object_id: str, error: str) -> None:
        """The object whose association ended before its answer bears the failure (`spool list`
        counts it; the event names it, its patient and study, PS3.15 A.5). Its attempt marker stays:
        it may have arrived."""
        meta = self.spool.read_meta(object_id)
        if meta is None:  # purged meanwhile
            return
        attempts = self.spool.mark_failed(object_id, self.name, error, in_doubt=True)
        self.publish(records.delayed(self.route.name, self.name, self.party, error, retry_in=self.delay,
                                     meta=meta, attempts=attempts))

    def _unreachable(self, error: str) -> None:
        """The destination as a whole failed (not reached, association refused): noted once for
        all the objects waiting for it (`spool list` shows it for each) and recorded."""
        self._failing = True
        try:
            attempts = self.spool.mark_destination_failed(self.name, error)
        except OSError as exc:  # the note is informative; the failure is still recorded below
            log.warning("route %s: cannot note the failure of %s: %s", self.route.name, self.name, exc)
            attempts = 0
        self.publish(records.delayed(self.route.name, self.name, self.party, error, retry_in=self.delay,
                                     attempts=attempts, waiting=len(self.queue)))

    def _reachable(self) -> None:
        """The destination took a batch: its failure note goes (it is tried again next time when
        the spool cannot drop it now)."""
        if self._failing:
            try:
                self.spool.clear_destination_failure(self.name)
            except OSError as exc:
                log.warning("route %s: cannot clear the failure note of %s: %s", self.route.name, self.name, exc)
                return
            self._failing = False

    def _failed(self, batch: list[str], exc: Exception) -> None:
        """An error outside one send (the spool unwritable for a moment, a bug): recorded with the
        destination's name, the batch back in the queue, the destination tried again after its
        backoff. Nothing here may end the thread."""
        log.error("route %s: the forwarder of %s failed: %s: %s", self.route.name, self.name,
                  type(exc).__name__, exc, exc_info=exc)
        try:
            with self.wake:
                queued = set(self.queue)
                self.queue.extendleft(reversed([i for i in batch if i not in queued]))
            self.publish(records.delayed(self.route.name, self.name, self.party,
                                         f"the forwarder failed: {type(exc).__name__}: {exc}", retry_in=self.delay))
            self._end_association(abort=True)
        except Exception:  # noqa: BLE001 - the wait below is what matters
            log.exception("route %s: recording the failure of %s failed", self.route.name, self.name)
        try:
            self._backoff()
        except Exception:  # noqa: BLE001 - a plain wait, then
            with self.wake:
                self.wake.wait(self.delay)

    def _take(self) -> list[str]:
        """Up to ``retry.batch`` queued objects (waiting a little when there are none)."""
        with self.wake:
            if not self.queue:
                self.wake.wait(POLL)
            count = min(len(self.queue), self.route.retry.batch)
            return [self.queue.popleft() for _ in range(count)]

    def _backoff(self) -> None:
        """Wait before the next attempt: doubling up to retry.max_delay, cut short by a retry request."""
        deadline = time.monotonic() + self.delay
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            token = self.spool.retry_token()
            if token != self._retry_seen:  # a new request; the file stays for the other destinations
                self._retry_seen = token
                if token:
                    break
            with self.wake:
                self.wake.wait(min(POLL, left))
        self.delay = min(self.delay * 2, self.route.retry.max_delay)

    def _send(self, batch: list[str]) -> Round:
        """Send ``batch`` on one association; how it ended."""
        metas = [m for m in (self.spool.read_meta(i) for i in batch) if m is not None]
        metas = [m for m in metas if not self.spool.sent_to(m.id, [self.name])]
        kinds = [(m.object.sop_class_uid, m.object.transfer_syntax_uid) for m in metas]
        pairs = list(dict.fromkeys(kinds))[:MAX_CONTEXTS]
        later = [m.id for m, kind in zip(metas, kinds, strict=True) if kind not in pairs]
        if later:  # more kinds of object than one association can carry: the next batch takes them
            metas = [m for m in metas if m.id not in later]
            with self.wake:
                self.queue.extendleft(reversed(later))
        try:
            metas = self._settle_doubts(metas)
        except verify.Unreachable as exc:
            return Round([m.id for m in metas], str(exc))
        if not metas:
            return Round([])
        try:
            assoc = self._association(pairs)
        except Refused as exc:
            return Round([m.id for m in metas], str(exc))
        try:
            outcome = self._send_on(assoc, metas)
        except BaseException:
            self._end_association(abort=True)
            raise
        if self.destination.idle_release == 0 or self.stopping:
            self._end_association()
        self._idle_since = time.monotonic()
        return outcome

    def _send_on(self, assoc: StoreAssociation, metas: list[SpooledMeta]) -> Round:
        """The C-STOREs of a batch on ``assoc``; returns as `_send` does."""
        refused: list[str] = []
        # Every object of the batch is marked as being sent before the first goes, with one fsync
        # instead of one per object; what is not sent after all is unmarked.
        self.spool.mark_sending([m.id for m in metas], self.name)
        for i, meta in enumerate(metas):
            path = self.spool.object_path(meta.id)
            if damage := self.spool.file_damage(meta.id, size=meta.bytes):
                self.spool.unmark_sending([meta.id], self.name)  # nothing was sent
                if self.spool.read_meta(meta.id) is not None:
                    # Deleted, truncated or appended to outside pacsguard: said, not skipped, and
                    # never sent as it is now (not the data set the modality was told was stored).
                    self._undeliverable(meta, damage)
                continue  # else purged while it waited
            if self.stopping:
                self.spool.unmark_sending([m.id for m in metas[i:]], self.name)
                return Round(refused + [m.id for m in metas[i:]], "the forwarder stopped")
            try:
                status = assoc.store(path)
            except Undeliverable as exc:  # nothing sent: retrying cannot help
                self._undeliverable(meta, str(exc))
                continue
            except ValueError as exc:  # no accepted presentation context fits this object
                status, why = STATUS_NO_CONTEXT, str(exc)
            else:
                why = status_text(status, assoc.error_comment) if status is not None else ""
            if status is None:  # this one's attempt marker stays: it may have arrived
                self.spool.unmark_sending([m.id for m in metas[i + 1:]], self.name)
                return Round(refused + [m.id for m in metas[i + 1:]], "the association ended before every answer",
                             ended_on=meta.id)
            if status_category(status) in ("success", "warning"):
                self._delivered(meta)
                self.publish(records.forwarded(meta, self.name, self.party, status))
                continue
            attempts = self.spool.mark_failed(meta.id, self.name, why)
            self.publish(records.delayed(self.route.name, self.name, self.party, why, retry_in=self.delay,
                                         meta=meta, attempts=attempts))
            refused.append(meta.id)
        return Round(refused, "refused by the destination", True)

    def _undeliverable(self, meta: SpooledMeta, why: str) -> None:
        """An object that cannot be sent as spooled: its failure noted (`spool list` shows it, the
        attempt marker goes: nothing was sent), recorded, and not queued again before the next
        start; an administrator purges it."""
        self.spool.mark_failed(meta.id, self.name, f"undeliverable: {why}")
        log.error("route %s: %s cannot be sent to %s: %s", self.route.name, meta.id, self.name, why)
        self.publish(records.undeliverable(meta, self.name, self.party, why))

    # --- the association kept between batches -------------------------------------------------------

    def _association(self, pairs: list[tuple[str, str]]) -> StoreAssociation:
        """The open association when it proposed every kind of object in ``pairs`` and the
        destination left it alone while idle; else a new one (the old one released)."""
        assoc = self._assoc
        if assoc is not None:
            if assoc.is_established and assoc.left_alone():
                if self._assoc_pairs.issuperset(pairs):
                    return assoc
                self._end_association()  # other kinds of object: a new association proposes them
            else:
                self._end_association(abort=True)  # the destination ended it, or spoke while idle
        assoc = StoreAssociation.open(self.route, self.destination, pairs, self.ssl_context)
        self._assoc, self._assoc_pairs = assoc, frozenset(pairs)
        return assoc

    def _release_if_idle(self) -> None:
        if self._assoc is not None and time.monotonic() - self._idle_since >= self.destination.idle_release:
            self._end_association()

    def _end_association(self, *, abort: bool = False) -> None:
        """Release the kept association (A-RELEASE, PS3.8 7.2), or abort it."""
        assoc, self._assoc = self._assoc, None
        if assoc is None:
            return
        if abort:
            assoc.abort()
        else:
            assoc.release()

    def _delivered(self, meta: SpooledMeta) -> None:
        self.spool.mark_sent(meta.id, self.name)
        self.spool.finish_if_done(meta)

    def _settle_doubts(self, metas: list[SpooledMeta]) -> list[SpooledMeta]:
        """Ask the destination about the objects whose last send to it had no recorded answer
        (verify.py); returns ``metas`` without those it holds, which are marked sent."""
        doubtful = [m for m in metas if self.spool.in_doubt(m.id, [self.name])]
        if not doubtful:
            return metas
        if self.destination.verify_resend == "never":
            reason = f"not asked (verify_resend: never); {verify.AT_LEAST_ONCE}"
            replies = {m.id: verify.Reply(verify.Answer.NOT_ASKED, reason) for m in doubtful}
        else:
            replies = verify.ask(self.route, self.destination, doubtful, self.ssl_context)
        held: set[str] = set()
        for meta in doubtful:
            reply = replies[meta.id]
            if reply.answer is verify.Answer.FOUND:
                self._delivered(meta)
                held.add(meta.id)
            at_least_once = reply.answer in (verify.Answer.CANNOT_ASK, verify.Answer.NOT_ASKED)
            self.publish(records.in_doubt(meta, self.name, self.party, reply.answer.value, reply.reason,
                                          at_least_once=at_least_once))
        return [m for m in metas if m.id not in held]

