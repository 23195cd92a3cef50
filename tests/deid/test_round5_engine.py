"""Round 5 of outside testing (issue 20): the engine's rules for attributes Table E.1-1 does not
list, the file meta, malformed group 0002, safe private sequences read without their VR, Clean
Graphics, Clean Descriptors on short and CJK names, and IOD conformance of X/Z and Type 2."""

from __future__ import annotations

import copy
from pathlib import Path

from deid_helpers import KEY, engine, pydicom_files
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacsguard.deid.build import make_engine
from pacsguard.deid.config import DeidConfig, SafePrivateEntry
from pacsguard.deid.files import deidentify_file, read_whole
from pacsguard.deid.profile import Option
from pacsguard.deid.values import clean_text, identifiers_of

PHI = ("Quixote", "PID77341", "OTHER999")


def _ct() -> Dataset:
    ds = read_whole(next(p for p in pydicom_files() if p.name == "CT_small.dcm"))
    ds.PatientName = "Quixote^Zebulon"
    ds.PatientID = "PID77341"
    return ds


def _ref(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def test_uris_lose_the_original_uids_hosts_and_paths() -> None:
    ds = _ct()
    study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
    base = "https://pacs.stmarys.example/dicomweb"
    ds.RetrieveURL = f"{base}/studies/{study}"
    ref = _ref(str(ds.SOPClassUID), sop)
    ref.RetrieveURL = f"{base}/studies/{study}/instances/{sop}"
    ref.add_new(0x0040E010, "UR", f"{base}/studies/{study}")  # Retrieve URI
    ds.ReferencedImageSequence = [ref]
    ds.add_new(0x00080409, "UR", "file:///archive/Quixote_Zebulon_PID77341/IM1.dcm")  # File Access URI
    code = Dataset()
    code.CodingSchemeDesignator = "SCT"
    code.add_new(0x0008010E, "UR", "http://snomed.info/sct")  # Coding Scheme URL
    ds.CodingSchemeIdentificationSequence = [code]
    engine().deidentify(ds)
    text = str(list(ds.iterall()))
    assert study not in text and sop not in text and "stmarys" not in text and "Quixote" not in text
    assert ds.CodingSchemeIdentificationSequence[0][0x0008010E].value == "http://snomed.info/sct"


def test_group_0002_outside_the_file_meta_is_removed() -> None:
    ds = _ct()
    item = _ref(str(ds.SOPClassUID), "1.2.826.0.77341.5")
    item.add_new(0x00020016, "AE", "QUIXOTE_WS")
    item.add_new(0x00020003, "UI", "1.2.826.0.77341.5")
    ds.ReferencedImageSequence = [item]
    engine().deidentify(ds)
    out = ds.ReferencedImageSequence[0]
    assert not [e for e in out if e.tag.group == 0x0002]
    assert out.ReferencedSOPInstanceUID != "1.2.826.0.77341.5"


def test_file_meta_presentation_addresses_are_removed() -> None:
    ds = _ct()
    ds.file_meta.SourceApplicationEntityTitle = "CT_ROOM3_AE"
    for tag, host in ((0x00020026, "ct-room3"), (0x00020027, "10.20.30.40"), (0x00020028, "pacs")):
        ds.file_meta.add_new(tag, "UR", f"dicom://{host}.stmarys.example:104")
    engine().deidentify(ds)
    assert not {0x00020016, 0x00020026, 0x00020027, 0x00020028} & {int(t) for t in ds.file_meta.keys()}


def test_a_safe_private_sequence_is_cleaned_in_every_transfer_syntax(tmp_path: Path) -> None:
    config = DeidConfig(options=[Option.RETAIN_SAFE_PRIVATE],
                        safe_private=[SafePrivateEntry(creator="ACME 1", group=0x0029, element=0x10),
                                      SafePrivateEntry(creator="ACME 1", group=0x0029, element=0x11)])
    deid = make_engine(KEY, config.options, config)
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds = _ct()
        block = ds.private_block(0x0029, "ACME 1", create=True)
        block.add_new(0x10, "LO", "safe value")
        inner = Dataset()
        inner.PatientName = "Quixote^Zebulon"
        inner.PatientID = "PID77341"
        inner.OtherPatientIDs = "OTHER999"
        block.add_new(0x11, "SQ", Sequence([inner]))
        ds.file_meta.TransferSyntaxUID = syntax
        source, out = tmp_path / f"in-{syntax.name}.dcm", tmp_path / f"out-{syntax.name}.dcm"
        ds.save_as(source, enforce_file_format=True)
        result = deidentify_file(deid, source, out)
        assert result.output == out, result.withheld
        data = out.read_bytes()
        assert [p for p in PHI if p.encode() in data] == [], syntax.name
        assert b"safe value" in data
        written = dcmread(out)
        assert len(written[0x00291111].value) == 1  # the sequence is kept, its item cleaned


def test_alternative_calendar_dates_follow_the_date_rules() -> None:
    ds = _ct()
    ds.add_new(0x00100033, "LO", "13830513")  # Patient's Birth Date in Alternative Calendar
    ds.add_new(0x00100034, "LO", "14410720")  # Patient's Death Date in Alternative Calendar
    ds.add_new(0x00100035, "CS", "I")  # Patient's Alternative Calendar
    for options, kept in (((), False), (("retain-longitudinal-modified-dates",), False),
                          (("retain-longitudinal-full-dates",), True)):
        out = copy.deepcopy(ds)
        engine(*options).deidentify(out)
        assert (0x00100033 in out and 0x00100034 in out) is kept, options
        assert 0x00100035 in out  # the calendar's name is no date


def test_clean_descriptors_scrubs_short_and_cjk_name_parts() -> None:
    known = identifiers_of("PID-1", "Yamada^Tarou=山田^太郎=やまだ^たろう")
    assert clean_text("山田 太郎 胸部CT", known) == "XX XX 胸部CT"
    assert clean_text("山田太郎胸部CT", known) == "XXXX胸部CT"
    latin = identifiers_of("P1", "Li^Wu")
    assert clean_text("CT for Li Wu, clinical follow-up", latin) == "CT for X X, clinical follow-up"
    ds = _ct()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "王^小明"
    ds.StudyDescription = "CT 王 小明 follow-up"
    engine("clean-descriptors").deidentify(ds)
    assert "王" not in ds.StudyDescription and "小明" not in ds.StudyDescription
    assert "follow-up" in ds.StudyDescription


def test_clean_graphics_removes_overlay_and_curve_groups_whole() -> None:
    ds = _ct()
    ds.add_new(0x60000010, "US", 128)
    ds.add_new(0x60000011, "US", 128)
    ds.add_new(0x60001500, "LO", "Reviewed by Dr Holmes")  # Overlay Label
    ds.add_new(0x60003000, "OW", b"\x55" * (128 * 128 // 8))
    ds.add_new(0x50000005, "US", 1)
    ds.add_new(0x50002500, "LO", "Holmes curve")  # Curve Label
    ds.add_new(0x50003000, "OW", b"\1\0\2\0")
    engine("clean-graphics").deidentify(ds)
    assert not [e for e in ds if e.tag.group in (0x5000, 0x6000)]


def test_class_uids_are_kept_even_when_no_dictionary_registers_them() -> None:
    ds = _ct()
    private_class = "1.3.12.2.1107.5.9.1"  # Siemens CSA Non-Image
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = private_class
    ds.ReferencedImageSequence = [_ref(private_class, "1.2.3.4.5")]
    code = Dataset()
    code.CodingSchemeDesignator = "SCT"
    code.CodingSchemeUID = "2.16.840.1.113883.6.96"
    ds.CodingSchemeIdentificationSequence = [code]
    engine().deidentify(ds)
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == private_class
    assert ds.ReferencedImageSequence[0].ReferencedSOPClassUID == private_class
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID != "1.2.3.4.5"
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeUID == "2.16.840.1.113883.6.96"


def test_document_title_stays_present_and_document_length_stays_true() -> None:
    ds = _ct()
    del ds.PixelData
    ds.DocumentTitle = "Discharge summary of Quixote"
    ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n" * 4
    ds.EncapsulatedDocumentLength = len(ds.EncapsulatedDocument)
    engine().deidentify(ds)
    assert "DocumentTitle" in ds and "Quixote" not in str(ds.DocumentTitle)
    assert ds.EncapsulatedDocumentLength == len(ds.EncapsulatedDocument)


def test_x_z_sequences_are_removed_where_type_3_and_emptied_where_type_2() -> None:
    ds = _ct()
    ds.ReferencedStudySequence = [_ref("1.2.840.10008.3.1.2.3.1", "1.2.3.4.5.6")]  # Type 3
    context = Dataset()
    context.ValueType = "TEXT"
    ds.AcquisitionContextSequence = [context]  # Type 2 in the Acquisition Context Module
    engine().deidentify(ds)
    assert "ReferencedStudySequence" not in ds
    assert "AcquisitionContextSequence" in ds and len(ds.AcquisitionContextSequence) == 0
