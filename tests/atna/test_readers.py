"""The reading processes of the syslog stream listeners (atna.readers, `atna listen --readers N`):
the same Events as the in-line listener, a killed reader started again and recorded, nothing a
reader made lost when the service stops, and no reader left behind by `atna listen`."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from atna_corpus import every_event_id
from receiver import DEADLINE, free_port, running

from pacsguard.atna.syslog.readers import Intake, ReadingProcesses, Records, record, unwire, wire
from pacsguard.events.model import Event
from pacsguard.store import EventQuery, EventStore
from pacsguard.store.verify import verify_store

FRAME = b"<85>1 2026-12-04T10:00:00Z modality pacs - IHE+RFC-3881 - " + every_event_id()["110104"].replace(b"\n", b"")


def send(port: int, *frames: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
        s.sendall(b"".join(b"%d %s" % (len(f), f) for f in frames))


def readers_of(rx: Any) -> ReadingProcesses:
    listener = rx.service.listeners[0]
    assert isinstance(listener, ReadingProcesses)
    return listener


def comparable(event: Event) -> dict[str, Any]:
    """An Event without what differs between two receptions of the same frame."""
    out = event.to_dict()
    for key in ("id", "time"):
        out.pop(key)
    out["details"] = {k: v for k, v in out["details"].items() if k not in ("sender", "received")}
    out["actor"].pop("port", None)
    return out


def test_records_come_out_whole_from_any_split() -> None:
    stream = record(b"first") + record(b"") + record(b"x" * 70_000)
    for cut in (1, 3, 4, 5, 9, 70_000):
        records = Records()
        got = [r for i in range(0, len(stream), cut) for r in records.feed(stream[i:i + cut])]
        assert got == [b"first", b"", b"x" * 70_000]
        assert not records.buffer


def test_the_service_takes_whole_records_from_any_split_into_one_buffer() -> None:
    """Intake: each record whole, whatever pieces the pipe gives it in; a later, larger record
    grows the buffer; what has not come yet is kept for the next call; a pipe closed mid-record
    ends it."""
    payloads = [b"first", b"", b"x" * 70_000, b"y" * 3, b"z" * 200_000]
    stream = b"".join(record(p) for p in payloads)
    for cut in (1, 3, 4, 5, 9, 4096, 65_536):  # each piece taken before the next is sent
        ours, theirs = socket.socketpair()
        with ours, theirs:
            ours.setblocking(False)
            intake, got = Intake(), []
            for i in range(0, len(stream), cut):
                theirs.sendall(stream[i:i + cut])
                while True:
                    try:
                        view = intake.receive(ours)
                    except BlockingIOError:
                        break
                    with view:
                        got.append(bytes(view))
            assert got == payloads, cut
            theirs.sendall(record(b"cut short")[:-2])
            with pytest.raises(BlockingIOError):
                intake.receive(ours)
            theirs.close()
            with pytest.raises(EOFError):
                intake.receive(ours)
    ours, theirs = socket.socketpair()
    with ours, theirs:  # a broken stream announcing 4 GiB: the child is ended, nothing is reserved
        theirs.sendall(b"\xff\xff\xff\xff")
        with pytest.raises(EOFError, match="4294967295 octets"):
            Intake().receive(ours)


def test_an_event_crosses_the_pipe_unchanged_and_stores_the_same_bytes() -> None:
    from atna_corpus import BILLION_LAUGHS

    from pacsguard.atna.ingest import Sender, frame_events, problem_event
    from pacsguard.atna.syslog.framing import FrameProblem
    from pacsguard.events.model import JsonDetails

    sender = Sender("10.0.0.9", 4711, "tls", "octet-counting", "CN=modality")
    made = frame_events(sender, [FRAME, b"<85>1 - h a - - - " + BILLION_LAUGHS, b"\xff\xfe not syslog"])
    made.append(problem_event(sender, FrameProblem("oversize", "99999999 octets", b"99999999 zzz")))
    for event in made:
        crossed = unwire(memoryview(wire(made[0]) + wire(event)))[1]  # as the service's Intake gives it
        assert isinstance(crossed.details, JsonDetails)
        assert crossed.to_json() == event.to_json()  # the bytes the store hashes
        assert crossed.details.get("syslog") == event.details.get("syslog")
        assert crossed == event and dict(crossed.details) == dict(event.details)
        assert pickle.loads(pickle.dumps(crossed)) == event


def test_a_stop_that_comes_with_the_settings_is_obeyed(tmp_path: Path) -> None:
    """A service that stops as soon as it started sends the settings and the stop in one write:
    the child must see both, not read on until it is killed."""
    listening = socket.create_server(("127.0.0.1", 0))
    ours, theirs = socket.socketpair()
    with theirs:
        child = subprocess.Popen([sys.executable, "-m", "pacsguard.atna.syslog.readers", str(listening.fileno()),
                                  str(theirs.fileno())], pass_fds=(listening.fileno(), theirs.fileno()))
    settings = orjson.dumps({"max_message": 65536, "idle_timeout": 5.0, "max_connections": 10, "frame_timeout": 5.0,
                             "tls": None,
                             "log_level": 30})
    try:
        ours.sendall(record(settings) + record(b"stop"))
        assert child.wait(DEADLINE) == 0
    finally:
        child.kill()
        ours.close()
        listening.close()


def test_a_reader_makes_the_event_the_in_line_listener_makes() -> None:
    events = []
    for readers in (0, 2):
        port = free_port()
        with running({"tcp": {"port": port}, "readers": readers}) as rx:
            send(port, FRAME)
            events.append(rx.wait(lambda evs: len(evs) == 1, f"the message (readers={readers})")[0])
    inline, read = events
    assert read.kind == "atna.audit.instances-transferred"
    assert comparable(read) == comparable(inline)
    assert read.patient_ids == inline.patient_ids != ()


def test_connections_are_spread_over_the_readers_and_each_keeps_its_order() -> None:
    port = free_port()
    frames = [FRAME.replace(b"modality pacs", b"modality%d pacs" % i) for i in range(40)]
    with running({"tcp": {"port": port}, "readers": 2}) as rx:
        pids = {child.process.pid for child in readers_of(rx).children.values()}
        assert len(pids) == 2
        for start in range(0, 40, 10):
            send(port, *frames[start:start + 10])
        got = rx.wait(lambda evs: len(evs) == 40, "forty messages")
    hosts = [e.details["syslog"]["hostname"] for e in got]
    assert sorted(hosts) == sorted(f"modality{i}" for i in range(40))
    for start in range(0, 40, 10):  # one connection's messages in the order it sent them
        theirs = [h for h in hosts if int(h.removeprefix("modality")) // 10 == start // 10]
        assert theirs == [f"modality{i}" for i in range(start, start + 10)]


def test_a_killed_reader_is_started_again_and_recorded() -> None:
    port = free_port()
    with running({"tcp": {"port": port}, "readers": 1}) as rx:
        first = readers_of(rx).children[0].process
        os.kill(first.pid, signal.SIGKILL)
        got = rx.wait(lambda evs: any(e.kind == "atna.reader.restarted" for e in evs), "the restart recorded")
        restart = next(e for e in got if e.kind == "atna.reader.restarted")
        assert restart.details == {"transport": "tcp", "reader": 0, "exit_code": -9, "signal": "SIGKILL",
                                   "restart_in": 1.0}
        assert "killed by SIGKILL" in restart.message
        deadline = time.monotonic() + DEADLINE
        while readers_of(rx).children[0].process is first:
            assert time.monotonic() < deadline, "no new reader"
            time.sleep(0.05)
        send(port, FRAME)
        rx.wait(lambda evs: any(e.kind.startswith("atna.audit.") for e in evs), "a message read by the new reader")
        assert first.poll() == -9


def test_what_a_reader_makes_as_the_service_stops_is_published() -> None:
    """A truncated frame is only known as such when its connection is closed, which the stop does:
    the reader's last Event must still reach the service."""
    port = free_port()
    with running({"tcp": {"port": port}, "readers": 1}) as rx:
        conn = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        conn.sendall(b"%d %s" % (len(FRAME), FRAME) + b"500 cut short")
        rx.wait(lambda evs: len(evs) == 1, "the whole message")
        time.sleep(0.3)  # the reader has the cut-short frame's bytes too
        process = readers_of(rx).children[0].process
    conn.close()
    assert [e.details.get("problem") for e in rx.events] == [None, "truncated"]
    assert process.poll() == 0


def test_atna_listen_with_readers_stores_everything_and_leaves_no_reader_behind(tmp_path: Path) -> None:
    port = free_port()
    store = tmp_path / "repository.db"
    proc = subprocess.Popen([sys.executable, "-m", "pacsguard.cli", "atna", "listen", "--tcp", f"127.0.0.1:{port}",
                             "--readers", "2", "--store", str(store)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if "ATNA syslog" in line:
                assert "2 reading processes" in line  # the banner says how the listener is read
                break
        else:
            pytest.fail(f"atna listen did not start: exit {proc.wait()}")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 2
        for i in range(6):
            send(port, *(FRAME.replace(b"PID-0042", b"PID-%d-%d" % (i, j)) for j in range(50)))
        deadline = time.monotonic() + DEADLINE
        while stored_size(store) < 300:
            assert time.monotonic() < deadline, "not every message stored"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(DEADLINE)
    assert proc.returncode == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    es = EventStore.open(str(store))
    try:
        stored = list(es.search(EventQuery(kind="atna.audit.*", limit=None)))
        assert len(stored) == 300
        assert len({s.event.patient_ids[0] for s in stored}) == 300
        assert verify_store(es, None).ok
    finally:
        es.close()


def stored_size(store: Path) -> int:
    es = EventStore.open(str(store))
    try:
        return es.size()
    finally:
        es.close()


@pytest.mark.parametrize("readers", ["0", "2"])
def test_a_certificate_that_does_not_load_stops_the_start_with_its_reason(tmp_path: Path, readers: str) -> None:
    bad = tmp_path / "repository.crt"
    bad.write_text("not a certificate\n")
    key = tmp_path / "repository.key"
    key.write_text("not a key either\n")
    done = subprocess.run([sys.executable, "-m", "pacsguard.cli", "atna", "listen", "--tls", "127.0.0.1:0",
                           "--tls-cert", str(bad), "--tls-key", str(key), "--readers", readers,
                           "--store", str(tmp_path / "s.db")], capture_output=True, text=True, timeout=DEADLINE,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"cert file {bad}: no PEM certificate found" in done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
