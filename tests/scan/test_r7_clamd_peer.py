"""Outside round 7: the clamd address and a peer at it that is no clamd (clamd(8) INSTREAM).

A mistyped address (``tcp://host`` without a port, a port that is no number) was an internal
error (exit 70) on the command line, and on a route every object's check failing; it is now a
usage or configuration error naming the setting. A peer that is not clamd (a wrong port) could
send an answer without end, kept whole in memory and quoted whole in the finding, or a verdict
cut short ("stream: OK" with no NUL, then silence) taken as clean, or a byte at a time past any
bound per file: each is now ``clamav.error``, bounded in memory and in time.

The peers here are small TCP servers on the helper's own loopback address, each sending what
the case needs once the INSTREAM request is read."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from scan_samples import ct
from typer.testing import CliRunner

from pacsguard.cli import main
from pacsguard.scan.clamd import Clamd
from pacsguard.scan.model import Level
from pacsguard.scan.scanner import Scanner

HOST = "127.0.64.1"


def _read_request(conn: socket.socket) -> None:
    """The INSTREAM request as clamd reads it: the command, then chunks up to a zero length."""
    def exactly(n: int) -> bytes:
        got = b""
        while len(got) < n:
            part = conn.recv(n - len(got))
            if not part:
                raise ConnectionError("client went away")
            got += part
        return got

    assert exactly(10) == b"zINSTREAM\0"
    while (size := struct.unpack(">I", exactly(4))[0]) != 0:
        exactly(size)


@contextmanager
def peer(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A one-connection TCP server on HOST that reads a request and calls ``answer``; its address."""
    server = socket.create_server((HOST, 0))
    server.settimeout(30)
    port = server.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            try:
                _read_request(conn)
                answer(conn)
            except OSError:
                pass  # the client closed its end once it had enough: what the fix does

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://{HOST}:{port}"
    finally:
        server.close()
        thread.join(timeout=30)


def clamav(address: str, timeout: float = 2.0) -> list[tuple[str, Level, str]]:
    report = Scanner(clamd=Clamd(address, timeout=timeout)).scan_bytes(ct(), "ct.dcm")
    return [(f.rule, f.level, f.explanation) for f in report.findings if f.rule.startswith("clamav")]


# 1. Addresses.

@pytest.mark.parametrize("address,why", [
    ("tcp://127.0.64.1", "has no port"), ("tcp://127.0.64.1:", "has no port"),
    ("tcp://127.0.64.1:abc", "no number from 1 to 65535"), ("tcp://127.0.64.1:99999", "no number from 1 to 65535"),
    ("tcp://[::1]", "has no port"), ("", "empty"),
])
def test_an_address_that_names_no_socket_is_a_usage_error(address: str, why: str, tmp_path: Path) -> None:
    sample = tmp_path / "ct.dcm"
    sample.write_bytes(ct())
    result = CliRunner().invoke(main.app, ["scan", "--format", "json", "--clamd", address, str(sample)])
    assert result.exit_code == 2, result.output
    assert "--clamd" in result.output and why in result.output and "internal error" not in result.output


def test_an_address_in_the_configuration_that_names_no_socket_is_a_configuration_error(tmp_path: Path) -> None:
    sample = tmp_path / "ct.dcm"
    sample.write_bytes(ct())
    config = tmp_path / "pacsguard.yaml"
    config.write_text("scan:\n  clamd: tcp://localhost\n")
    result = CliRunner().invoke(main.app, ["scan", "--config", str(config), str(sample)])
    assert result.exit_code == 2, result.output
    assert "scan.clamd" in result.output and "has no port" in result.output
    assert "internal error" not in result.output


def test_addresses_are_read_as_clamd_conf_writes_them() -> None:
    from pacsguard.scan.clamd import ClamdAddressError, parse_address

    assert parse_address("tcp://127.0.0.1:3310") == ("127.0.0.1", 3310)
    assert parse_address("tcp://[::1]:3310") == ("::1", 3310)  # RFC 3986 3.2.2: brackets are no host name
    assert parse_address("tcp://clamav.example:3310/") == ("clamav.example", 3310)
    assert parse_address("/run/clamav/clamd.ctl") == "/run/clamav/clamd.ctl"
    with pytest.raises(ClamdAddressError):
        parse_address("tcp://::1:3310")  # an IPv6 address needs its brackets: which colon is the port's?


# 2. A peer that is no clamd.

def test_an_answer_without_end_is_an_error_read_no_further_than_the_bound() -> None:
    def endless(conn: socket.socket) -> None:
        block = b"A" * 65536
        for _ in range(128):  # 8 MiB, then the peer gives up: bounded either way
            conn.sendall(block)

    with peer(endless) as address:
        found = clamav(address)
    assert [(rule, level) for rule, level, _ in found] == [("clamav.error", Level.LOW)]
    assert "is it clamd?" in found[0][2] and len(found[0][2]) < 400  # not 8 MiB of the peer's bytes quoted


def test_a_verdict_cut_short_is_no_verdict() -> None:
    stop = threading.Event()

    def cut(conn: socket.socket) -> None:
        conn.sendall(b"stream: OK")  # no NUL: the answer is not over
        stop.wait(10)  # silent, the connection open, until the client gives up

    with peer(cut) as address:
        found = clamav(address, timeout=1.0)
        stop.set()
    assert [(rule, level) for rule, level, _ in found] == [("clamav.error", Level.LOW)], found
    assert "cut short" in found[0][2]


def test_an_answer_a_byte_at_a_time_is_bounded_in_time_per_file() -> None:
    """Each byte comes within the socket's timeout, so only a bound on the whole answer ends it."""
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        for byte in b"stream: OK\0":
            if stop.wait(0.4):
                return
            conn.sendall(bytes([byte]))

    with peer(trickle) as address:
        found = clamav(address, timeout=1.0)
        stop.set()
    assert [(rule, level) for rule, level, _ in found] == [("clamav.error", Level.LOW)], found


def test_a_prompt_whole_answer_is_still_read() -> None:
    with peer(lambda conn: conn.sendall(b"stream: Pacsguard.Test FOUND\0")) as address:
        found = clamav(address)
    assert [(rule, level) for rule, level, _ in found] == [("clamav.found", Level.HIGH)]
    assert "Pacsguard.Test" in found[0][2]
    with peer(lambda conn: conn.sendall(b"stream: OK\0")) as address:
        assert clamav(address) == []
