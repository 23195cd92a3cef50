"""Round 10 (C): Specific Character Set "ISO_IR 203" (ISO 8859-15, Latin-9; PS3.3 Table C.12-2
since 2021). pydicom does not know it and reads its text as Latin-1: the euro sign (0xA4) as
"¤", Š (0xA6) as "¦", Ž (0xB4) as "´". Patient Škoda^Žiga was compared as "¦koda^´iga", so
"SKODA ZIGA" in a description stayed there under clean-descriptors. Now such data sets are
decoded and encoded with Python's iso8859_15 codec in the project's charset handling, also
with code extensions (ISO 2022 IR 203, ESC 02/13 06/02), and pydicom's tables are left alone."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom.charset
import pytest
from deid_helpers import CT, engine, patient_object
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from pacsguard.deid import charset
from pacsguard.deid.files import deidentify_file, read_whole

NAME = b"\xa6koda^\xb4iga"  # Škoda^Žiga in ISO 8859-15


def _object(path: Path, terms: str | list[str], name: bytes, description: bytes) -> Path:
    """A CT declaring ``terms`` whose Patient's Name and Study Description are these bytes."""
    ds = patient_object(CT, name="N" * len(name))
    ds.SpecificCharacterSet = terms
    ds.StudyDescription = "D" * len(description)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue().replace(b"N" * len(name), name, 1).replace(b"D" * len(description), description, 1)
    path.write_bytes(data)
    return path


def _raw(path: Path, tag: int) -> bytes:
    elem = pydicom.dcmread(path).get_item(tag)
    return bytes(elem.value)


def test_a_latin9_name_is_found_in_free_text_and_the_euro_kept(tmp_path: Path) -> None:
    assert NAME.decode("iso8859_15") == "Škoda^Žiga" and b"\xa4".decode("iso8859_15") == "€"  # the oracle
    source = _object(tmp_path / "in.dcm", "ISO_IR 203", NAME, b"CT 40 \xa4, SKODA Ziga")
    read = read_whole(source)
    assert str(read.PatientName) == "Škoda^Žiga" and read.StudyDescription == "CT 40 €, SKODA Ziga"
    result = deidentify_file(engine("clean-descriptors"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    assert _raw(result.output, 0x00081030) == b"CT 40 \xa4, X X"  # the euro sign as 8859-15 writes it
    assert pydicom.dcmread(result.output).SpecificCharacterSet == "ISO_IR 203"
    out = read_whole(result.output)
    assert out.StudyDescription == "CT 40 €, X X"
    assert b"koda" not in result.output.read_bytes()
    assert "ISO_IR 203" not in pydicom.charset.python_encoding  # pydicom's tables are not touched


def test_latin9_text_kept_goes_out_byte_for_byte(tmp_path: Path) -> None:
    text = "Kontrolle 50 €, Šumava, Žatec, Œuvre".encode("iso8859_15")
    source = _object(tmp_path / "in.dcm", "ISO_IR 203", NAME, text)
    result = deidentify_file(engine("clean-descriptors"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    assert _raw(result.output, 0x00081030).rstrip(b" ") == text
    assert read_whole(result.output).StudyDescription == "Kontrolle 50 €, Šumava, Žatec, Œuvre"


def test_latin9_with_code_extensions(tmp_path: Path) -> None:
    # value 1 empty: ASCII first; ESC - b designates ISO 8859-15 to G1 up to each delimiter (PS3.5 6.1.2.5.3)
    name = b"\x1b-b\xa6koda^\x1b-b\xb4iga"
    description = b"CT \x1b-b\xa4 40, skoda"
    source = _object(tmp_path / "in.dcm", ["", "ISO 2022 IR 203"], name, description)
    assert str(read_whole(source).PatientName) == "Škoda^Žiga"
    result = deidentify_file(engine("clean-descriptors"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    written = _raw(result.output, 0x00081030)
    assert written.rstrip(b" ") == b"\x1b-bCT \xa4 40, X"
    assert read_whole(result.output).StudyDescription == "CT € 40, X"


def test_text_the_declared_sets_cannot_hold_is_refused_by_name() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 203"
    ds.add(DataElement(0x00081030, "LO", "CT 日本"))
    with pytest.raises(ValueError, match=r"\(0008,1030\) Study Description holds text that cannot be written"):
        charset.encode_own_sets(ds)


def test_an_item_inherits_latin9(tmp_path: Path) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 203"
    item = Dataset()
    item.add(DataElement(0x00080080, "LO", "Klinik Žatec €"))
    ds.ReferencedStudySequence = [item]
    charset.encode_own_sets(ds)
    assert ds.ReferencedStudySequence[0].get_item(0x00080080).value == "Klinik Žatec €".encode("iso8859_15")
    charset.decode_own_sets(ds)
    assert ds.ReferencedStudySequence[0].InstitutionName == "Klinik Žatec €"
