"""The scanner's reading of PS3.6's dictionary (round 5): the rules that go by an attribute's
dictionary VR imported pydicom for every `pacsguard scan` (~170 ms, half the start-up, and the
512 MB bench fell under 300 MB per CPU-second through the CLI). The table is read on its own now,
and must give what pydicom's own lookup gives."""

from __future__ import annotations

import subprocess
import sys

from pydicom._dicom_dict import DicomDictionary, RepeatersDictionary
from pydicom.datadict import dictionary_VR

from pacsguard.scan.part10 import dictionary_vr


def test_the_dictionary_vr_is_pydicoms() -> None:
    tags = [*DicomDictionary, *(int(mask.replace("x", "2"), 16) for mask in RepeatersDictionary)]
    wrong = [hex(t) for t in tags if dictionary_vr(t) != dictionary_VR(t).split(" ")[0]]
    assert not wrong, wrong[:10]
    assert dictionary_vr(0x00091010) == "UN"  # private: unknown


def test_scanning_does_not_import_pydicom() -> None:
    code = ("import sys; from pacsguard.scan.part10 import dictionary_tags, dictionary_vr; "
            "dictionary_tags(frozenset({'UI'})); dictionary_vr(0x00100010); print('pydicom' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stdout + done.stderr
