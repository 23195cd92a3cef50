"""Outside round 17 (L): a sender whose clock is dead or wrong (EventDateTime 1900, 1970, 2036)
had its messages stored with nothing said. They are now flagged `clock-skew` and counted by
`atna sources`, named as the sender's last error; a backlog of days, or a trail years old, is not."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from atna_corpus import every_event_id

from pacsguard.atna.ingest import Sender, frame_event
from pacsguard.atna.sources import count_sources

SENDER = Sender("127.0.91.9", 40000, "tcp", "octet-counting")
HEADER = b"<85>1 - ws01 app - IHE+RFC-3881 - "
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)  # the time of receipt, given: no time bomb


def dated(when: str) -> bytes:
    text = every_event_id()["110110"].decode().split("?>", 1)[1]
    text, n = re.subn('EventDateTime="[^"]*"', f'EventDateTime="{when}"', text, count=1)
    assert n == 1
    return HEADER + text.encode()


@pytest.mark.parametrize("when", ["1900-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "2036-02-07T06:28:16Z",
                                  "2026-12-07T12:00:01Z"])
def test_a_sender_clock_far_from_the_receipt_is_flagged_and_counted(when: str) -> None:
    ev = frame_event(SENDER, dated(when), now=NOW)
    assert ev.details["flags"] == ["clock-skew"]
    assert ev.time == datetime.fromisoformat(when)  # stored as dated: the evidence is what was sent
    row = count_sources([ev])[0]
    assert row.clock_skew == 1 and (row.last_error or "").startswith(f"clock-skew: the event is dated {when[:10]}")


@pytest.mark.parametrize("ago", [timedelta(0), timedelta(hours=20), timedelta(days=30), timedelta(days=3000)])
def test_a_backlog_or_an_old_trail_is_not_skew(ago: timedelta) -> None:
    when = (NOW - ago).strftime("%Y-%m-%dT%H:%M:%SZ")
    ev = frame_event(SENDER, dated(when), now=NOW)
    assert "flags" not in ev.details, ev.details.get("flags")
    assert count_sources([ev])[0].clock_skew == 0
