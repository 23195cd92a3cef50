"""Outside round 17 (K): a UDP flood while the store was behind grew the receiver without a bound
(the backlog of events waiting for the store reached 138,000, 1.26 GB) and held up the gateway's
own records: only TCP and TLS were held back. Now, while the senders are held, each datagram is
dropped and counted per sender: one `backlog-full` record, then a summary carrying the number;
reading resumes with the others."""

from __future__ import annotations

import socket
import time

from atna_corpus import every_event_id
from receiver import free_port, running

from pacsguard.atna.sources import count_sources

BODY = every_event_id()["110104"].replace(b"\n", b"")


def message(n: int) -> bytes:
    return b"<85>1 2026-12-06T10:00:00Z modality%d pacs - IHE+RFC-3881 - " % n + BODY


def test_datagrams_while_the_store_is_behind_are_dropped_and_counted_not_held() -> None:
    port = free_port()
    tcp = free_port()
    behind = {"backlog": 0}
    section = {"udp": {"port": port}, "tcp": {"port": tcp}, "max_backlog": 100}
    with running(section, backlog=lambda: behind["backlog"]) as rx:
        assert rx.service is not None and rx.service.backpressure is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(message(0), ("127.0.0.1", port))
            rx.wait(lambda evs: len(evs) == 1, "the first datagram")
            behind["backlog"] = 100  # the store falls behind: the next message holds the senders
            udp.sendto(message(1), ("127.0.0.1", port))
            rx.wait(lambda evs: len(evs) == 2, "the datagram that found the store behind")
            assert rx.service.backpressure.holding
            for n in range(2, 502):
                udp.sendto(message(n), ("127.0.0.1", port))
            time.sleep(0.5)
            dropped = [e for e in rx.events if e.details.get("problem") == "backlog-full"]
            assert len(dropped) == 1 and "datagram dropped" in dropped[0].details["error"], dropped
            assert len(rx.events) == 3  # two stored, one record of the drops: none held in memory
            behind["backlog"] = 0
            time.sleep(0.3)  # released at half of max_backlog
            udp.sendto(message(999), ("127.0.0.1", port))
            rx.wait(lambda evs: any(e.details.get("syslog", {}).get("hostname") == "modality999" for e in evs),
                    "a datagram after the release")
    # The listener's close records what was counted in a summary (the kernel may have dropped many
    # of the 500 itself, its buffer full, before the listener saw them: UDP, on a busy machine).
    summaries = [e for e in rx.events if e.details.get("problem") == "backlog-full" and e.details.get("repeats")]
    assert len(summaries) == 1 and 1 <= summaries[0].details["repeats"] <= 499, [e.details for e in summaries]
    row = count_sources(rx.events)[0]
    assert row.dropped_datagrams == 1 + summaries[0].details["repeats"], row
    assert (row.last_error or "").startswith("backlog-full: "), row
