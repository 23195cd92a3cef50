"""Round 9 of outside testing (issue 20: every refused file named with why). A file whose
elements are not in ascending tag order (PS3.5 7.1; a writer that appends an element after
saving) is withheld, and was, but as "the file is cut off: 28 bytes after its last whole
element": the file was whole, and an administrator looking for a truncated transfer found none.
Now the reason names the two elements out of order. A file that is really cut off still says so."""

from __future__ import annotations

import io
import struct
from pathlib import Path

from deid_helpers import engine, patient_object

from pacsguard.deid.files import deidentify_file

CT = "1.2.840.10008.5.1.4.1.1.2"


def _bytes() -> bytes:
    ds = patient_object(CT)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_elements_out_of_order_are_named_not_called_a_cut(tmp_path: Path) -> None:
    institution = b"St Zebulon Hospital "
    appended = struct.pack("<HH2sH", 0x0008, 0x0080, b"LO", len(institution)) + institution
    (tmp_path / "in.dcm").write_bytes(_bytes() + appended)  # Institution Name after Series Instance UID
    result = deidentify_file(engine(), tmp_path / "in.dcm", tmp_path / "out.dcm")
    assert result.output is None and not (tmp_path / "out.dcm").exists()
    assert result.withheld == ("its elements are not in ascending tag order (PS3.5 7.1): (0008,0080) is "
                               "stored after (0020,000E)"), result.withheld


def test_a_file_cut_after_a_whole_element_is_still_called_cut(tmp_path: Path) -> None:
    (tmp_path / "in.dcm").write_bytes(_bytes() + b"\x08\x00\x80\x00LO")  # 6 bytes of a header
    result = deidentify_file(engine(), tmp_path / "in.dcm", tmp_path / "out.dcm")
    assert result.output is None
    assert result.withheld.startswith("the file is cut off"), result.withheld
