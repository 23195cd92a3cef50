"""The scanner as the store-and-forward route's object check ``scan`` (pacsguard.gateway.objects)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from scan_samples import ct, pe_in_preamble, trailing_garbage

from pacsguard.gateway.objects import STATUS_CANNOT_UNDERSTAND, ObjectAction, ReceivedObject
from pacsguard.runtime.registry import Registry
from pacsguard.scan.model import Level
from pacsguard.scan.object_check import ScanCheck
from pacsguard.scan.scanner import Scanner


def received(path: Path) -> ReceivedObject:
    return ReceivedObject(path=path, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid="1.2.3",
                          transfer_syntax_uid="1.2.840.10008.1.2.1", calling_ae="MODALITY", called_ae="GATEWAY",
                          peer_host="127.0.0.1", route="ct", association_id="a1")


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.fixture()
def check(scanner: Scanner) -> ScanCheck:
    return ScanCheck(scanner, Level.MEDIUM)


def test_the_part_offers_the_check_named_scan() -> None:
    offered = Registry.default().object_checks()
    assert offered["scan"][0].name == "scan"
    assert offered["scan"][1] == "pacsguard.scan.object_check:make_check"


def test_a_clean_object_is_forwarded_without_events(check: ScanCheck, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verdict = check.inspect(received(write(tmp_path, "ok.dcm", ct())))
    assert verdict.action is ObjectAction.FORWARD
    assert verdict.check == "scan" and verdict.events == ()


def test_an_infected_object_is_quarantined_naming_the_rule(check: ScanCheck, tmp_path: Path) -> None:
    verdict = check.inspect(received(write(tmp_path, "pe.dcm", pe_in_preamble())))
    assert verdict.action is ObjectAction.QUARANTINE
    assert verdict.status == STATUS_CANNOT_UNDERSTAND and 0xC000 <= verdict.status <= 0xCFFF
    assert verdict.rule in ("preamble.pe", "yara.pacsguard_preamble_pe")
    assert verdict.rule in verdict.reason
    rules = {e.details["rule"] for e in verdict.events}
    assert {"preamble.pe", "yara.pacsguard_preamble_pe"} <= rules
    event = verdict.events[0]
    assert event.kind == "scan.finding" and event.details["route"] == "ct"
    assert event.details["action"] == "quarantine" and event.actor.ae_title == "MODALITY"
    assert event.patient_ids and event.study_uids


def test_fail_on_decides_between_quarantine_and_forward(scanner: Scanner, tmp_path: Path) -> None:
    path = write(tmp_path, "tail.dcm", trailing_garbage())  # a medium finding
    assert ScanCheck(scanner, Level.MEDIUM).inspect(received(path)).action is ObjectAction.QUARANTINE
    forwarded = ScanCheck(scanner, Level.HIGH).inspect(received(path))
    assert forwarded.action is ObjectAction.FORWARD
    levels = {e.details["rule"]: e.details["level"] for e in forwarded.events}
    assert levels["polyglot.trailing-data"] == "medium"
    assert set(levels.values()) <= {"low", "medium"}


def test_an_object_that_cannot_be_read_is_refused(check: ScanCheck, tmp_path: Path) -> None:
    verdict = check.inspect(received(tmp_path / "gone.dcm"))
    assert verdict.action is ObjectAction.REFUSE and verdict.rule == "scan.skipped"
    empty = check.inspect(received(write(tmp_path, "empty.dcm", b"")))
    assert empty.action is ObjectAction.REFUSE


def test_make_check_reads_the_scan_section(tmp_path: Path) -> None:
    """The factory a route's ``object_checks: [scan]`` uses: fail_on and yara_dirs (relative to the file)."""
    from pacsguard.config.loader import load_config
    from pacsguard.runtime.part import ServiceContext, load_ref

    rules = tmp_path / "site-rules"
    rules.mkdir()
    (rules / "site.yar").write_text('rule site_marker { meta: level = "critical" strings: $a = "SITE-MARKER" '
                                    "condition: $a }\n")
    config = tmp_path / "pacsguard.yaml"
    config.write_text("scan:\n  fail_on: critical\n  yara_dirs: [site-rules]\n")
    loaded = load_config(config)
    factory = load_ref(Registry.default().object_checks()["scan"][1])
    check = factory(ServiceContext(loaded, loaded.section("scan"), None, None))  # type: ignore[arg-type]
    assert check.name == "scan" and check.fail_on == Level.CRITICAL
    elf = write(tmp_path, "elf.dcm", pe_in_preamble().replace(b"MZ", b"\x7fE", 1))  # high: below critical
    assert check.inspect(received(elf)).action is ObjectAction.FORWARD
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        marked = write(tmp_path, "marked.dcm", ct() + b"SITE-MARKER")
    verdict = check.inspect(received(marked))
    assert verdict.action is ObjectAction.QUARANTINE and verdict.rule == "yara.site_marker"


def test_notes_are_not_recorded_per_object(check: ScanCheck, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiff = write(tmp_path, "tiff.dcm", b"II*\x00" + ct()[4:])
    verdict = check.inspect(received(tiff))
    assert verdict.action is ObjectAction.FORWARD and verdict.events == ()
    assert [f.rule for f in check.scanner.scan_file(tiff).findings] == ["preamble.tiff"]
