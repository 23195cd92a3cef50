"""Round 9 of outside testing (issue 20: no PHI left, in every option). An object de-identified
once before (by a modality's research export, another site's anonymizer) may carry the original
values in Encrypted Attributes Sequence (0400,0500, PS3.3 C.12.1.1.4.1), as PS3.15 E.1.1 lets a
de-identifier do for the recipients it chose. Table E.1-1 (2026c) does not list it, so pacsguard
kept it as it was, Encrypted Content and all: whoever holds one of those recipients' keys could
read the identity this run removes, and nothing checks that the content is encrypted at all (here
it is plain text). It is now removed under every option, as the table removes the plain Original
Attributes Sequence (0400,0561)."""

from __future__ import annotations

from pathlib import Path

import pytest
from deid_helpers import engine, patient_object
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from pacsguard.deid.engine import Report
from pacsguard.deid.files import deidentify_file
from pacsguard.deid.profile import Option

CT = "1.2.840.10008.5.1.4.1.1.2"
ORIGINALS = b"(0010,0010) Quixote^Zebulon (0010,0020) PID77341"


def _ct(path: Path) -> None:
    ds = patient_object(CT, name="ANON^1", patient_id="ANON1")
    envelope = Dataset()
    envelope.EncryptedContentTransferSyntaxUID = ExplicitVRLittleEndian
    envelope.add(DataElement(0x04000520, "OB", ORIGINALS))  # Encrypted Content
    ds.EncryptedAttributesSequence = Sequence([envelope])
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("options", [(), tuple(o.value for o in Option
                                                if o is not Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES
                                                and o is not Option.RETAIN_LONGITUDINAL_MODIFIED_DATES)])
def test_encrypted_originals_do_not_leave(tmp_path: Path, options: tuple[str, ...]) -> None:
    _ct(tmp_path / "in.dcm")
    result = deidentify_file(engine(*options), tmp_path / "in.dcm", tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    data = result.output.read_bytes()
    assert b"Quixote" not in data and b"PID77341" not in data
    assert b"\x00\x04\x00\x05" not in data  # the (0400,0500) tag, little endian


def test_explain_names_the_rule() -> None:
    ds = Dataset()
    ds.EncryptedAttributesSequence = Sequence([Dataset()])
    report = Report(detailed=True)
    engine().apply_attributes(ds, report)
    change = next(c for c in report.changes if c.path == "(0400,0500)")
    assert change.code == "X" and change.source == "not listed: original attributes, encrypted for other recipients"
