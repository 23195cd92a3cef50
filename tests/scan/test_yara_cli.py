"""The same samples through Debian's `yara` CLI: pacsguard's built-in rules give the same matches
as through yara-python, and DICOMHawk's rules (MIT, tests/scan/fixtures/dicomhawk) catch what
docs/scan.md says they catch, while `pacsguard scan` catches every sample."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import pytest
from scan_samples import SAMPLES

from pacsguard.scan.model import Level
from pacsguard.scan.scanner import Scanner
from pacsguard.scan.yara_engine import builtin_rule_files

YARA = Path("/usr/bin/yara")
DICOMHAWK = Path(__file__).parent / "fixtures" / "dicomhawk"

#: sample -> DICOMHawk rules that match it (docs/scan.md, "Compared with DICOMHawk").
DICOMHAWK_CATCHES = {
    "pe_in_preamble": {"DICOM_PE_Polyglot_Active"},
    "pe_past_preamble": {"DICOM_PE_Polyglot_Active", "DICOM_PE_Polyglot_PE_Header_After_DICM"},
    "html_preamble": {"DICOM_Metadata_Stored_XSS"},
    "pdf_javascript": {"DICOM_Encapsulated_PDF_Active_Content"},
    "mime_mismatch": {"DICOM_Encapsulated_PDF_Magic_Mismatch"},
    "markup_in_name": {"DICOM_Metadata_Stored_XSS"},
    "rows_as_ul": {"DICOM_Rows_Columns_Encoded_As_UL"},
    "meta_group_length": {"DICOM_Orthanc_Undersized_MetaHeader_CVE_2026_5437"},
}


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("samples")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (build, _) in SAMPLES.items():
            (folder / f"{name}.dcm").write_bytes(build())
    return folder


def yara_cli(rule_files: list[Path], folder: Path) -> dict[str, set[str]]:
    assert YARA.exists(), "install Debian's yara package: apt-get install yara"
    found: dict[str, set[str]] = {}
    for rules in rule_files:
        proc = subprocess.run([str(YARA), "-w", str(rules), str(folder)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        for line in proc.stdout.splitlines():
            rule, path = line.split(" ", 1)
            found.setdefault(Path(path).stem, set()).add(rule)
    return found


def test_dicomhawk_rules_catch_what_the_docs_say(samples: Path) -> None:
    assert yara_cli(sorted(DICOMHAWK.glob("*.yar")), samples) == DICOMHAWK_CATCHES


def test_builtin_rules_match_alike_in_yara_cli_and_yara_python(samples: Path, scanner: Scanner) -> None:
    cli = yara_cli(builtin_rule_files(), samples)
    for name in SAMPLES:
        report = scanner.scan_bytes((samples / f"{name}.dcm").read_bytes(), name)
        # yara-python also runs the rules over element values and documents; over the whole file
        # it must match exactly what the CLI matches.
        whole = {f.rule.removeprefix("yara.") for f in report.findings
                 if f.rule.startswith("yara.") and f.explanation.endswith("(in the file)")}
        assert whole == cli.get(name, set()), name


def test_pacsguard_catches_every_sample_dicomhawk_misses(samples: Path, scanner: Scanner) -> None:
    missed_by_dicomhawk = set(SAMPLES) - set(DICOMHAWK_CATCHES)
    assert len(missed_by_dicomhawk) >= 15
    for name in missed_by_dicomhawk:
        report = scanner.scan_bytes((samples / f"{name}.dcm").read_bytes(), name)
        assert report.fails(Level.HIGH), name
