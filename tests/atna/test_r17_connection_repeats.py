"""Outside round 17 (K): a host failing 300 TLS handshakes a second, or opening connections that
say nothing, wrote one sealed record each (some 26 GB a day from one unauthenticated host). The
syslog listeners now record the first 10 of each problem from each host in a minute one by one
and count the rest into one record carrying their number, as the RESTful endpoint does; `atna
sources` still counts every one."""

from __future__ import annotations

import socket
import time

import pytest
from receiver import free_port, running

from pacsguard.atna.repeats import RECORDED_EACH
from pacsguard.atna.sources import count_sources


@pytest.mark.parametrize("readers", [0, 2])
def test_silent_connections_beyond_the_first_ten_are_counted_not_each_recorded(readers: int) -> None:
    """Each reading process counts its own connections: 10 records each at most."""
    port = free_port()
    with running({"tcp": {"port": port}, "readers": readers}) as rx:
        for _ in range(40):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        rx.wait(lambda evs: len(evs) >= RECORDED_EACH, "the first silent connections")
        time.sleep(0.5)  # every connection seen and closed: the summary at the listener's close counts them all
    silent = [e for e in rx.events if e.details.get("problem") == "silent"]
    one_by_one = [e for e in silent if not e.details.get("repeats")]
    summaries = [e for e in silent if e.details.get("repeats")]
    processes = max(readers, 1)
    assert RECORDED_EACH <= len(one_by_one) <= RECORDED_EACH * processes, len(one_by_one)
    assert len(one_by_one) + sum(e.details["repeats"] for e in summaries) == 40, [e.details for e in summaries]
    assert "more of this sender in the 60 s after the first 10" in summaries[0].details["error"]
    assert count_sources(rx.events)[0].silent_connections == 40
