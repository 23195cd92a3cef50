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


@pytest.mark.parametrize("cut", [PIXELS + 2, PIXELS + 6, PIXELS + 13, len(CT) - 1], ids=["tag", "vr", "length",
                                                                                          "value"])
def test_a_file_cut_inside_its_last_element_is_withheld(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.dcm"
    path.write_bytes(CT[:cut])
    with pytest.raises(Withheld, match="cut off|not readable"):
        read_whole(path)


def test_a_whole_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "ct.dcm"
    path.write_bytes(CT)
    assert "PixelData" in read_whole(path)
