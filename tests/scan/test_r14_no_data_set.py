"""structure.no-data-set: a Part-10 file that ends after its header (the preamble and "DICM", or
the file meta information) holds no object. An outside probe found both gave no finding at all,
while the same file cut anywhere later is noted (structure.truncated)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

from pydicom.data import get_testdata_file
from pydicom.filereader import _read_file_meta_info, read_preamble

from pacsguard.scan.scanner import Scanner

RULE = "structure.no-data-set"
CT = Path(str(get_testdata_file("CT_small.dcm")))


def _rules(scanner: Scanner, path: Path) -> list[str]:
    return [f.rule for f in scanner.scan_file(path).findings]


def test_a_file_of_only_its_header_is_noted(tmp_path: Path, scanner: Scanner) -> None:
    data = CT.read_bytes()
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    cuts = {"preamble": data[:132], "meta": data[:fp.tell()]}
    for name, cut in cuts.items():
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(cut)
        findings = scanner.scan_file(path).findings
        found = [f for f in findings if f.rule == RULE]
        assert len(found) == 1 and found[0].level.name == "LOW", (name, [f.rule for f in findings])
        assert found[0].offset == len(cut)
        assert ("file meta information" if name == "meta" else "DICM prefix") in found[0].explanation
    # dcmtk agrees there is no data set to dump in the meta-only file.
    dumped = subprocess.run(["/usr/bin/dcmdump", "-M", str(tmp_path / "meta.dcm")], capture_output=True, text=True,
                            timeout=60)
    assert "(0010,0010)" not in dumped.stdout and "(0002,0010)" in dumped.stdout


def test_whole_files_and_cuts_inside_the_data_set_are_not(tmp_path: Path, scanner: Scanner) -> None:
    assert RULE not in _rules(scanner, CT)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(CT.read_bytes()[:1000])
    rules = _rules(scanner, cut)
    assert RULE not in rules and "structure.truncated" in rules
