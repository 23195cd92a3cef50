"""The re-probe of round 5's de-identification fixes (an outside tester, issue 20):
- clean-descriptors scrubs Hangul name parts written without spaces, and short Latin parts
  beside an apostrophe or a hyphen;
- the file meta is rebuilt from an allow-list (PS3.10 7.1): the RTV elements and the source's
  implementation names do not pass;
- an overlay group with an empty Overlay Data and an embedded plane loses its plane too;
- a URI goes by its dictionary VR (Retrieve URI written as UT);
- a file cut inside a header after a sequence is withheld;
- `deid reidentify --find` that matches nothing says so (exit 3); `events search` says on
  standard error when it stopped at --limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from deid_helpers import KEY, engine, image, pydicom_files
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from pacsguard.deid.files import deidentify_file, read_whole
from pacsguard.deid.values import clean_text, identifiers_of
from pacsguard.dicom.uids import PACSGUARD_IMPLEMENTATION_CLASS_UID, PACSGUARD_IMPLEMENTATION_VERSION_NAME
from pacsguard.store import EventStore
from store_helpers import make_events


def _pacsguard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsguard.cli", *args], capture_output=True, text=True,
                          timeout=240, cwd=cwd, env={**os.environ, "COLUMNS": "200"})


def _ct() -> Dataset:
    ds = read_whole(next(p for p in pydicom_files() if p.name == "CT_small.dcm"))
    ds.PatientName = "Quixote^Zebulon"
    ds.PatientID = "PID77341"
    return ds


# -- clean-descriptors: Hangul, apostrophes and hyphens -----------------------------------------


@pytest.mark.parametrize(("text", "kept"), [("홍길동 흉부 CT", "흉부 CT"), ("CT 홍길동님 추적", "님 추적")])
def test_hangul_name_parts_are_scrubbed_inside_words(text: str, kept: str) -> None:
    parts = identifiers_of("Hong^Gildong=洪^吉洞=홍^길동")
    cleaned = clean_text(text, parts)
    assert "홍" not in cleaned and "길동" not in cleaned and kept in cleaned


@pytest.mark.parametrize("text", ["CT for Li's follow-up", "CT Wu-Li", "CT for Li\u2019s follow-up"])
def test_short_parts_beside_an_apostrophe_or_hyphen_are_scrubbed(text: str) -> None:
    cleaned = clean_text(text, identifiers_of("Li^Wu"))
    assert "Li" not in cleaned and "Wu" not in cleaned and cleaned.startswith("CT")


def test_short_parts_still_spare_ordinary_words() -> None:
    assert clean_text("Lisbon wulf follow-up", identifiers_of("Li^Wu")) == "Lisbon wulf follow-up"


def test_a_korean_description_is_cleaned_by_the_engine() -> None:
    ds = _ct()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Hong^Gildong=洪^吉洞=홍^길동"
    ds.StudyDescription = "CT 홍길동님 추적"
    engine("clean-descriptors").deidentify(ds)
    assert "홍" not in str(ds.StudyDescription) and "추적" in str(ds.StudyDescription)


# -- the file meta: an allow-list ----------------------------------------------------------------


def test_the_file_meta_keeps_only_what_pacsguard_writes() -> None:
    ds = _ct()
    original = str(ds.SOPInstanceUID)
    meta = ds.file_meta
    meta.ImplementationVersionName = "CTROOM3_WS"
    meta.add_new(0x00020031, "OB", b"\x01\x00")  # RTV Meta Information Version
    meta.add_new(0x00020032, "UI", "1.2.840.10008.5.1.4.1.1.77.1.4.1")  # RTV Communication SOP Class UID
    meta.add_new(0x00020033, "UI", original)  # RTV Communication SOP Instance UID
    meta.add_new(0x00020035, "OB", b"CTROOM3-SN77341\x00")  # RTV Source Identifier
    meta.add_new(0x00020036, "OB", b"\x00\x00")  # a later edition's element, never seen before
    engine().deidentify(ds)
    assert {int(t) for t in ds.file_meta.keys()} <= {0x00020001, 0x00020002, 0x00020003, 0x00020010,
                                                       0x00020012, 0x00020013}
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID != original
    assert ds.file_meta.ImplementationClassUID == PACSGUARD_IMPLEMENTATION_CLASS_UID
    assert ds.file_meta.ImplementationVersionName == PACSGUARD_IMPLEMENTATION_VERSION_NAME
    assert original not in str(list(ds.file_meta.values()))


def test_the_rebuilt_meta_is_written_and_read_back(tmp_path: Path) -> None:
    ds = _ct()
    ds.file_meta.add_new(0x00020033, "UI", str(ds.SOPInstanceUID))
    ds.save_as(tmp_path / "in.dcm", enforce_file_format=True)
    result = deidentify_file(engine(), tmp_path / "in.dcm", tmp_path / "out", into_folder=True)
    assert result.output is not None, result.withheld
    out = dcmread(result.output)
    assert 0x00020033 not in out.file_meta and out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


# -- an embedded overlay with an empty Overlay Data ------------------------------------------------


def _ct_with_embedded_overlay(overlay_data: bytes | None) -> Dataset:
    """A 16-bit CT (Bits Stored 12) whose bit 12 holds an overlay (PS3.5 8.1.2), declared by a 6000
    group with Overlay Bits Allocated 16, Bit Position 12, and ``overlay_data`` (None: absent)."""
    pixels = np.full((32, 32), 1000, np.uint16)
    pixels[4:10, 2:30] |= 1 << 12  # the overlay's text
    ds = image(CTImageStorage, pixels, modality="CT", bits=16, stored=12, BurnedInAnnotation="NO")
    ds.add_new(0x60000010, "US", 32)
    ds.add_new(0x60000011, "US", 32)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 16)  # Overlay Bits Allocated
    ds.add_new(0x60000102, "US", 12)  # Overlay Bit Position
    if overlay_data is not None:
        ds.add_new(0x60003000, "OW", overlay_data)
    return ds


def test_an_empty_overlay_data_does_not_keep_the_embedded_plane(tmp_path: Path) -> None:
    _ct_with_embedded_overlay(b"").save_as(tmp_path / "in.dcm", enforce_file_format=True)
    result = deidentify_file(engine(), tmp_path / "in.dcm", tmp_path / "out", into_folder=True)
    assert result.output is not None, result.withheld
    out = dcmread(result.output)
    values = np.frombuffer(out.PixelData, np.uint16)
    assert not (values >> 12 & 1).any() and (values & 0x0FFF == 1000).all()
    assert not [t for t in out.keys() if t.group == 0x6000]
    assert "6000" in result.report.pixels


def test_an_overlay_with_data_leaves_the_pixels_alone(tmp_path: Path) -> None:
    ds = _ct_with_embedded_overlay(b"\xff" * 128)
    ds.add_new(0x60000100, "US", 1)  # a separate overlay: its plane is its Overlay Data
    before = bytes(ds.PixelData)
    ds.save_as(tmp_path / "in.dcm", enforce_file_format=True)
    result = deidentify_file(engine(), tmp_path / "in.dcm", tmp_path / "out", into_folder=True)
    assert result.output is not None, result.withheld
    assert dcmread(result.output).PixelData == before


# -- a URI goes by its dictionary VR ---------------------------------------------------------------


@pytest.mark.parametrize("vr", ["UT", "UR"])
def test_retrieve_uri_is_removed_whatever_vr_it_was_written_with(vr: str) -> None:
    ds = _ct()
    ds.add_new(0x0040E010, vr, f"https://pacs.stmarys.example/wado/studies/{ds.StudyInstanceUID}")
    engine("clean-descriptors").deidentify(ds)
    assert 0x0040E010 not in ds


def test_free_text_is_still_cleaned_under_clean_descriptors() -> None:
    ds = _ct()
    ds.add_new(0x00324000, "LT", "Quixote follow-up")  # Study Comments: free text, cleaned
    engine("clean-descriptors").deidentify(ds)
    assert ds[0x00324000].value == "X follow-up"


# -- re-identification: --find that matches nothing; events search at its --limit ----------------


def test_reidentify_says_when_find_matched_nothing(tmp_path: Path) -> None:
    (tmp_path / "deid.key").write_text(KEY.secret.hex() + "\n")
    (tmp_path / "events.jsonl").write_text("")
    r = _pacsguard("deid", "reidentify", "events.jsonl", "--key-file", "deid.key", "--find", "2.25.1234",
                   cwd=tmp_path)
    assert r.returncode == 3 and r.stdout == "" and "2.25.1234" in r.stderr and "--limit" in r.stderr
    plain = _pacsguard("deid", "reidentify", "events.jsonl", "--key-file", "deid.key", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr  # without --find, nothing was asked for


def test_events_search_says_when_it_stopped_at_its_limit(tmp_path: Path) -> None:
    assert _pacsguard("init", cwd=tmp_path).returncode == 0
    es = EventStore.open(str(tmp_path / "var/pacsguard.db"), key_path=tmp_path / "var/keys/store-signing.key")
    es.append(make_events(5))
    es.close()
    cut = _pacsguard("events", "search", "--format", "json", "--limit", "3", cwd=tmp_path)
    assert cut.returncode == 0, cut.stderr
    assert [json.loads(line)["details"]["n"] for line in cut.stdout.splitlines()] == [0, 1, 2]
    assert "--limit 3" in cut.stderr and "more events" in cut.stderr
    whole = _pacsguard("events", "search", "--format", "json", "--limit", "5", cwd=tmp_path)
    assert len(whole.stdout.splitlines()) == 5 and whole.stderr == ""
