"""A file cut off inside an element header (an outside tester, round 5): pydicom reads it as if it
ended there, and `pacsguard deid` wrote a CT without its Pixel Data, "written", exit 0. Issue 20:
a file that fails to parse after some offset is withheld, never half de-identified."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from pacsguard.deid.engine import Withheld
from pacsguard.deid.files import read_whole

CT = Path(get_testdata_file("CT_small.dcm")).read_bytes()
PIXELS = CT.rfind(b"\xe0\x7f\x10\x00OW")
SR = Path(get_testdata_file("test-SR.dcm")).read_bytes()


def _after_verifying_observer_sequence() -> int:
    """Where the next element's header begins after test-SR.dcm's Verifying Observer Sequence
    (explicit VR, defined length): a re-probe cut 2-7 bytes into it, and the SR was written
    without its Content Sequence (the end was looked for after the sequence was decoded)."""
    start = SR.find(b"\x40\x00\x73\xa0SQ")
    assert start > 0
    return start + 12 + int.from_bytes(SR[start + 8:start + 12], "little")


#: Each cut file and the reason it must be withheld for.
CUTS = {**{f"ct-{part}": (CT[:end], "cut off|not readable")
           for part, end in (("tag", PIXELS + 2), ("vr", PIXELS + 6), ("length", PIXELS + 13), ("value", -1))},
        **{f"sr-after-sequence+{n}": (SR[:_after_verifying_observer_sequence() + n], "cut off") for n in (2, 4, 7)}}


@pytest.mark.parametrize("name", sorted(CUTS))
def test_a_file_cut_inside_its_last_element_is_withheld(tmp_path: Path, name: str) -> None:
    data, reason = CUTS[name]
    path = tmp_path / "cut.dcm"
    path.write_bytes(data)
    with pytest.raises(Withheld, match=reason):
        read_whole(path)


@pytest.mark.parametrize(("data", "attribute"), [(CT, "PixelData"), (SR, "ContentSequence")], ids=["ct", "sr"])
def test_a_whole_file_is_read(tmp_path: Path, data: bytes, attribute: str) -> None:
    path = tmp_path / "whole.dcm"
    path.write_bytes(data)
    assert attribute in read_whole(path)
