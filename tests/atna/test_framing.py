"""RFC 6587 framing detected per connection, RFC 5424 / RFC 3164 headers."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacsguard.atna.syslog import framing, rfc5424
from pacsguard.atna.syslog.framing import Framing, Splitter


def octet(msg: bytes) -> bytes:
    return b"%d %s" % (len(msg), msg)


def test_octet_counting_across_reads_and_large_messages() -> None:
    big = b"<85>1 - h app - IHE+RFC-3881 - " + b"x" * 70_000  # over 64 KiB
    stream = octet(b"<13>1 - - - - - - one") + octet(big) + octet(b"<13>1 - - - - - - two")
    splitter = Splitter()
    frames: list[bytes] = []
    for i in range(0, len(stream), 1000):  # arrives in pieces
        got, problems = splitter.feed(stream[i:i + 1000])
        assert problems == []
        frames += got
    assert frames == [b"<13>1 - - - - - - one", big, b"<13>1 - - - - - - two"]
    assert splitter.framing is Framing.OCTET_COUNTING
    assert splitter.finish() == []


def test_non_transparent_detected_and_crlf_tolerated() -> None:
    splitter = Splitter()
    frames, problems = splitter.feed(b"<13>1 - - - - - - a\n<13>1 - - - - - - b\r\n<13>1 - - - - - - c")
    assert frames == [b"<13>1 - - - - - - a", b"<13>1 - - - - - - b"] and problems == []
    assert splitter.framing is Framing.NON_TRANSPARENT
    assert [p.problem for p in splitter.finish()] == ["truncated"]


def test_nul_ends_a_non_transparent_frame_too() -> None:
    """RFC 6587 3.4.2: LF is the usual TRAILER, NUL another seen in the field (alone, or before LF)."""
    splitter = Splitter()
    frames, problems = splitter.feed(b"<13>1 - - - - - - a\0<13>1 - - - - - - b\0\n<13>1 - - - - - - c\n<13>1 - d\0")
    assert frames == [b"<13>1 - - - - - - a", b"<13>1 - - - - - - b", b"<13>1 - - - - - - c", b"<13>1 - d"]
    assert problems == [] and splitter.finish() == []


def test_garbage_is_reported_and_the_next_frame_still_read() -> None:
    splitter = Splitter()
    frames, problems = splitter.feed(b"GET / HTTP/1.0\r\n" + octet(b"<14>1 - - - - - - ok"))
    assert frames == [b"<14>1 - - - - - - ok"]
    assert [p.problem for p in problems] == ["malformed-frame"]
    frames, problems = splitter.feed(b"12x45 nonsense\n" + octet(b"<14>1 - - - - - - again"))
    assert frames == [b"<14>1 - - - - - - again"]
    assert [p.problem for p in problems] == ["malformed-frame"]


def test_oversize_frame_is_skipped_whole() -> None:
    splitter = Splitter(max_message=65_536)
    payload = b"<14>1 - - - - - - " + b"y" * 100_000
    frames, problems = splitter.feed(octet(payload) + octet(b"<14>1 - - - - - - after"))
    assert frames == [b"<14>1 - - - - - - after"]
    assert [p.problem for p in problems] == ["oversize"]


def test_rfc5424_header() -> None:
    m = rfc5424.parse(b'<85>1 2026-12-03T10:00:00.123+01:00 pacs01 dcm4chee 77 IHE+RFC-3881 '
                      b'[meta x="a\\]b"] \xef\xbb\xbf<AuditMessage/>')
    assert (m.pri, m.facility, m.severity) == (85, 10, 5)
    assert (m.hostname, m.app_name, m.procid, m.msgid) == ("pacs01", "dcm4chee", "77", "IHE+RFC-3881")
    assert m.structured_data == '[meta x="a\\]b"]'
    assert m.msg == b"<AuditMessage/>"
    assert m.timestamp is not None and m.timestamp.hour == 9
    assert m.flags == ()


def test_missing_msgid_and_bsd_are_flagged_not_refused() -> None:
    assert rfc5424.parse(b"<13>1 - - - - - - x").flags == ("missing-msgid",)
    bsd = rfc5424.parse(b"<38>Dec  3 10:01:02 ctscanner audit[12]: <AuditMessage/>")
    assert bsd.flags == ("legacy-bsd",)
    assert (bsd.hostname, bsd.app_name, bsd.msg) == ("ctscanner", "audit", b"<AuditMessage/>")
    assert rfc5424.parse(b"<191>1 - - - - - - top").pri == 191


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=60),
       sizes=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=12))
def test_any_split_of_the_stream_yields_the_same_frames(cuts: list[int], sizes: list[int]) -> None:
    messages = [b"<85>1 - h a - IHE+RFC-3881 - " + bytes([65 + i % 26]) * n for i, n in enumerate(sizes)]
    stream = b"".join(octet(m) for m in messages)
    splitter, frames, at = Splitter(), [], 0
    for cut in cuts * (len(stream) // max(sum(cuts), 1) + 1):
        got, problems = splitter.feed(stream[at:at + cut])
        assert problems == []
        frames += got
        at += cut
        if at >= len(stream):
            break
    frames += splitter.feed(stream[at:])[0]
    assert frames == messages and splitter.finish() == []


@pytest.mark.parametrize("bad", [b"12x ", b"0 ", b"99999999999 ", b"junk without an end"])
def test_a_bad_octet_count_loses_only_itself(bad: bytes) -> None:
    """After a bad count the splitter hunts for the next 'MSG-LEN SP <PRI>'. It used to resume after
    the next LF, which in an octet-counted stream lies inside the next message, so every message
    after it was cut into pieces."""
    good = [b"<85>1 - h a - IHE+RFC-3881 - <AuditMessage>\n  <x/>\n</AuditMessage> %d" % i for i in range(5)]
    stream = bad + b"".join(octet(m) for m in good)
    for step in (len(stream), 7, 1):
        splitter, frames, problems = Splitter(), [], []
        for i in range(0, len(stream), step):
            got, found = splitter.feed(stream[i:i + step])
            frames += got
            problems += found
        assert frames == good, step
        assert [p.problem for p in problems] == ["malformed-frame"]
        assert splitter.finish() == []


def test_a_nul_framed_message_may_carry_lfs() -> None:
    """Pretty-printed XML ended by NUL (Python's SysLogHandler), and an unescaped multi-line message
    ended by LF: an LF followed by what cannot start a frame belongs to the message."""
    pretty = b"<14>1 - ris audit - IHE+RFC-3881 - <AuditMessage>\n  <A/>\n<B/>\n</AuditMessage>"
    splitter = Splitter()
    frames, problems = splitter.feed(pretty + b"\0" + pretty + b"\n<13>1 - - - - - - next\n")
    assert frames == [pretty, pretty] and problems == []
    assert splitter.held  # its LF ended the read: the end of the message, or of one of its lines?
    assert splitter.flush() == [b"<13>1 - - - - - - next"]  # nothing more came: the end
    assert splitter.finish() == []


def test_a_read_that_ends_just_after_an_lf_inside_a_message_does_not_cut_it() -> None:
    """Pretty-printed XML ended by NUL, arriving in reads cut just after one of its LFs: the LF is
    held until the next read shows it does not end the message. It was cut there."""
    pretty = b"<14>1 - ris audit - IHE+RFC-3881 - <AuditMessage>\n  <A/>\n<B/>\n</AuditMessage>"
    stream = pretty + b"\0" + pretty + b"\0"
    for cut in [i + 1 for i, octet in enumerate(stream) if octet == 0x0A]:
        splitter = Splitter()
        first, _ = splitter.feed(stream[:cut])
        second, problems = splitter.feed(stream[cut:])
        assert first + second == [pretty, pretty] and problems == [], cut
        assert not splitter.held and splitter.finish() == []
    splitter = Splitter()  # a message of a million short lines, in 64 KiB reads
    big = b"<14>1 - ris audit - IHE+RFC-3881 - <AuditMessage>" + b"\n " * 500_000 + b"</AuditMessage>"
    frames = []
    data = big + b"\0"
    for at in range(0, len(data), 65536):
        frames += splitter.feed(data[at:at + 65536])[0]
    assert frames == [big]


def test_octet_counted_frames_after_lf_framed_ones_are_followed() -> None:
    """A sender that switches from LF framing to octet counting, with no LF after its counted
    frames: they were all lost in line mode, searching for an LF that never came."""
    lf = b"<13>1 - - - - - - first"
    counted = [b"<14>1 - h a - IHE+RFC-3881 - <AuditMessage>\n  <x/>\n</AuditMessage> %d" % i for i in range(3)]
    splitter = Splitter()
    frames, problems = splitter.feed(lf + b"\n" + b"".join(octet(m) for m in counted))
    assert frames == [lf, *counted] and problems == [] and splitter.finish() == []


def test_an_lf_framed_line_over_the_maximum_is_refused_even_when_complete() -> None:
    splitter = Splitter(max_message=1000)
    frames, problems = splitter.feed(b"<14>1 - - - - - - " + b"z" * 5000 + b"\n<14>1 - - - - - - after\n")
    frames += splitter.flush()
    assert frames == [b"<14>1 - - - - - - after"]
    assert [p.problem for p in problems] == ["oversize"]
    splitter = Splitter(max_message=1000)  # and when it arrives in pieces, the first over the maximum
    frames, problems = [], []
    for piece in (b"<14>1 - - - - - - " + b"z" * 600, b"z" * 600, b"z\n<14>1 - - - - - - after\n"):
        got, found = splitter.feed(piece)
        frames += got
        problems += found
    frames += splitter.flush()
    assert frames == [b"<14>1 - - - - - - after"]
    assert [p.problem for p in problems] == ["oversize"]


def test_an_unframed_fhir_json_message_is_held_at_its_closing_brace() -> None:
    """A sender that frames none, sending FHIR AuditEvent JSON: its last message ends with the '}'
    closing the resource and nothing after it. It waited for the next message (or the sender's
    close, or frame_timeout) because only an XML end tag was taken for a message's end; a '}'
    closing an inner object is not its end."""
    body = b'{"resourceType":"AuditEvent","agent":[{"who":{"identifier":{"value":"u1"}}}]}'
    frame = b"<14>1 2026-12-03T11:00:00Z h app - IHE+FHIR - " + body
    splitter = Splitter()
    cut = frame.index(b"}") + 1  # the read ends after an inner object's '}'
    assert splitter.feed(frame[:cut]) == ([], [])
    assert splitter.flush() == []  # nothing came for a moment, but the value does not read yet
    assert splitter.feed(frame[cut:]) == ([], []) and splitter.held
    assert splitter.flush() == [frame] and splitter.finish() == []
    splitter = Splitter()  # a '{' in a structured data value does not make a complete message
    odd = b'<14>1 - h app - IHE+FHIR [x@1 a="{"] ' + body
    assert splitter.feed(odd) == ([], []) and splitter.flush() == []


def test_reads_ending_in_braces_do_not_parse_the_message_each_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile unframed sender ending each of its ~11,000 reads of a 1 MiB JSON message with
    '}': each read parsed all the message so far (24 s of the event loop for one message). The
    JSON is read only once nothing follows for a moment (`flush`)."""
    parsed: list[int] = []
    real = framing.json.JSONDecoder

    class Counting(real):  # type: ignore[misc, valid-type]
        def raw_decode(self, s: str, idx: int = 0) -> tuple[object, int]:
            parsed.append(len(s))
            return super().raw_decode(s, idx)

    monkeypatch.setattr(framing.json, "JSONDecoder", Counting)
    item = b',{"k":"' + b"v" * 80 + b'"}'
    splitter = Splitter()
    splitter.feed(b'<14>1 - h app - IHE+FHIR - {"resourceType":"AuditEvent","x":[{}')
    for _ in range(2000):
        assert splitter.feed(item) == ([], [])
    assert parsed == []
    assert splitter.flush() == [] and len(parsed) <= 1  # parsed once, if the braces balance
    assert splitter.feed(b"]}")[0] == [] and splitter.flush()[0].endswith(b"]}")


_JSON_TEXT = st.text(alphabet=st.sampled_from('ab{}[]":,\\ é'), max_size=12)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(_JSON_TEXT, min_size=1, max_size=5), cuts=st.lists(st.integers(min_value=1, max_value=90),
                                                                     min_size=1, max_size=30),
       quiet=st.lists(st.booleans(), min_size=1, max_size=30))
def test_unframed_fhir_json_messages_split_anywhere_come_out_whole(texts: list[str], cuts: list[int],
                                                                  quiet: list[bool]) -> None:
    """Messages of a sender that frames none, FHIR JSON whose strings hold braces, brackets and
    quotes, read in any pieces, with a quiet moment (`flush`) after any of them: each comes out
    once and whole, never cut at an inner '}' or a brace inside a string."""
    messages = [b"<14>1 - h app - IHE+FHIR - " + json.dumps(
        {"resourceType": "AuditEvent", "entity": [{"what": {"display": t}}], "n": i},
        ensure_ascii=False, separators=(",", ":")).encode() for i, t in enumerate(texts)]
    stream = b"".join(messages)
    splitter, frames, at, turn = Splitter(), [], 0, 0
    while at < len(stream):
        cut = cuts[turn % len(cuts)]
        got, problems = splitter.feed(stream[at:at + cut])
        assert problems == []
        frames += got
        if quiet[turn % len(quiet)]:
            frames += splitter.flush()
        at += cut
        turn += 1
    frames += splitter.flush(final=True)
    assert frames == messages and splitter.finish() == []
