"""The identifier walk and a repeated identifying element (PS3.5 7.1: a tag occurs once in a data
set): the first value is kept and the walk ends there with the anomaly ``repeated-element``, in any
encoding and wherever the data set is cut (dcmtk keeps the first copy of (0008,0016) and ignores the
second; the walk used to keep the last, so an MR object under a CT class passed a CT-only route)."""

from __future__ import annotations

import pytest
from test_peek_streaming import CT, ENCODING_IDS, ENCODINGS, MR, SYNTAX, cut, el, fields, streamed, text, uid

from pacsguard.dicom.dataset import peek_identifiers


def _repeated(implicit: bool, little: bool, tag: int, vr: bytes, first: bytes, second: bytes) -> bytes:
    e = lambda t, v, value: el(t, v, value, implicit, little)  # noqa: E731
    head = e(0x00080005, b"CS", text("ISO_IR 100"))
    if tag != 0x00080016:
        head += e(0x00080016, b"UI", uid(CT))
    return (head + e(tag, vr, first) + e(tag, vr, second) + e(0x00100020, b"LO", text("PID-1"))
            + e(0x0020000E, b"UI", uid("1.2.3.8")) + e(0x00280010, b"US", b"\0\2"))


@pytest.mark.parametrize(("implicit", "little"), ENCODINGS, ids=ENCODING_IDS)
@pytest.mark.parametrize("skim", [True, False], ids=["fast-path", "general-loop"])
def test_a_repeated_sop_class_uid_keeps_the_first_and_ends_the_walk(implicit: bool, little: bool, skim: bool) -> None:
    data = _repeated(implicit, little, 0x00080016, b"UI", uid(MR), uid(CT))
    syntax = SYNTAX[(implicit, little)]
    whole = peek_identifiers(data, syntax, final=True)
    assert (whole.sop_class_uid, whole.anomaly, whole.complete, whole.patient_id) == (MR, "repeated-element",
                                                                                      False, None)
    if not skim:
        from pacsguard.dicom.dataset import _walk, transfer_syntax_encoding

        general = type(whole)()
        _walk(data, transfer_syntax_encoding(syntax)[0], little, True, general, skim=False)
        assert fields(general) == fields(whole)
    for point in range(1, len(data)):
        assert fields(streamed(cut(data, [point]), syntax)) == fields(whole), point


@pytest.mark.parametrize(("tag", "vr", "first", "second", "attr", "kept"), [
    (0x00100010, b"PN", text("FIRST^ONE"), text("SECOND^ONE"), "patient_name", "FIRST^ONE"),
    (0x00080018, b"UI", uid("1.2.3"), uid("1.2.4"), "sop_instance_uid", "1.2.3"),
    (0x00080018, b"UI", b"", uid("1.2.4"), "sop_instance_uid", ""),
], ids=["patient-name", "sop-instance", "empty-first"])
def test_any_repeated_wanted_element_is_an_anomaly(tag: int, vr: bytes, first: bytes, second: bytes, attr: str,
                                                   kept: str) -> None:
    data = _repeated(False, True, tag, vr, first, second)
    peek = peek_identifiers(data, SYNTAX[(False, True)], final=True)
    assert (getattr(peek, attr), peek.anomaly, peek.sop_class_uid) == (kept, "repeated-element", CT)


def test_a_wanted_tag_repeated_inside_a_sequence_is_no_anomaly() -> None:
    """Items are data sets of their own (PS3.5 7.5): (0008,0016) in a referenced item and at the top
    level is no repetition."""
    e = lambda t, v, value, **kw: el(t, v, value, False, True, **kw)  # noqa: E731
    from test_peek_streaming import item, seq_end

    ref = e(0x00081140, b"SQ", item(e(0x00080016, b"UI", uid(MR)), True, undefined=True) + seq_end(True),
            undefined=True)
    data = e(0x00080016, b"UI", uid(CT)) + ref + e(0x0020000E, b"UI", uid("1.2.3.8")) + e(0x00280010, b"US", b"\2\0")
    peek = peek_identifiers(data, SYNTAX[(False, True)], final=True)
    assert (peek.sop_class_uid, peek.anomaly, peek.complete) == (CT, None, True)
