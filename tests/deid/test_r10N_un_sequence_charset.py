"""Round 10 (N): text in a sequence encoded as UN (PS3.5 6.2.2: a private sequence, or one newer
than pydicom's dictionary in an Explicit VR file) is parsed by the engine only when the
sequence is kept, after the object's text was checked and decoded (charset.py). pydicom decoded
it with the encodings it knows: under ISO_IR 203 (Latin-9) Š and Ž as Latin-1's ¦ and ´, so
"Škoda" in an item was compared misread and the object, unwritable in ISO 8859-15, was withheld
as a whole; under ISO_IR 192 bytes that are no UTF-8 were read with replacement characters, so
"Müller" written in Latin-1 inside such an item went out as "M\ufffdller". Those items are now
checked and read with the project's own handling, in the character set in force where the
sequence stands."""

from __future__ import annotations

from pathlib import Path

import pydicom
from deid_helpers import KEY, engine
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from test_r7_un_newer import SEX_PARAMETERS_COMMENT, SEX_PARAMETERS_SEQUENCE, _file, _implicit_items

from pacsguard.deid.build import make_engine
from pacsguard.deid.config import DeidConfig, SafePrivateEntry
from pacsguard.deid.files import deidentify_file, read_whole
from pacsguard.deid.profile import Option

NAME = "Škoda^Žiga"


def _newer_sequence(tmp: Path, terms: str, name: bytes, comment: bytes) -> Path:
    """A CT under ``terms`` whose Patient's Name is ``name`` and whose Sex Parameters for
    Clinical Use Category Sequence (newer than pydicom 3.0.2's dictionary) is written as UN,
    its item's Sex Parameters for Clinical Use Category Comment (UT) being ``comment``."""
    item = Dataset()
    item.add_new(SEX_PARAMETERS_COMMENT, "UT", "C" * len(comment))
    value = _implicit_items(item).replace(b"C" * len(comment), comment)
    source = _file(tmp / "un.dcm", SEX_PARAMETERS_SEQUENCE, value, syntax=ExplicitVRLittleEndian,
                   undefined=False, patient=False)
    ds = pydicom.dcmread(source)
    ds.SpecificCharacterSet = terms
    ds.PatientName, ds.PatientID = "N" * len(name), "PID77341"
    ds.save_as(tmp / "in.dcm")
    path = tmp / "in.dcm"
    path.write_bytes(path.read_bytes().replace(b"N" * len(name), name, 1))
    return path


def _private_sequence(tmp: Path, name: bytes, description: bytes) -> Path:
    """An Implicit VR CT under ISO_IR 203 whose private (0029,xx11) of creator "ACME 1" is a
    sequence of defined length, read as UN: one item with Patient's Name and Study Description."""
    item = Dataset()
    item.PatientName, item.StudyDescription = "N" * len(name), "D" * len(description)
    value = _implicit_items(item).replace(b"N" * len(name), name).replace(b"D" * len(description), description)
    ds = pydicom.dcmread(_file(tmp / "base.dcm", 0x00080060, b"CT", syntax=ExplicitVRLittleEndian,
                               undefined=False, patient=False))
    ds.SpecificCharacterSet = "ISO_IR 203"
    ds.PatientName, ds.PatientID = "N" * len(name), "PID77341"
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.private_block(0x0029, "ACME 1", create=True).add_new(0x11, "UN", value)
    path = tmp / "private.dcm"
    ds.save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes().replace(b"N" * len(name), name))
    return path


def test_a_latin9_name_in_a_newer_sequence_encoded_as_un_is_cleaned(tmp_path: Path) -> None:
    name = NAME.encode("iso8859_15")
    comment = "Škoda Žiga, Šumava, 40 €".encode("iso8859_15")
    source = _newer_sequence(tmp_path, "ISO_IR 203", name, comment)
    assert read_whole(source)[SEX_PARAMETERS_SEQUENCE].VR == "UN"  # pydicom 3.0.2 does not know it
    result = deidentify_file(engine("retain-patient-characteristics"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    data = result.output.read_bytes()
    assert b"koda" not in data and b"iga" not in data
    assert "X X, Šumava, 40 €".encode("iso8859_15") in data  # kept text as ISO 8859-15 writes it
    out = read_whole(result.output)
    assert out[SEX_PARAMETERS_SEQUENCE].value[0][SEX_PARAMETERS_COMMENT].value == "X X, Šumava, 40 €"


def test_a_latin9_name_in_a_private_sequence_read_as_un_is_cleaned(tmp_path: Path) -> None:
    config = DeidConfig(options=[Option.RETAIN_SAFE_PRIVATE, Option.CLEAN_DESCRIPTORS],
                        safe_private=[SafePrivateEntry(creator="ACME 1", group=0x0029, element=0x11)])
    deid = make_engine(KEY, config.options, config)
    description = "Kontrolle Žatec, Škoda Žiga".encode("iso8859_15")
    source = _private_sequence(tmp_path, NAME.encode("iso8859_15"), description)
    assert read_whole(source)[0x00291011].VR == "UN"
    result = deidentify_file(deid, source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    data = result.output.read_bytes()
    assert b"koda" not in data and b"iga" not in data
    item = read_whole(result.output)[0x00291011].value[0]
    assert item.StudyDescription == "Kontrolle Žatec, X X"
    assert "Škoda" not in str(item.PatientName)


def test_bytes_invalid_in_the_declared_set_inside_a_un_sequence_are_withheld(tmp_path: Path) -> None:
    # The name in UTF-8 as declared; inside the sequence the sender wrote Latin-1 (0xFC for ü)
    source = _newer_sequence(tmp_path, "ISO_IR 192", "Müller^Hans".encode(), b"M\xfcller Hans asked, 2024 ")
    result = deidentify_file(engine("retain-patient-characteristics"), source, tmp_path / "out.dcm")
    assert result.output is None
    assert "(0010,0043)" in result.withheld and "(0010,0042)" in result.withheld, result.withheld
    assert "ISO_IR 192" in result.withheld and "Traceback" not in result.withheld
