"""Reading processes for the syslog stream listeners (config ``atna.readers``; `pacsguard atna
listen --readers N`): RFC 5425 TLS and RFC 6587 TCP connections read by N child processes.

Reading a message is most of the receiver's work (TLS, the RFC 5424 header, the PS3.15 A.5 reader:
docs/PERFORMANCE.md, "ATNA ingest"), and in one interpreter it shares one core with sealing and
storing. With readers, the service binds the listening socket itself (its address, port 0 and
the banner stay the service's) and the children accept on it. Each child is a new interpreter
(`python -m pacsguard.atna.syslog.readers LISTEN_FD PIPE_FD`: not a fork, the service runs
threads and an event loop) running the same StreamListener as the in-line mode, so a message
makes the same Event either way. The Events come back over a socket pair in batches and the
service publishes them as its own listeners do (duplicates dropped, the bus, the privacy rules,
all in the service's event loop). One child reads a connection from its first byte to its last,
so a sender's messages keep their order.

The pipe, both ways: records of a 4-byte big-endian length and that many bytes.

    service -> child   JSON settings (limits, TLS files, log level, held)          first, once
                       b"hold", b"release": hold the senders back while the service's store
                       is behind, and read them again (StreamListener.hold)
                       b"stop": close the listener and its connections, send what is left, exit
    child -> service   a batch of Events (`wire`), each its fields and its details as their
                       canonical JSON text: the service stores that text as it is and decodes it
                       only if something reads it (events.model.JsonDetails; the syslog header,
                       which duplicate detection reads of every message, comes decoded)

A child writes with a blocking send: while the service is behind, the child stops reading its
connections and TCP holds the senders back; nothing is dropped between the two. A child whose
pipe closes (the service died) ends at once. A child that dies is started again after a second
(twice as long each time it dies again soon after its start, up to a minute: one that cannot start,
its certificate file replaced by one that does not load, says why in one line of the log) and an
Event (atna.reader.restarted) says so; the connections it held are reset and their senders
reconnect (rsyslog and syslog-ng do). RFC 5425 has no acknowledgement: what a sender had
written into a connection that was reset is lost as it is when a single-process receiver dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from pacsguard.atna.syslog.listeners import Limits, Publish, StreamListener, tls_context
from pacsguard.events.model import (
    JSON_OPTIONS,
    Event,
    JsonDetails,
    Outcome,
    Party,
    Severity,
    json_default,
    time_from_us,
)
from pacsguard.runtime.children import how_it_ended
from pacsguard.runtime.loop import run_event_loop

if TYPE_CHECKING:
    from pacsguard.atna.config import TlsListener

log = logging.getLogger("pacsguard.atna")

RESTARTED = "atna.reader.restarted"
RESTART_DELAY = 1.0  # seconds before a reading process that died is started again
#: A child that dies within STABLE seconds of its start waits twice as long as the last time before
#: it is started again, up to RESTART_MAX: one that cannot start (its certificate file replaced by
#: one that does not load) is retried, and recorded, once a minute, not every second for ever.
STABLE = 30.0
RESTART_MAX = 60.0
#: The exit code of a child that cannot start: what it cannot do is on its standard error, in one line.
CANNOT_START = 2
STOP_WAIT = 10.0  # seconds a stopping child has to send what it read before it is killed
_LENGTH = struct.Struct(">I")
#: The largest batch a child may send: far above any (a loop turn's Events, a few MB), so that a
#: broken stream ends the child instead of reserving gigabytes for one record.
_MAX_RECORD = 1 << 30
_STOP = b"stop"
_HOLD = b"hold"  # hold the senders back (`StreamListener.hold`); "release" reads them again
_RELEASE = b"release"


def record(data: bytes) -> bytes:
    return _LENGTH.pack(len(data)) + data


@dataclass(slots=True)
class Records:
    """Length-prefixed records out of a byte stream that arrives in pieces (the child's side: the
    service's settings and its stop; the service reads its children with an Intake)."""

    buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buffer
        buf += data
        out = []
        start = 0
        while len(buf) - start >= 4:
            (size,) = _LENGTH.unpack_from(buf, start)
            if len(buf) - start - 4 < size:
                break
            out.append(bytes(memoryview(buf)[start + 4:start + 4 + size]))  # one copy, not two
            start += 4 + size
        del buf[:start]
        return out


class Intake:
    """The service's end of a child's pipe: each record is received straight into one buffer that
    is kept and grown to the largest record so far. A child's batch is several MB; taken in
    pieces, joined and cut out again, each batch was copied three times into memory freshly
    mapped (and faulted in) for it (docs/PERFORMANCE.md, "The hand-over into one buffer")."""

    __slots__ = ("head", "have", "size", "body")

    def __init__(self) -> None:
        self.head = bytearray(_LENGTH.size)
        self.have = 0  # octets of the current record's length (while size < 0), else of its body
        self.size = -1  # the current record's length; -1 while it is still being read
        self.body = bytearray()

    def receive(self, pipe: socket.socket) -> memoryview:
        """The next whole record, as a view into the buffer that the next call reuses (release it,
        and keep nothing of it). BlockingIOError when the pipe has no more for now (what came is
        kept for the next call); EOFError when the child closed it, or announced a record larger
        than any batch (_MAX_RECORD)."""
        while True:
            if self.size < 0:
                with memoryview(self.head) as view:
                    got = pipe.recv_into(view[self.have:])
                if not got:
                    raise EOFError
                self.have += got
                if self.have < len(self.head):
                    continue
                (self.size,) = _LENGTH.unpack(self.head)
                self.have = 0
                if self.size > _MAX_RECORD:  # no batch is that large: the pipe's stream is broken
                    raise EOFError(f"a record of {self.size} octets announced")
                if self.size > len(self.body):
                    self.body = bytearray(self.size)
            if self.have < self.size:
                with memoryview(self.body) as view:
                    got = pipe.recv_into(view[self.have:self.size])
                if not got:
                    raise EOFError
                self.have += got
                if self.have < self.size:
                    continue
            size, self.size, self.have = self.size, -1, 0
            return memoryview(self.body)[:size]


#: Details keys the service reads of every Event (atna.dedupe): sent decoded beside the text.
_EAGER = ("syslog",)
_ITEM = struct.Struct(">II")
#: Severity by its number, a dict lookup instead of the enum's call (unwire makes one per message).
_SEVERITIES = {int(s): s for s in Severity}


def wire(event: Event) -> bytes:
    """An Event as the child sends it (`unwire` makes it again): the lengths of two parts, a JSON
    array of its fields and of the few details the service reads of every Event, then its details
    as their canonical JSON text, sent as they are (inside JSON, every quote of that text would
    be escaped, and unescaped again by the service)."""
    details = orjson.dumps(event.details, default=json_default, option=JSON_OPTIONS)
    head = orjson.dumps([event.id, event.time_us, event.kind, int(event.severity), event.component, event.outcome,
                         event.actor.to_dict(), event.target.to_dict(), event.patient_ids, event.study_uids,
                         event.sop_instance_count, event.message,
                         {k: event.details[k] for k in _EAGER if k in event.details}])
    return _ITEM.pack(len(head), len(details)) + head + details


def unwire(data: bytes | memoryview) -> list[Event]:
    """The Events of a batch of `wire` items (nothing of the Events refers to ``data`` after)."""
    out = []
    at, end = 0, len(data)
    while at < end:
        head_len, details_len = _ITEM.unpack_from(data, at)
        at += _ITEM.size
        (id_, time_us, kind, severity, component, outcome, actor, target, patients, studies, count, message,
         eager) = orjson.loads(data[at:at + head_len])
        at += head_len
        details = JsonDetails(bytes(data[at:at + details_len]), eager)
        at += details_len
        out.append(Event(kind=kind, component=component, severity=_SEVERITIES[severity], outcome=outcome,
                         actor=Party.from_dict(actor), target=Party.from_dict(target), patient_ids=tuple(patients),
                         study_uids=tuple(studies), sop_instance_count=count, message=message, details=details,
                         time=time_from_us(time_us), id=id_))
    return out


def restarted(transport: str, reader: int, exit_code: int | None, restart_in: float = RESTART_DELAY) -> Event:
    """The Event of a reading process that ended and was started again ``restart_in`` seconds later."""
    sig, how = how_it_ended(exit_code)
    why = " (it could not start: its reason is in the log)" if exit_code == CANNOT_START else ""
    return Event(kind=RESTARTED, component="atna", severity=Severity.ERROR, outcome=Outcome.MAJOR_FAILURE,
                 message=f"the {transport} listener's reading process {reader} ended ({how}){why}; its connections "
                         f"were reset and it was started again after {restart_in:g} s",
                 details={"transport": transport, "reader": reader, "exit_code": exit_code, "signal": sig,
                          "restart_in": restart_in})


@dataclass(slots=True)
class _Child:
    """One reading process as the service sees it."""

    slot: int
    process: subprocess.Popen[bytes]
    pipe: socket.socket
    ended: asyncio.Future[None]
    started: float  # the event loop's time when it was started
    intake: Intake = field(default_factory=Intake)


class ReadingProcesses:
    """The service's side: the listening socket, the children reading it, their Events published."""

    def __init__(self, publish: Publish, limits: Limits, tls: TlsListener | None, count: int) -> None:
        self.publish = publish
        self.limits = limits
        self.tls = tls  # its files resolved; None for plain TCP
        self.transport = "tls" if tls is not None else "tcp"
        self.count = count
        self.children: dict[int, _Child] = {}
        self._delays: dict[int, float] = {}  # per slot: the wait before its last restart (`_delay`)
        self._listening: socket.socket | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.held = False

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._loop = asyncio.get_running_loop()
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
        self._listening = socket.create_server(address, family=family, backlog=512)
        try:
            for slot in range(self.count):
                self._spawn(slot)
        except BaseException:
            await self.close()
            raise
        bound = self._listening.getsockname()
        return str(bound[0]), int(bound[1])

    def _settings(self) -> bytes:
        return orjson.dumps({
            "max_message": self.limits.max_message,
            "idle_timeout": self.limits.idle_timeout,
            "max_connections": self.limits.max_connections,
            "frame_timeout": self.limits.frame_timeout,
            "tls": self.tls.model_dump(mode="json") if self.tls is not None else None,
            "log_level": logging.getLogger("pacsguard").getEffectiveLevel(),
            "held": self.held})

    def hold(self) -> None:
        """Every child holds its senders back (`StreamListener.hold`); one started meanwhile too."""
        self.held = True
        self._tell(_HOLD)

    def release(self) -> None:
        self.held = False
        self._tell(_RELEASE)

    def _tell(self, word: bytes) -> None:
        for child in self.children.values():
            if not child.ended.done():
                with contextlib.suppress(OSError):  # a child gone: its EOF restarts it, told by its settings
                    child.pipe.send(record(word))

    def _spawn(self, slot: int) -> None:
        assert self._listening is not None and self._loop is not None
        ours, theirs = socket.socketpair()
        listen_fd = self._listening.fileno()
        try:
            with theirs:
                # -P: code is never taken from the working directory (the service's writable folder).
                process = subprocess.Popen([sys.executable, "-P", "-m", __name__, str(listen_fd), str(theirs.fileno())],
                                           pass_fds=(listen_fd, theirs.fileno()), stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        with contextlib.suppress(OSError):  # a child that died at once: its EOF below restarts it
            ours.sendall(record(self._settings()))
        ours.setblocking(False)
        child = _Child(slot, process, ours, self._loop.create_future(), self._loop.time())
        self.children[slot] = child
        self._loop.add_reader(ours.fileno(), self._readable, child)

    def _readable(self, child: _Child) -> None:
        """One whole batch at most per call, so that each child and the loop's other work get their
        turn; the loop calls again while the pipe has more."""
        try:
            batch = child.intake.receive(child.pipe)
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, EOFError) as exc:
            if isinstance(exc, EOFError) and exc.args:
                log.error("the %s listener's reading process %d: %s; it is started again", self.transport,
                          child.slot, exc.args[0])
            self._ended(child)
            return
        with batch:
            events = unwire(batch)
        for event in events:
            self.publish(event)

    def _ended(self, child: _Child) -> None:
        assert self._loop is not None
        self._loop.remove_reader(child.pipe.fileno())
        child.pipe.close()
        if not child.ended.done():
            child.ended.set_result(None)
        if not self._stopping:
            delay = self._delay(child)
            self._loop.call_later(delay, self._restart, child, delay)

    def _delay(self, child: _Child) -> float:
        """Seconds before ``child`` is started again: RESTART_DELAY, doubled each time it died again
        within STABLE seconds of its start, up to RESTART_MAX."""
        assert self._loop is not None
        last = self._delays.get(child.slot)
        early = self._loop.time() - child.started < STABLE
        delay = min(last * 2, RESTART_MAX) if last is not None and early else RESTART_DELAY
        self._delays[child.slot] = delay
        return delay

    def _restart(self, child: _Child, delay: float = RESTART_DELAY) -> None:
        if self._stopping:
            return
        code = child.process.poll()
        if code is None:  # closed its pipe but lives on: it can no longer hand over what it reads
            child.process.kill()
            code = child.process.wait()
        event = restarted(self.transport, child.slot, code, delay)
        log.error("%s", event.message)
        self.publish(event)
        self._respawn(child.slot)

    def _respawn(self, slot: int) -> None:
        assert self._loop is not None
        if self._stopping:
            return
        try:
            self._spawn(slot)
        except OSError as exc:  # no process or descriptor to be had now: try again later
            log.error("the %s listener cannot start reading process %d: %s", self.transport, slot, exc)
            self._loop.call_later(RESTART_DELAY, self._respawn, slot)

    async def close(self) -> None:
        """Every child closes its connections, sends what it read, and ends; then the socket."""
        self._stopping = True
        children = list(self.children.values())
        self.children.clear()
        for child in children:
            if not child.ended.done():
                with contextlib.suppress(OSError):
                    child.pipe.send(record(_STOP))
        for child in children:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(child.ended), STOP_WAIT)
            if not child.ended.done():
                self._ended(child)
            await asyncio.to_thread(_reap, child.process)
        if self._listening is not None:
            self._listening.close()
            self._listening = None


def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(2)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- the child -------------------------------------------------------------------------------------


class _Outbox:
    """The child's Events, sent to the service once per turn of the event loop."""

    def __init__(self, pipe: socket.socket) -> None:
        self.pipe = pipe
        self.items: list[bytes] = []

    def publish(self, event: Event) -> None:
        if not self.items:
            asyncio.get_running_loop().call_soon(self.flush)
        self.items.append(wire(event))

    def flush(self) -> None:
        if not self.items:
            return
        items, self.items = self.items, []
        # The record's length first, joined in the same copy as the items (`record` would copy the
        # batch, several MB, a second time).
        data = b"".join([_LENGTH.pack(sum(map(len, items))), *items])
        try:
            self.pipe.sendall(data)  # blocking: a busy service holds the senders back
        except OSError:
            os._exit(0)  # the service is gone


def _receive(pipe: socket.socket, records: Records) -> list[bytes]:
    """The next whole records the service sent; [] when it is gone."""
    while True:
        try:
            data = pipe.recv(65536)
        except OSError:
            return []
        if not data:
            return []
        got = records.feed(data)
        if got:
            return got


async def _read_connections(listening: socket.socket, pipe: socket.socket, settings: dict[str, Any],
                            records: Records, early: list[bytes], context: ssl.SSLContext | None) -> None:
    """Read the connections until the service says stop (``early``: what it said with the settings)."""
    loop = asyncio.get_running_loop()
    outbox = _Outbox(pipe)
    limits = Limits(settings["max_message"], settings["idle_timeout"], settings["max_connections"],
                    settings["frame_timeout"])
    listener = StreamListener(outbox.publish, limits, context)
    if settings.get("held"):
        listener.hold()
    await listener.serve(sock=listening)
    stop = loop.create_future()
    obey = {_HOLD: listener.hold, _RELEASE: listener.release}

    def told() -> None:
        """The service's words, read in a thread: the pipe stays blocking for the outbox's sends
        (an event loop watching it would make it non-blocking)."""
        said = early
        while True:
            for word in said:
                if word == _STOP:
                    loop.call_soon_threadsafe(_settle, stop)
                    return
                if word in obey:
                    loop.call_soon_threadsafe(obey[word])
            said = _receive(pipe, records)
            if not said:
                os._exit(0)  # the service died: end as it did

    threading.Thread(target=told, name="pacsguard-atna-reader-pipe", daemon=True).start()
    await stop
    await listener.close()
    await asyncio.sleep(0)  # the connections' last Events
    outbox.flush()


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def main(argv: list[str]) -> int:
    """The child's entry point: the listening socket's and the pipe's descriptors."""
    # The service decides when this ends: ^C and a terminal's hang-up reach the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    listening = socket.socket(fileno=int(argv[1]))
    pipe = socket.socket(fileno=int(argv[2]))
    records = Records()
    got = _receive(pipe, records)
    if not got:
        return 1
    settings, early = orjson.loads(got[0]), got[1:]
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pacsguard").setLevel(settings["log_level"])
    from pacsguard.atna.collector import tune_for_ingest

    tune_for_ingest()
    try:
        context = _context(settings["tls"])
    except CannotStart as exc:
        # One line, no traceback: the administrator reads it in the repository's log, and the
        # service records the restart (exit code CANNOT_START) and waits longer each time.
        log.error("%s", exc)
        return CANNOT_START
    run_event_loop(_read_connections(listening, pipe, settings, records, early, context))
    return 0


class CannotStart(Exception):
    """The child cannot make its listener; the text says what is wrong and where."""


def _context(tls: dict[str, Any] | None) -> ssl.SSLContext | None:
    """The TLS listener's context, made again from its files (RFC 5425 4.2): they may have been
    replaced since the service started (a renewed certificate). CannotStart naming the file and
    the fault when they do not load."""
    if tls is None:
        return None
    from pacsguard.atna.config import TlsListener
    from pacsguard.tls.contexts import TLSConfigError

    try:
        return tls_context(TlsListener.model_validate(tls))
    except (TLSConfigError, OSError, ssl.SSLError, ValueError) as exc:
        raise CannotStart(f"the tls listener's reading process cannot start: {exc}") from None


if __name__ == "__main__":
    sys.exit(main(sys.argv))
