"""Round 4 of the outside tester's findings in the scanner's parsing and rules: a repeated or
out-of-order top-level tag that ended the walk (and let --sanitize cut the rest off), the
structure family's KeyError on a meta group cut short, event handlers and encoded javascript: URLs
in short texts, and a JSON configuration preamble led by a comment. Each test failed before its fix."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pydicom.data
import pytest
from pydicom.uid import ImplicitVRLittleEndian
from scan_samples import above, base, ct, dicomdir_traversal, encode, quiet, rows_as_ul, rules, zip_bytes
from typer.testing import CliRunner

from pacsguard.cli import main
from pacsguard.scan import part10
from pacsguard.scan.model import Level
from pacsguard.scan.rules import guarded, polyglot, structure
from pacsguard.scan.scanner import Scanner

DCMDUMP = Path("/usr/bin/dcmdump")
PALETTES = Path(pydicom.data.__file__).parent / "palettes"


def dup_first(data: bytes) -> bytes:
    """The data set's first element (CT_small: (0008,0005) CS, a short-VR one) written twice."""
    glen = struct.unpack_from("<I", data, 132 + 8)[0]
    pos = 132 + 12 + glen
    n = 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return data[:pos + n] + data[pos:pos + n] + data[pos + n:]


def uid_in_data_set_only() -> bytes:
    ds = base()
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPInstanceUID = "../../../../tmp/pwned"
    return encode(ds)


def dcmdump_tags(path: Path) -> set[str]:
    """Every tag dcmdump prints (nested ones too): what a reader makes of the file."""
    assert DCMDUMP.exists(), "install Debian's dcmtk package: apt-get install dcmtk"
    out = subprocess.run([str(DCMDUMP), "-q", str(path)], capture_output=True, text=True, timeout=60).stdout
    return {line.split()[0] for line in out.splitlines() if line.lstrip().startswith("(")}


# --- 1. repeated and out-of-order tags ------------------------------------------------------------


def test_a_repeated_tag_is_a_low_note_and_the_walk_reads_every_element(scanner: Scanner) -> None:
    data = dup_first(quiet(ct))
    parsed = part10.read(data)
    assert not parsed.stopped and parsed.end == len(data)
    assert parsed.top(part10.PIXEL_DATA) is not None
    report = scanner.scan_bytes(data, "ct")
    assert rules(report).get("structure.repeated-tag") == Level.LOW
    assert above(report, Level.LOW) == []


def test_an_out_of_order_tag_is_a_low_note_and_the_walk_goes_on(scanner: Scanner) -> None:
    data = quiet(ct)
    # (0008,0005) moved after (0008,0008): the second is out of order, the rest ascends again.
    glen = struct.unpack_from("<I", data, 132 + 8)[0]
    pos = 132 + 12 + glen
    first = 8 + struct.unpack_from("<H", data, pos + 6)[0]
    second = 8 + struct.unpack_from("<H", data, pos + first + 6)[0]
    swapped = data[:pos] + data[pos + first:pos + first + second] + data[pos:pos + first] + data[pos + first + second:]
    report = scanner.scan_bytes(swapped, "ct")
    assert rules(report).get("structure.tag-order") == Level.LOW
    assert above(report, Level.LOW) == []
    assert part10.read(swapped).end == len(swapped)


@pytest.mark.parametrize("build, rule", [(dicomdir_traversal, "structure.fileid-traversal"),
                                         (uid_in_data_set_only, "structure.uid-path-traversal"),
                                         (rows_as_ul, "structure.pixel-vr")], ids=lambda b: getattr(b, "__name__", b))
def test_hostile_elements_after_a_repeated_tag_stay_high(build, rule: str, scanner: Scanner) -> None:  # type: ignore[no-untyped-def]
    report = scanner.scan_bytes(dup_first(quiet(build)), "x.dcm")
    assert rules(report).get(rule) == Level.HIGH
    assert "polyglot.trailing-data" not in rules(report)


def test_rows_repeated_as_ul_is_judged_in_its_second_copy(scanner: Scanner) -> None:
    """pydicom keeps the last copy of a repeated element: a US Rows then a UL one is read as UL."""
    data = quiet(ct)
    at = data.find(b"\x28\x00\x10\x00US\x02\x00")
    ul = b"\x28\x00\x10\x00UL\x04\x00" + data[at + 8:at + 10] + b"\x00\x00"
    report = scanner.scan_bytes(data[:at + 10] + ul + data[at + 10:], "x.dcm")
    assert rules(report).get("structure.pixel-vr") == Level.HIGH


def test_pydicom_palettes_give_nothing_above_low(scanner: Scanner) -> None:
    """winter.dcm repeats (0008,0018); dcmdump reads it whole, its ICC profile and LUTs included."""
    files = sorted(PALETTES.glob("*.dcm"))
    assert len(files) >= 8
    for path in files:
        report = scanner.scan_file(path)
        assert above(report, Level.LOW) == [], path.name
    winter = part10.read((PALETTES / "winter.dcm").read_bytes())
    assert not winter.stopped and winter.top(0x00282000) is not None  # ICC Profile, past the repeat


def test_bytes_after_a_repeated_tag_are_only_the_ones_that_are_no_element(scanner: Scanner) -> None:
    data = dup_first(quiet(ct))
    parsed = part10.read(data + bytes(64))
    assert parsed.end == len(data) and polyglot.trailing(parsed) == len(data)
    assert rules(scanner.scan_bytes(data + bytes(range(1, 97)), "x"))["polyglot.trailing-data"] == Level.MEDIUM


@pytest.mark.parametrize("tail, rule", [(bytes(4096), "polyglot.zero-padding"),
                                        (zip_bytes({"payload.exe": b"MZ" + bytes(200)}), "polyglot.appended-zip")])
def test_implicit_vr_tails_are_still_after_the_data_set(tail: bytes, rule: str, scanner: Scanner) -> None:
    """Any 8 bytes read as an implicit VR header: bytes that go back in tag order are an element
    only when its length and the next header fit, so zeros and an appended zip still end the data set."""
    ds = quiet(base)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    data = quiet(lambda: encode(ds))
    report = scanner.scan_bytes(data + tail, "x")
    assert rule in rules(report)
    assert "structure.not-elements" in rules(report)


def test_sanitize_never_removes_elements_dcmdump_reads(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "ct_repeated.dcm").write_bytes(dup_first(quiet(ct)))
    (src / "winter.dcm").write_bytes((PALETTES / "winter.dcm").read_bytes())
    result = CliRunner().invoke(main.app, ["scan", "--format", "json", "--sanitize", "--out", str(out), str(src)])
    assert result.exit_code == 0, result.output  # nothing above low: the default fail_on passes both
    for name in ("ct_repeated.dcm", "winter.dcm"):
        copy = out / "in" / name
        if copy.exists():
            assert dcmdump_tags(copy) == dcmdump_tags(src / name)


# --- 2. a meta group cut short, and one failing check ---------------------------------------------


def cut_meta_other_instance(data: bytes) -> bytes:
    """(0002,0001) written as (0001,0001): the rest of group 0002 lands in the data set; and
    (0002,0003) one digit off (0008,0018)."""
    at = data.find(b"\x02\x00\x01\x00OB")
    data = data[:at] + b"\x01\x00\x01\x00OB" + data[at + 6:]
    at = data.find(b"\x02\x00\x03\x00UI")
    n = int.from_bytes(data[at + 6:at + 8], "little")
    value = bytearray(data[at + 8:at + 8 + n])
    i = max(k for k, c in enumerate(value) if 0x30 <= c <= 0x39)
    value[i] = 0x30 + (value[i] - 0x30 + 1) % 10
    return data[:at + 8] + bytes(value) + data[at + 8 + n:]


def svg_name() -> bytes:
    ds = base()
    ds.PatientName = "<svg/onload=alert(1)>"
    return encode(ds)


@pytest.mark.parametrize("build, rule", [(svg_name, "structure.markup"), (rows_as_ul, "structure.pixel-vr")],
                         ids=["markup", "pixel-vr"])
def test_a_meta_group_cut_short_does_not_crash_the_structure_rules(build, rule: str, scanner: Scanner) -> None:  # type: ignore[no-untyped-def]
    report = scanner.scan_bytes(cut_meta_other_instance(quiet(build)), "x.dcm")
    found = rules(report)
    assert "structure.error" not in found
    assert found.get(rule) == Level.HIGH
    assert found.get("structure.media-storage-mismatch") == Level.LOW


def test_one_failing_structure_check_leaves_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in one check (as the KeyError was) is reported as before, and the others still run."""
    def broken(parsed: part10.Parsed) -> list:  # type: ignore[type-arg]
        raise KeyError(0x00020003)

    monkeypatch.setattr(structure, "_meta", broken)
    found = {f.rule: f for f in structure.check(part10.read(quiet(svg_name)))}
    assert found["structure.markup"].level == Level.HIGH
    assert found["structure.error"].level == Level.LOW and "KeyError" in found["structure.error"].explanation
    assert guarded("polyglot", broken, part10.read(b""))[0].rule == "polyglot.error"


# --- 3. markup in short texts -----------------------------------------------------------------------


HOSTILE_NAMES = [
    "<input autofocus onfocusin=alert(1)>",
    "<input onblur=alert(1) autofocus><input autofocus>",
    "<b style=animation:x onanimationend=alert(1)><style>@keyframes x{}</style>",
    "<b style=transition:1s ontransitionend=alert(1)>",
    "<marquee onstart=alert(1)>",
    "<details open ontoggle=alert(1)>",
    "<a href='&#106;avascript:alert(1)'>open report</a>",
    "<a href='&#x6A;avascript:alert(1)'>open report</a>",
    "<a href='java&#x09;script:alert(1)'>open report</a>",
    "<a href='javascript&colon;alert(1)'>open report</a>",
    "<a href='vbscript:msgbox(1)'>x</a>",
    "<iframe src='data:text/html,<b>x</b>'>",
    "<a href='d&#97;ta:text/html;base64,PHNjcmlwdD4='>x</a>",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_markup_in_a_patient_name_is_found(name: str, scanner: Scanner) -> None:
    ds = quiet(base)
    ds.PatientName = name
    assert rules(scanner.scan_bytes(quiet(lambda: encode(ds)), "x.dcm")).get("structure.markup") == Level.HIGH


CLINICAL = {
    "PatientName": "Ono^Jon", "ReferringPhysicianName": "O'Neil & Sons^Dr",
    "InstitutionName": "St. John & Mary's Oncology & Haematology", "StudyDescription": "CT chest on admission",
    "SeriesDescription": "R&D <5mm nodule on left, contrast on=yes", "InstitutionalDepartmentName": "Dept. A&E",
    "PatientComments": "x&amp;y &lt;b&gt; onward", "OperatorsName": "Long^Onion",
    "ProtocolName": "a<b and c>d; online=1",
}


def test_plain_clinical_text_with_on_words_and_ampersands_is_not_markup(scanner: Scanner) -> None:
    ds = quiet(base)
    for keyword, value in CLINICAL.items():
        setattr(ds, keyword, value)
    report = scanner.scan_bytes(quiet(lambda: encode(ds)), "x.dcm")
    assert above(report, Level.INFO) == []


# --- 4. a JSON configuration preamble led by a comment -----------------------------------------------


CONFIG = b'{"RemoteAccessAllowed": true, "AuthenticationEnabled": false, "LuaScripts": ["/tmp/x.lua"]}'


@pytest.mark.parametrize("lead", [b"/* orthanc */", b"// orthanc\n", b"  /* a */\n// b\r\n\t/**/ ",
                                  b"\xef\xbb\xbf/**/"], ids=["block", "line", "mixed", "bom"])
def test_a_json_preamble_led_by_comments_is_found(lead: bytes, scanner: Scanner) -> None:
    report = scanner.scan_bytes(quiet(lambda: ct((lead + CONFIG).ljust(128, b" "))), "x.dcm")
    assert rules(report).get("preamble.json") == Level.HIGH


def test_a_comment_without_json_is_no_configuration(scanner: Scanner) -> None:
    report = scanner.scan_bytes(quiet(lambda: ct(b"/* made by a modality */ no json here".ljust(128, b" "))), "x")
    assert "preamble.json" not in rules(report)


def test_the_repro_command_line_agrees(tmp_path: Path) -> None:
    """The CLI's JSON for a comment-led configuration fails at the default level."""
    path = tmp_path / "x.dcm"
    path.write_bytes(quiet(lambda: ct((b"// orthanc\n" + CONFIG).ljust(128, b" "))))
    result = CliRunner().invoke(main.app, ["scan", "--format", "json", str(path)])
    assert result.exit_code == 1
    found = {f["rule"] for f in json.loads(result.output)["files"][0]["findings"]}
    assert "preamble.json" in found and os.path.getsize(path) > 128
