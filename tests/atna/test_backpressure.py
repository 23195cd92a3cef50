"""Holding the TLS and TCP senders back while the store is behind (atna.max_backlog; docs/audit.md,
"When the store falls behind"): the listeners stop reading, TCP holds the senders, a held sender
is neither idle nor too slow, and once the backlog is down to half every message is read and
stored, none twice. In the service's own loop and in reading processes; with Debian's rsyslogd
forwarding over mutual TLS (its queue keeps what the hold does not let through); and with a real
store on a full file system (a tmpfs), recovered when space returns."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from atna_corpus import every_event_id
from receiver import DEADLINE, free_port, running
from test_senders_real import _rsyslog_forwarder, mutual_pki

from pacsguard.events.model import Event
from pacsguard.runtime.outputs import open_outputs
from pacsguard.store import EventQuery, EventStore
from tmpfs_helpers import fill, small_tmpfs

BODY = every_event_id()["110104"].replace(b"\n", b"")


def frame(n: int) -> bytes:
    message = b"<85>1 2026-12-06T10:00:00Z modality%d pacs - IHE+RFC-3881 - " % n + BODY
    return b"%d %s" % (len(message), message)


def problems(events: list[Event]) -> list[Any]:
    return [e.details.get("problem") for e in events if e.details.get("problem")]


@pytest.mark.parametrize("readers", [0, 2])
def test_held_senders_are_read_again_whole_and_never_timed_out(readers: int) -> None:
    port = free_port()
    behind = {"backlog": 0}
    section = {"tcp": {"port": port}, "readers": readers, "max_backlog": 100, "idle_timeout": 1,
               "frame_timeout": 1}
    with running(section, backlog=lambda: behind["backlog"]) as rx:
        assert rx.service is not None and rx.service.backpressure is not None
        behind["backlog"] = 100  # the store is 100 events behind: the next message holds the senders
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as conn:
            conn.sendall(frame(0))
            rx.wait(lambda evs: len(evs) == 1, "the first message")
            assert rx.service.backpressure.holding
            time.sleep(0.5)  # the reading processes have been told
            rest = b"".join(frame(n) for n in range(1, 40))
            cut = frame(40)
            conn.sendall(rest + cut[:100])
            time.sleep(2.5)  # past idle_timeout and frame_timeout
            assert len(rx.events) == 1, [e.kind for e in rx.events]
            behind["backlog"] = 51  # more than half: still held
            time.sleep(0.5)
            assert len(rx.events) == 1 and rx.service.backpressure.holding
            behind["backlog"] = 50
            got = rx.wait(lambda evs: len(evs) == 40, "the messages sent while held")
            assert not rx.service.backpressure.holding
            conn.sendall(cut[100:])  # the frame cut by the hold has frame_timeout again from here
            got = rx.wait(lambda evs: len(evs) == 41, "the frame the hold cut")
    assert problems(got) == [], problems(got)
    assert [e.details["syslog"]["hostname"] for e in got] == [f"modality{n}" for n in range(41)]
    assert rx.service.backpressure.holds == 1


@pytest.mark.parametrize("readers", [0, 2])
def test_rsyslog_held_back_delivers_every_message_once_when_released(tmp_path: Path, readers: int) -> None:
    """3,000 messages (~5 MB) handed to rsyslogd, which forwards them over mutual TLS (gtls) to a
    repository holding its senders for 4 s (idle and frame timeouts of 1 s)."""
    total = 3000
    pki = mutual_pki(tmp_path / "pki")
    port = free_port()
    behind = {"backlog": 10**6}  # behind from the start: the first message holds the senders
    section = {"tls": {"port": port, "cert_file": pki["cert"], "key_file": pki["key"], "ca_file": pki["ca"],
                       "require_client_cert": True}, "readers": readers, "max_backlog": 1000,
               "idle_timeout": 1, "frame_timeout": 1}
    with running(section, backlog=lambda: behind["backlog"]) as rx:
        assert rx.service is not None and rx.service.backpressure is not None
        proc, inbound, console = _rsyslog_forwarder(tmp_path / "rsyslog", "gtls", port,
                                                    {"ca": pki["ca"], "cert": pki["client"], "key": pki["client_key"]})
        try:
            with socket.create_connection(("127.0.0.1", inbound), timeout=DEADLINE) as conn:
                conn.sendall(frame(0))  # the first: it holds the senders
                rx.wait(lambda evs: len(evs) == 1, "the first message")
                assert rx.service.backpressure.holding
                time.sleep(0.5)  # the reading processes have been told
                conn.sendall(b"".join(frame(n) for n in range(1, total)))
            time.sleep(4)
            assert len(rx.events) == 1, f"{len(rx.events)} read while the senders were held"
            behind["backlog"] = 0
            got = rx.wait(lambda evs: len(evs) >= total, f"{total} messages through rsyslog", deadline=60)
            time.sleep(1)  # none more
            got = list(rx.events)
        finally:
            proc.terminate()
            proc.wait(DEADLINE)
    assert problems(got) == [], (problems(got), console.read_text(errors="replace"))
    hosts = [e.details["syslog"]["hostname"] for e in got]
    assert sorted(hosts) == sorted(f"modality{n}" for n in range(total)), "lost or twice"
    assert hosts == [f"modality{n}" for n in range(total)], "out of the order sent"


def test_a_full_disk_holds_the_senders_and_every_message_is_stored_once_space_returns(tmp_path: Path) -> None:
    """3,000 messages (~5 MB) over one connection into a store whose file system is full: the
    backlog stays near atna.max_backlog (200) instead of growing with what the sender writes,
    nothing more is read while held, and once the filler is deleted all 3,000 are stored, each
    once."""
    total, port = 3000, free_port()
    with small_tmpfs(tmp_path / "disk", "64m") as disk:
        store = EventStore.open(str(disk / "s.db"), create=True)
        filler = fill(disk)
        with contextlib.ExitStack() as stack:
            bus = open_outputs(stack, store).bus
            with running({"tcp": {"port": port}, "max_backlog": 200}, store, bus=bus) as rx:
                assert rx.service is not None and rx.service.backpressure is not None
                conn = socket.create_connection(("127.0.0.1", port), timeout=120)
                sender = threading.Thread(target=conn.sendall, args=(b"".join(frame(n) for n in range(total)),))
                sender.start()
                deadline = time.monotonic() + DEADLINE
                while not (bus.failing and rx.service.backpressure.holding):
                    assert time.monotonic() < deadline, "the store did not fail, or the senders were not held"
                    time.sleep(0.05)
                read = len(rx.events)
                time.sleep(2)
                largest = bus.backlog
                # What the sender wrote past that waits in its socket and the repository's (how much
                # the kernel buffers is its own affair), not in the repository's memory.
                assert len(rx.events) == read < total, f"{len(rx.events)} read while held"
                assert largest < 200 + 100, f"{largest} events wait in memory, atna.max_backlog is 200"
                filler.unlink()
                sender.join(120)
                assert not sender.is_alive()
                conn.close()
                while store.size() < total:
                    assert time.monotonic() < deadline + 120, f"{store.size()} of {total} stored"
                    time.sleep(0.2)
                assert bus.health().dropped == 0
        try:
            stored = [s.event for s in store.search(EventQuery(kind="atna.audit.*", limit=None))]
        finally:
            store.close()
    hosts = [e.details["syslog"]["hostname"] for e in stored]
    assert len(hosts) == total and set(hosts) == {f"modality{n}" for n in range(total)}
    assert rx.service.backpressure.holds >= 1
