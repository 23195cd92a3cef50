"""Outside round 8 on RFC 6587 framing: octet counts a sender gets wrong. A count of 2**31 (ten
digits) is refused and the frames after it are read, where the rest of its digits used to be taken
for a count of 147483648 octets that swallowed them; a count written "0069" or "+69" is read by
its value and reported, not lost; a byte that starts no frame in an octet-counted stream is named
as such; a byte order mark before the first frame is named and dropped, and that frame read.
Both as the splitter sees them, split anywhere, and through `atna listen`'s TCP listener, in-line
and with reading processes, each problem named in `atna sources`."""

from __future__ import annotations

import socket
import time

import pytest
from receiver import running
from test_senders_real import one_line

from pacsguard.atna.sources import count_sources
from pacsguard.atna.syslog import framing
from pacsguard.atna.syslog.framing import FrameProblem, Splitter

HOST = "127.0.83.10"  # this suite's own loopback address


def octet(msg: bytes) -> bytes:
    return b"%d %s" % (len(msg), msg)


GOOD = [b'<85>1 - h a - IHE+RFC-3881 - <AuditMessage n="%d">\n  <x/>\n</AuditMessage>' % i for i in range(4)]


def split(stream: bytes, step: int) -> tuple[list[bytes], list[FrameProblem]]:
    """What a splitter makes of ``stream`` read ``step`` octets at a time, to its end."""
    splitter, frames, problems = Splitter(), [], []
    for i in range(0, len(stream), step):
        got, found = splitter.feed(stream[i:i + step])
        frames += got
        problems += found
    frames += splitter.flush(final=True)
    problems += splitter.finish()
    return frames, problems


@pytest.mark.parametrize("count", [b"2147483648", b"4294967295", b"1000000000"])
def test_a_ten_digit_count_loses_only_its_own_frame(count: bytes) -> None:
    """RFC 6587 3.4.1: MSG-LEN is refused beyond 9 digits (the maximum is far below). Its frame is
    lost (its end cannot be known), the frames after it are not: the hunt for the next frame
    start once began inside the count and read "147483648 " as a count of its own."""
    stream = octet(GOOD[0]) + count + b" " + GOOD[1] + b"".join(octet(m) for m in GOOD[2:])
    for step in (len(stream), 7, 1):
        frames, problems = split(stream, step)
        assert frames == [GOOD[0], *GOOD[2:]], step
        assert [p.problem for p in problems] == ["malformed-frame"], (step, problems)
        assert "more than 9 digits" in problems[0].detail and count[:9].decode() in problems[0].detail


@pytest.mark.parametrize("prefix", [b"0", b"000", b"+", b"+0"])
def test_a_count_with_a_leading_zero_or_a_sign_is_read_and_reported(prefix: bytes) -> None:
    """"0069" and "+69" are no MSG-LEN (NONZERO-DIGIT first) but say 69 plainly (rsyslog's
    imtcp reads leading zeros): the frame is read and the count named; once, "000..." lost the frame and
    "+..." was reported as no octet count at all."""
    stream = octet(GOOD[0]) + prefix + octet(GOOD[1]) + b"".join(octet(m) for m in GOOD[2:])
    for step in (len(stream), 7, 1):
        frames, problems = split(stream, step)
        assert frames == GOOD, step
        assert [p.problem for p in problems] == ["malformed-frame"], (step, problems)
        assert "leading zero" in problems[0].detail and repr((prefix + b"%d" % len(GOOD[1])).decode()) \
            in problems[0].detail
    # And found as a frame start after a bad frame, as a count without the zero or the sign is.
    frames, problems = split(b"2147483648 " + GOOD[0] + prefix + b"".join(octet(m) for m in GOOD[1:]), 7)
    assert frames == GOOD[1:] and [p.problem for p in problems] == ["malformed-frame"] * 2, problems


def test_a_byte_that_starts_no_frame_in_an_octet_counted_stream_is_named_as_such() -> None:
    """A stray "R" (an openssl s_client command letter sent as data) between two octet-counted
    frames is not "an octet count not followed by a space"."""
    frames, problems = split(octet(GOOD[0]) + b"R\n" + octet(GOOD[1]), 1 << 16)
    assert frames == GOOD[:2]
    assert [(p.problem, p.detail) for p in problems] == [
        ("malformed-frame", "frame starts with neither an octet count nor '<'")]


@pytest.mark.parametrize("readers", [0, 2])
def test_bad_counts_through_atna_listen_are_named_in_atna_sources(readers: int) -> None:
    """Over a real TCP connection to the running listener, in-line and in reading processes: a
    count of 2**31 and a count "+N" on one connection; the good messages are stored, each bad
    count is recorded, and `atna sources` names the last."""
    good = [b"<85>1 - h a - IHE+RFC-3881 - " + one_line(code).encode() for code in ("110110", "110112", "110106")]
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    stream = b"2147483648 " + good[0] + octet(good[1]) + b"+" + octet(good[2])
    with running({"tcp": {"host": HOST, "port": port}, "readers": readers}) as rx:
        with socket.create_connection((HOST, port), timeout=5, source_address=(HOST, 0)) as s:
            s.sendall(stream)
        got = rx.wait(lambda evs: len(rx.audits()) == 2 and sum(e.kind == "atna.frame.rejected" for e in evs) == 2,
                      "two audits and two bad counts")
    assert sorted(e.details["event_id"]["code"] for e in rx.audits()) == ["110106", "110112"]
    errors = [e.details["error"] for e in got if e.kind == "atna.frame.rejected"]
    assert "more than 9 digits" in errors[0] and "leading zero" in errors[1]
    row = count_sources(got)[0]
    assert (row.sender, row.messages, row.malformed_frames) == (HOST, 2, 2)
    assert row.last_error is not None and "'+" in row.last_error and "leading zero" in row.last_error


@pytest.mark.parametrize("readers", [0, 2])
def test_a_byte_order_mark_before_the_first_frame_loses_nothing(readers: int) -> None:
    """A sender writing through a UTF-8 text stream that begins with the byte order mark (.NET's
    StreamWriter with Encoding.UTF8 does) sends it before its first frame, octet-counted or LF-framed.
    The mark is named and dropped; the first message used to be lost with it."""
    good = [b"<85>1 - h a - IHE+RFC-3881 - " + one_line(code).encode() for code in ("110110", "110112")]
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    with running({"tcp": {"host": HOST, "port": port}, "readers": readers}) as rx:
        for frames in (octet(good[0]) + octet(good[1]), good[0] + b"\n" + good[1] + b"\n"):
            with socket.create_connection((HOST, port), timeout=5, source_address=(HOST, 0)) as s:
                s.sendall(b"\xef\xbb\xbf" + frames)
        got = rx.wait(lambda evs: len(rx.audits()) == 4 and sum(e.kind == "atna.frame.rejected" for e in evs) == 2,
                      "four audits and two marks named")
    assert sorted(e.details["event_id"]["code"] for e in rx.audits()) == ["110110", "110110", "110112", "110112"]
    assert all("byte order mark" in e.details["error"] for e in got if e.kind == "atna.frame.rejected")


def test_an_unfinished_json_message_is_judged_once_per_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unframed sender stops after a '}' that does not end its FHIR JSON message: whether the
    message is whole was parsed again every 0.2 s for as long as the sender stayed quiet, with
    nothing new to judge. It is judged again only after the next read."""
    judged: list[int] = []
    real = framing._message_ends

    def counting(buffer: bytearray) -> bool:
        judged.append(len(buffer))
        return real(buffer)

    monkeypatch.setattr(framing, "_message_ends", counting)
    start = b'<14>1 - h app - IHE+FHIR - {"resourceType":"AuditEvent","entity":[{"a":"}"}'
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    with running({"tcp": {"host": HOST, "port": port}}) as rx, \
            socket.create_connection((HOST, port), timeout=5, source_address=(HOST, 0)) as s:
        s.sendall(start)
        deadline = time.monotonic() + 5
        while not judged:
            assert time.monotonic() < deadline, "the held frame was never judged"
            time.sleep(0.05)
        time.sleep(1.2)  # six times the hold: judged once all the same
        assert len(judged) == 1 and rx.events == []
