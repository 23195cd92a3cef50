"""Is it DICOM?  Plausibility tests on the first bytes of a stream, for a sensor that joins a
connection late or sees an unlisted port (PS3.8 9.3).  The A-ASSOCIATE-RQ test itself is the
decoder's (:func:`pacsguard.dicom.looks_like_associate_rq`)."""

from __future__ import annotations

from typing import Final

from pacsguard.dicom import looks_like_associate_rq
from pacsguard.dicom import pdu as P
from pacsguard.dicom.stream import DEFAULT_MAX_PDU_LENGTH

__all__ = ["ASSOCIATE_HEAD_BYTES", "looks_like_acceptor_pdu", "plausible_pdata_header"]

#: Bytes of an A-ASSOCIATE-RQ/AC up to the end of the Called/Calling AE Titles (PS3.8 9.3.2).
ASSOCIATE_HEAD_BYTES: Final = 42


def plausible_pdata_header(data: bytes | bytearray | memoryview, max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH) -> bool:
    """Does ``data`` start with a P-DATA-TF PDU header followed by a plausible first PDV
    (PS3.8 9.3.5 / 9.3.5.1)?  Used only to recognise mid-stream DICOM on an unlisted port."""
    if len(data) < 12 or data[0] != P.PDU_P_DATA_TF or data[1] != 0:
        return False
    length = int.from_bytes(data[2:6], "big")
    pdv = int.from_bytes(data[6:10], "big")
    return 6 <= length <= max_pdu_length and 2 <= pdv <= length - 4 and data[10] & 1 == 1 and data[11] & 0xFC == 0


def looks_like_acceptor_pdu(data: bytes | bytearray | memoryview, max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH) -> bool:
    """Does ``data`` start with a PDU an association acceptor sends: A-ASSOCIATE-AC (the RQ
    test, PS3.8 9.3.3 has the same layout), -RJ (9.3.4), A-ABORT (9.3.8) or a plausible
    P-DATA-TF?  Used when a server's bytes come first, to tell DICOM whose request was not
    captured from a server that speaks first (which a DICOM acceptor never does)."""
    if len(data) < 10 or data[1] != 0:
        return False
    t = data[0]
    if t == P.PDU_ASSOCIATE_AC:
        return looks_like_associate_rq(bytes([P.PDU_ASSOCIATE_RQ]) + bytes(data[1:ASSOCIATE_HEAD_BYTES]))
    fixed = int.from_bytes(data[2:6], "big") == 4
    if t == P.PDU_ASSOCIATE_RJ:  # Result 1-2, Source 1-3 (Table 9-21)
        return fixed and data[7] in (1, 2) and data[8] in (1, 2, 3)
    if t == P.PDU_ABORT:  # Source 0 or 2, Reason 0-6 (Table 9-26)
        return fixed and data[8] in (0, 2) and data[9] <= 6
    return plausible_pdata_header(data, max_pdu_length)
