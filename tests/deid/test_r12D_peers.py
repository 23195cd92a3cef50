"""`pacsguard deid` on objects made by PixelMed, CTN and odil (outside round 12, helper D): every
object comes out (no crash, none withheld but for a reason named), valid where its input was
(dciodvfy, PixelMed's SR validator), readable by CTN and odil; encapsulated documents stay documents
of their MIME type (PS3.3 C.24.2.1); and PixelMed's own de-identification removes nothing the
standard (PS3.15 Table E.1-1) says pacsguard must change and pacsguard keeps."""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pydicom
import pytest
from deid_helpers import engine
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from pacsguard.deid.files import deidentify_file
from pacsguard.deid.profile import table
from pacsguard.deid.rules import CLASS_UIDS
from peers import pixelmed_files
from peers.pixelmed_files import (
    HL7_INSTANCE_IDENTIFIER,
    java,
    pixelmed_validate,
    run,
    tool,
    which,
)

_UID = re.compile(r"\b[0-9]+(\.[0-9]+)+\b")

#: The session fixture of tests/peers/pixelmed_files.py (objects made once for both test files).
peer_objects = pixelmed_files.peer_objects


def _deid(source: Path, out: Path, *options: str) -> Path:
    result = deidentify_file(engine(*options), source, out)
    assert result.withheld == "", f"{source.name}: {result.withheld}"
    assert result.output is not None
    return result.output


def _dciodvfy_errors(path: Path) -> set[str]:
    proc = subprocess.run([which("dciodvfy"), str(path)], capture_output=True, text=True, errors="replace",
                          timeout=60)
    # UIDs differ by design between input and output: an error about "a UID" is the same error.
    return {_UID.sub("<uid>", " ".join(line.split())) for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith("Error")}


@pytest.mark.parametrize("name", ["pdf", "cda", "stl", "odil_be_pdf", "odil_ile_pdf"])
def test_encapsulated_documents_stay_documents_of_their_type(peer_objects: dict[str, Path], name: str,
                                                              tmp_path: Path) -> None:
    """D for Encapsulated Document (0042,0011) is a dummy, but PS3.3 C.24.2.1 wants the document
    "encoded according to the MIME Type" (0042,0012): before, two NUL bytes went out under
    application/pdf, which no reader opens and pacsguard's own scanner calls a disguised payload."""
    out = _deid(peer_objects[name], tmp_path / "out.dcm")
    ds = pydicom.dcmread(out)
    document = bytes(ds.EncapsulatedDocument)
    length = int(ds.EncapsulatedDocumentLength)
    assert length in (len(document), len(document) - 1)  # C.24.2.1: the length before the pad byte
    document = document[:length]
    assert b"Quixote" not in document and b"DOC-QUIXOTE" not in document
    mime = ds.MIMETypeOfEncapsulatedDocument
    if mime == "application/pdf":
        assert document.startswith(b"%PDF-")
        pdf = tmp_path / "dummy.pdf"
        pdf.write_bytes(document)
        proc = run(tool("gs"), "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-sDEVICE=nullpage", str(pdf), timeout=30)
        assert "Error" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr  # gs names repairs so
    elif mime == "text/xml":
        assert ET.fromstring(document).tag == "{urn:hl7-org:v3}ClinicalDocument"
    else:
        assert mime == "model/stl" and document.startswith(b"solid")
        assert document.rstrip(b"\0\n").endswith(b"endsolid ANONYMOUS")
    assert _dciodvfy_errors(out) <= _dciodvfy_errors(peer_objects[name])


@pytest.mark.parametrize("options", [(), ("clean-descriptors",)])
def test_cda_instance_identifier_is_replaced_not_removed(peer_objects: dict[str, Path], tmp_path: Path,
                                                         options: tuple[str, ...]) -> None:
    """HL7 Instance Identifier (0040,E001) is Type 1C in the Encapsulated Document Module for a CDA
    (PS3.3 C.24.2); Table E.1-1 does not list it, and it was removed as free text: dciodvfy then finds
    "Missing attribute Type 1C ... HL7InstanceIdentifier" in the output, not in PixelMed's input.
    It names the site's OID and the document number: it gets the keyed UID, the same in every run."""
    source = peer_objects["cda"]
    assert pydicom.dcmread(source).HL7InstanceIdentifier == HL7_INSTANCE_IDENTIFIER
    outs = [_deid(source, tmp_path / f"{n}.dcm", *options) for n in range(2)]
    values = {pydicom.dcmread(out).get("HL7InstanceIdentifier") for out in outs}
    assert len(values) == 1
    value = values.pop()
    assert value is not None and re.fullmatch(r"2\.25\.[0-9]+", value), value
    assert _dciodvfy_errors(outs[0]) <= _dciodvfy_errors(source)


def _dcm_verify_complaints(path: Path) -> set[str]:
    """CTN's dcm_verify (its IOD tables): the lines that call a module, an IE or the object
    incomplete or illegal; values and UIDs left out, as they differ by design."""
    proc = subprocess.run([tool("dcm_verify"), "-t", str(path)], capture_output=True, text=True, errors="replace",
                          timeout=60)
    return {_UID.sub("<uid>", " ".join(line.split()[:4])) for line in (proc.stdout + proc.stderr).splitlines()
            if "Incomplete" in line or "Illegal" in line}


def test_peer_objects_come_out_valid_and_readable(peer_objects: dict[str, Path], tmp_path: Path) -> None:
    """Every object of the peers (SR, Secondary Capture, WSI description, CTN's three syntaxes,
    odil's big endian and implicit transcodes) is written under clean-pixel-data, with no error
    dciodvfy or CTN's dcm_verify did not find in the input, and CTN's dcm_dump_file and odil print
    read it."""
    new_errors, unread = {}, []
    for name, source in sorted(peer_objects.items()):
        out = _deid(source, tmp_path / f"{name}.dcm", "clean-pixel-data")
        added = (_dciodvfy_errors(out) - _dciodvfy_errors(source)) | (
            _dcm_verify_complaints(out) - _dcm_verify_complaints(source))
        if added:
            new_errors[name] = sorted(added)
        for reader in ([tool("dcm_dump_file"), str(out)], [tool("odil"), "print", str(out)]):
            proc = subprocess.run(reader, capture_output=True, text=True, errors="replace", timeout=60)
            if proc.returncode != 0:
                unread.append((name, Path(reader[0]).name, proc.stderr[-300:]))
    assert new_errors == {}
    assert unread == []


def test_pixelmed_validators_find_no_new_error(peer_objects: dict[str, Path], tmp_path: Path) -> None:
    """PixelMed's DicomSRValidator (IOD and content tree, PS3.3 A.35, C.17) on its SR and odil's big
    endian transcode of it, and its DicomInstanceValidator on the Legacy Converted Enhanced CT and
    MR it made (functional groups, PS3.3 A.70, A.71, C.7.6.16), before and after de-identification:
    basic, and with the options that keep and clean most."""
    pairs = []
    for name in ("sr", "odil_be_sr", "lect", "lemr"):
        for n, options in enumerate(((), ("clean-structured-content", "clean-descriptors",
                                          "retain-longitudinal-modified-dates", "retain-patient-characteristics"))):
            pairs.append((peer_objects[name], _deid(peer_objects[name], tmp_path / f"{name}{n}.dcm", *options)))
    verdicts = pixelmed_validate(sorted({p for pair in pairs for p in pair}), tmp_path)

    def errors(path: Path) -> set[str]:
        lines = verdicts[path]
        assert any(line.startswith("Found ") and line.endswith(" IOD") for line in lines), lines[:5]
        assert "IOD validation complete" in lines, lines[-5:]
        return {_UID.sub("<uid>", line) for line in lines if line.startswith(("Error", "Exception"))}

    assert {out.name: sorted(errors(out) - errors(src)) for src, out in pairs
            if errors(out) - errors(src)} == {}


def test_odil_deflated_transcode_is_withheld_by_name(peer_objects: dict[str, Path], tmp_path: Path) -> None:
    """odil 0.12's transcode to Deflated Explicit VR Little Endian (PS3.5 A.5) writes the data set
    without deflating it: pacsguard withholds it, naming the deflated data set, never guessing."""
    source = tmp_path / "deflated.dcm"
    run(tool("odil"), "transcode", "-t", "DeflatedExplicitVRLittleEndian", str(peer_objects["ctn_ele"]), str(source))
    meta_end = 132 + 12 + int.from_bytes(source.read_bytes()[140:144], "little")
    body = source.read_bytes()[meta_end:]
    result = deidentify_file(engine(), source, tmp_path / "out.dcm")
    try:
        zlib.decompressobj(-zlib.MAX_WBITS).decompress(body)
    except zlib.error:
        assert result.output is None and "deflated data set" in result.withheld, result.withheld
    else:  # a later odil that deflates: then the object must come out
        assert result.withheld == "" and result.output is not None


@pytest.mark.parametrize(("name", "syntax", "options"), [("sc", "RLELossless", ("clean-pixel-data",)),
                                                        ("sc", "JPEGLSLossless", ("clean-pixel-data",)),
                                                        ("lect", "RLELossless", ())])
def test_odil_relabelled_native_pixels_are_withheld_by_name(peer_objects: dict[str, Path], tmp_path: Path,
                                                             name: str, syntax: str, options: tuple[str, ...]) -> None:
    """odil 0.12 "transcodes" PixelMed's image to RLE or JPEG-LS by changing the Transfer Syntax UID
    only: Pixel Data keeps its defined length, which a compressed syntax does not allow (PS3.5 A.4;
    dcmdump refuses the file). Before, the reason was pydicom's "Found unexpected tag (0400,0C08)
    instead of (FFFE,E000) when parsing the Basic Offset Table item" (JPEG-LS as "de-identification
    failed: ValueError"); a CT, whose pixels are not checked without clean-pixel-data, was written
    out so, a file dcmdump cannot read. Now it names the element, its length and the syntax."""
    source = tmp_path / f"{syntax}.dcm"
    run(tool("odil"), "transcode", "-t", syntax, str(peer_objects[name]), str(source))
    result = deidentify_file(engine(*options), source, tmp_path / "out.dcm")
    if pydicom.dcmread(source)["PixelData"].is_undefined_length:  # a later odil that encapsulates
        assert result.withheld == "" and result.output is not None
        return
    assert result.output is None
    assert result.withheld.startswith("Pixel Data (7FE0,0010) has a defined length"), result.withheld
    assert "(PS3.5 A.4)" in result.withheld and "1.2.840.10008.1.2." in result.withheld


_VALUES = {"AE": "STATION7", "AS": "045Y", "CS": "QUIXOTE", "DA": "20200102", "DS": "12.5",
           "DT": "20200102101010", "FL": 1.5, "FD": 2.5, "IS": "42", "LO": "Quixote Zebulon 1234567",
           "LT": "Quixote Zebulon 1234567", "PN": "Quixote^Zebulon", "SH": "QX1234567", "SL": 1, "SS": 1,
           "ST": "Quixote Zebulon 1234567", "TM": "101010", "UC": "Quixote Zebulon 1234567", "UL": 7,
           "UR": "http://pacs.example/quixote", "US": 3, "UT": "Quixote Zebulon 1234567", "AT": 0x00100010,
           "OB": b"QX!!", "OW": b"QX!!"}


def _every_attribute(path: Path) -> Path:
    """One value for every public attribute of pydicom's dictionary of the VRs above (not the meta,
    command, curve, overlay or pixel groups), in a Basic Text SR, written by pydicom."""
    ds = Dataset()
    for tag, (vr, _, _, _, _) in sorted(DicomDictionary.items()):
        group = tag >> 16
        vr = vr.split(" or ")[0]
        if group in (0x0000, 0x0002, 0xFFFE) or group >= 0x7FE0 or group & 0xFF00 in (0x5000, 0x6000) \
                or tag == 0x00080005 or (vr not in _VALUES and vr != "UI"):
            continue
        ds.add_new(tag, vr, f"1.2.826.0.1.3680043.2.1143.{tag}" if vr == "UI" else _VALUES[vr])
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1143.1.1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def _walk(ds: Dataset, prefix: str = "") -> dict[str, tuple[int, str, object]]:
    out: dict[str, tuple[int, str, object]] = {}
    for elem in ds:
        if elem.tag.group == 0x7FE0:
            continue
        key = f"{prefix}{elem.tag}"
        if elem.VR == "SQ":
            for n, item in enumerate(elem.value):
                out.update(_walk(item, f"{key}[{n}]."))
        else:
            out[key] = (int(elem.tag), elem.VR, elem.value)
    return out


#: What PixelMed's DeidentifyAndRedact removes or replaces and pacsguard keeps, and why keeping is
#: right: none is a Table E.1-1 row; class, template and transfer syntax UIDs name definitions,
#: not instances (CLASS_UIDS); these name no one (retired Length to End, Study Status and Priority
#: IDs, Modifying Device Manufacturer next to a kept Manufacturer); Burned In Annotation is the
#: input's claim, which PixelMed rewrites after its redaction.
_KEPT_ON_PURPOSE = frozenset(CLASS_UIDS) | {0x00080001, 0x0032000A, 0x0032000C, 0x00203404, 0x00280301}


def test_pixelmed_deidentification_removes_nothing_the_table_makes_pacsguard_change(
        peer_objects: dict[str, Path], tmp_path: Path) -> None:
    """The same identifying-rich objects through PixelMed's DeidentifyAndRedact and pacsguard (basic
    profile, clean-pixel-data for the images): an attribute PixelMed removes or replaces that
    pacsguard keeps would be a candidate miss; each one found is checked against Table E.1-1 and
    the reasons above."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    sources = {name: peer_objects[name] for name in ("wsi", "ctn_ele", "cda", "sr")}
    sources["every"] = _every_attribute(inputs / "every.dcm")
    for name, path in sources.items():
        (inputs / f"{name}.dcm").write_bytes(path.read_bytes())
    redaction = tmp_path / "redaction.txt"
    redaction.write_text("")
    pixelmed_out = tmp_path / "pixelmed"
    pixelmed_out.mkdir()
    java("com.pixelmed.apps.DeidentifyAndRedact", str(inputs), str(pixelmed_out), str(redaction), timeout=120)

    def identity(ds: Dataset) -> tuple[str, int]:  # PixelMed replaces the UIDs: pair by class and size
        return str(ds.SOPClassUID), int(ds.get("Rows", 0) or 0)

    by_pixelmed = {identity(ds): ds for ds in map(pydicom.dcmread, pixelmed_out.iterdir())}
    assert len(by_pixelmed) == len(sources)
    rows = table()
    candidates: dict[str, list[str]] = {}
    for name in sources:
        original = pydicom.dcmread(inputs / f"{name}.dcm")
        ours = _walk(pydicom.dcmread(_deid(inputs / f"{name}.dcm", tmp_path / f"{name}.out.dcm",
                                                "clean-pixel-data")))
        theirs = _walk(by_pixelmed[identity(original)])
        for key, (tag, vr, value) in _walk(original).items():
            if vr in ("UV", "SV") or tag == 0x00080005:
                continue  # PixelMed 20220618 writes 64-bit values as two; the character set is not a value
            if theirs.get(key, (0, "", None))[2] != value and ours.get(key, (0, "", None))[2] == value:
                row = rows.find(tag)
                assert row is None or row.basic == "K", f"{name} {key}: Table E.1-1 says {row.basic}"
                if tag not in _KEPT_ON_PURPOSE:
                    candidates.setdefault(name, []).append(f"{key} {vr} {value!r:.40}")
    assert candidates == {}
