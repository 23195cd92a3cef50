"""The engine's own promises: keyed, consistent pseudonyms (same key, same UIDs; another key,
others), dates shifted per patient keeping intervals, the E.1.1/E.3 method attributes, private
attributes and overlays, and bad input withheld whole."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from annex_e_oracle import NAME, PATIENT_ID
from deid_helpers import KEY, OTHER_KEY, engine, pydicom_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsguard.deid.build import make_engine
from pacsguard.deid.config import DeidConfig, SafePrivateEntry
from pacsguard.deid.engine import Settings, Withheld
from pacsguard.deid.files import deidentify_file, read_whole
from pacsguard.deid.profile import Option


def _ct() -> Dataset:
    return read_whole(next(p for p in pydicom_files() if p.name == "CT_small.dcm"))


def _uids(ds: Dataset) -> list[str]:
    return [str(e.value) for e in ds.iterall() if e.VR == "UI" and e.tag.group != 0x0002]


def test_same_key_same_uids_other_key_other_uids() -> None:
    first, second, other = _ct(), _ct(), _ct()
    engine().deidentify(first)
    engine().deidentify(second)
    make_engine(OTHER_KEY, []).deidentify(other)
    assert _uids(first) == _uids(second)
    assert first.PatientID == second.PatientID and first.PatientName == second.PatientName
    assert first.SOPInstanceUID != other.SOPInstanceUID
    assert first.StudyInstanceUID != other.StudyInstanceUID
    assert first.PatientID != other.PatientID
    assert all(u.startswith("2.25.") and len(u) <= 64 for u in (first.SOPInstanceUID, first.StudyInstanceUID))


def test_a_uid_maps_the_same_in_every_place_it_appears() -> None:
    ds = _ct()
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.ReferencedImageSequence = Sequence([item])
    engine().deidentify(ds)
    assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert ds.ReferencedImageSequence[0].ReferencedSOPClassUID == ds.SOPClassUID  # a class, kept


def test_modified_dates_keep_intervals_within_a_patient() -> None:
    ds = _ct()
    ds.StudyDate, ds.ContentDate = "20200110", "20200125"
    before = copy.deepcopy(ds)
    engine(Option.RETAIN_LONGITUDINAL_MODIFIED_DATES.value).deidentify(ds)
    assert ds.StudyDate != before.StudyDate
    from datetime import datetime
    days = (datetime.strptime(ds.ContentDate, "%Y%m%d") - datetime.strptime(ds.StudyDate, "%Y%m%d")).days
    assert days == 15
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    other = _ct()
    other.PatientID, other.StudyDate = "SOMEONE-ELSE", "20200110"
    engine(Option.RETAIN_LONGITUDINAL_MODIFIED_DATES.value).deidentify(other)
    assert other.StudyDate != ds.StudyDate  # another patient, another shift (with this key)


def test_method_attributes_name_the_profile_and_options() -> None:
    ds = _ct()
    engine(Option.RETAIN_UIDS.value, Option.CLEAN_DESCRIPTORS.value).deidentify(ds)
    codes = [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113105", "113110"]
    assert all(i.CodingSchemeDesignator == "DCM" for i in ds.DeidentificationMethodCodeSequence)
    assert "PS3.15 2026c Table E.1-1" in ds.DeidentificationMethod
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    # CT pixels were not checked for burned-in text: the identity is not known to be removed.
    assert ds.PatientIdentityRemoved == "NO"
    no_pixels = Dataset()
    no_pixels.SOPClassUID, no_pixels.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", "1.2.3.4"
    no_pixels.PatientID = PATIENT_ID
    engine(Option.RETAIN_LONGITUDINAL_FULL_DATES.value).deidentify(no_pixels)
    assert no_pixels.PatientIdentityRemoved == "YES"
    assert no_pixels.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_private_attributes_go_unless_on_the_safe_list() -> None:
    ds = _ct()
    ds.add_new(0x00190010, "LO", "ACME 1.0")
    ds.add_new(0x00191001, "DS", "2.5")  # listed as safe below
    ds.add_new(0x00191002, "LO", NAME)
    ds.add_new(0x00210010, "LO", "OTHER")
    ds.add_new(0x00211001, "LO", NAME)
    basic = copy.deepcopy(ds)
    engine().deidentify(basic)
    assert not [e for e in basic if e.tag.is_private]
    config = DeidConfig(options=[Option.RETAIN_SAFE_PRIVATE],
                        safe_private=[SafePrivateEntry(creator="ACME 1.0", group=0x0019, element=0x01)])
    make_engine(KEY, config.options, config).deidentify(ds)
    assert [int(e.tag) for e in ds if e.tag.is_private] == [0x00190010, 0x00191001]


def test_overlay_and_curve_groups_are_removed_whole() -> None:
    ds = _ct()
    ds.add_new(0x60000010, "US", 4)
    ds.add_new(0x60000011, "US", 4)
    ds.add_new(0x60003000, "OW", b"\0\1" * 8)
    ds.add_new(0x50000005, "US", 1)
    engine().deidentify(ds)
    assert not [e for e in ds if e.tag.group in (0x6000, 0x5000)]


def test_exclusive_options_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot be chosen together"):
        Settings(frozenset({Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES}))


def test_burned_in_text_classes_are_withheld_without_clean_pixel_data() -> None:
    ds = _ct()
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(Withheld, match="Burned In Annotation"):
        engine().deidentify(ds)


@pytest.mark.parametrize("damage", ["not-dicom", "truncated", "short-pixels", "invalid-vr"])
def test_bad_input_is_withheld_and_nothing_is_written(damage: str, tmp_path: Path) -> None:
    source = next(p for p in pydicom_files() if p.name == "CT_small.dcm").read_bytes()
    bad = tmp_path / "in.dcm"
    if damage == "not-dicom":
        bad.write_bytes(b"MZ" + b"\0" * 400)
    elif damage == "truncated":
        bad.write_bytes(source[:1000])  # cut inside the data set, before the pixels
    elif damage == "short-pixels":
        bad.write_bytes(source[:-200])
    else:  # Patient's Name with the VR "ZZ", which PS3.5 6.2 does not define
        at = source.find(b"\x10\x00\x10\x00PN")
        bad.write_bytes(source[:at + 4] + b"ZZ" + source[at + 6:])
    out = tmp_path / "out.dcm"
    result = deidentify_file(engine(), bad, out)
    assert result.output is None and result.withheld
    assert not out.exists() and not list(tmp_path.glob(".*part"))


def test_an_option_pacsguard_cannot_carry_out_is_refused() -> None:
    # Recording 113102 would tell the recipient that faces were removed: pacsguard finds none.
    with pytest.raises(ValueError, match="does not detect faces"):
        Settings(frozenset({Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES}))
    with pytest.raises(ValueError, match="does not detect faces"):
        DeidConfig(options=[Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES])


def test_a_wrong_character_set_is_withheld(tmp_path: Path) -> None:
    """Issue 20, Bad input: wrong character sets are withheld and reported (tests/deid/test_r9x_charsets.py)."""
    ds = _ct()
    ds.SpecificCharacterSet = "ISO_IR 999"  # no such character set (PS3.3 C.12.1.1.2)
    ds.PatientName = "M\xfcller^J\xf6rg"
    ds.save_as(tmp_path / "in.dcm", enforce_file_format=True)
    result = deidentify_file(engine(), tmp_path / "in.dcm", tmp_path / "out.dcm")
    assert result.output is None and not (tmp_path / "out.dcm").exists()
    assert "(0008,0005) is 'ISO_IR 999': 'ISO_IR 999' is no defined term" in result.withheld
