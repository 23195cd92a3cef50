"""Round 9 of outside testing (issue 20: big-endian files come out valid; references follow the
keyed UIDs). A sequence written with VR UN (by a writer whose dictionary lacked it) holds its items
in Implicit VR Little Endian whatever the transfer syntax (PS3.5 6.2.2), which is how the engine
reads newer attributes and safe private sequences. In an Explicit VR Big Endian file pydicom read
such a sequence in big endian: every tag inside came out byte-swapped ((0008,1150) as (0800,5011))
and the whole, valid object was withheld as "the file is cut off inside (0800,5011)". Now it is
de-identified: its items are walked, the reference gets the keyed UID the referenced object gets,
and binary values inside keep their values in the big-endian output."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pydicom
from deid_helpers import KEY, engine, patient_object
from pydicom.uid import ExplicitVRBigEndian

from pacsguard.deid.files import deidentify_file
from pacsguard.deid.pseudonym import Pseudonyms

CT = "1.2.840.10008.5.1.4.1.1.2"
REFERENCED = "1.2.826.0.1.3680043.8.498.2222"


def _implicit_le(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _big_endian_file() -> bytes:
    item = (_implicit_le(0x00081150, CT.encode() + b"\0")  # Referenced SOP Class UID
            + _implicit_le(0x00081155, REFERENCED.encode())  # Referenced SOP Instance UID (even: 30)
            + _implicit_le(0x00100010, b"Quixote^Zebulon ")  # a name where none belongs
            + _implicit_le(0x0040A0B0, struct.pack("<HH", 1, 258)))  # Referenced Waveform Channels, US
    un_value = struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item
    ds = patient_object(CT, syntax=ExplicitVRBigEndian)
    ds.StudyDescription = "head"  # (0008,1030): the UN element goes after it, in tag order
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    # Referenced Image Sequence (0008,1140) as UN: Explicit VR Big Endian header, 32-bit length.
    header = struct.pack(">HH2sHI", 0x0008, 0x1140, b"UN", 0, len(un_value))
    at = data.index(struct.pack(">HH", 0x0010, 0x0010))  # before Patient's Name
    return data[:at] + header + un_value + data[at:]


def test_a_un_sequence_in_a_big_endian_file_is_read_as_implicit_little_endian(tmp_path: Path) -> None:
    (tmp_path / "in.dcm").write_bytes(_big_endian_file())
    result = deidentify_file(engine(), tmp_path / "in.dcm", tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    data = result.output.read_bytes()
    assert b"Quixote" not in data and REFERENCED.encode() not in data
    out = pydicom.dcmread(result.output)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    item = out.ReferencedImageSequence[0]
    assert item.ReferencedSOPInstanceUID == Pseudonyms(KEY.secret).uid(REFERENCED)
    assert item.ReferencedSOPClassUID == CT
    assert list(item.ReferencedWaveformChannels) == [1, 258]
    assert str(item.PatientName) == str(out.PatientName)  # the patient's pseudonym
