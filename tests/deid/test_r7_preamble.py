"""Outside round 7 (issue 20): the 128-byte File Preamble (PS3.10 7.1) of the input was written
to the output unchanged. It is free for an application's use (a DICOM-TIFF file's TIFF header, a
device's own notes) and may name the patient; pacsguard now writes 128 bytes of 00H, as PS3.10
asks when the preamble is not used."""

from __future__ import annotations

from pathlib import Path

from deid_helpers import engine, pydicom_files

from pacsguard.deid.files import deidentify_file, read_whole


def test_the_preamble_is_written_as_zeros(tmp_path: Path) -> None:
    ds = read_whole(next(p for p in pydicom_files() if p.name == "CT_small.dcm"))
    ds.preamble = b"II*\0 Quixote^Zebulon PID77341".ljust(128, b"\0")
    source = tmp_path / "in.dcm"
    ds.save_as(source, enforce_file_format=True)
    assert b"Quixote" in source.read_bytes()[:128]
    for options in ((), ("retain-uids", "retain-patient-characteristics")):
        out = tmp_path / f"out{len(options)}.dcm"
        result = deidentify_file(engine(*options), source, out)
        assert result.output is not None, result.withheld
        data = out.read_bytes()
        assert data[:132] == bytes(128) + b"DICM"
        assert b"Quixote" not in data and b"PID77341" not in data
