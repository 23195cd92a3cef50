"""The ``deidentify`` object check (gateway/objects.py seam): FORWARD with a de-identified
replacement and an Event holding original and new identifiers sealed under the key (never the
key, never either in clear), or REFUSE naming why; offered by the deid part to store-and-forward routes."""

from __future__ import annotations

import shutil
from pathlib import Path

from deid_helpers import KEY, engine, pydicom_files

from pacsguard.deid.files import read_whole
from pacsguard.deid.object_check import DeidentifyCheck, open_link
from pacsguard.gateway.objects import ObjectAction, ReceivedObject
from pacsguard.runtime.registry import Registry


def _received(path: Path) -> ReceivedObject:
    ds = read_whole(path)
    return ReceivedObject(path=path, sop_class_uid=ds.SOPClassUID, sop_instance_uid=ds.SOPInstanceUID,
                          transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, calling_ae="MODALITY",
                          called_ae="GATEWAY", peer_host="127.0.0.1", route="research")


def test_forward_with_replacement_and_a_linking_event(tmp_path: Path) -> None:
    source = tmp_path / "spooled.dcm"
    shutil.copy(next(p for p in pydicom_files() if p.name == "CT_small.dcm"), source)
    original = read_whole(source)
    verdict = DeidentifyCheck(engine(), KEY).inspect(_received(source))
    assert verdict.action is ObjectAction.FORWARD and verdict.replacement is not None
    new = read_whole(verdict.replacement)
    assert new.SOPInstanceUID != original.SOPInstanceUID
    (event,) = verdict.events
    assert event.kind == "deid.object.deidentified"
    assert event.details["key_fingerprint"] == KEY.fingerprint
    # The link is sealed under the key: only its holder opens it (docs/deid.md, Routes).
    opened, pseudonyms = open_link(KEY, event.details)
    assert opened["sop_instance_uid"] == original.SOPInstanceUID
    assert pseudonyms["sop_instance_uid"] == new.SOPInstanceUID
    assert pseudonyms["study_uid"] == new.StudyInstanceUID
    assert event.patient_ids == () and original.PatientID not in event.to_json()
    assert KEY.secret.hex() not in event.to_json()


def test_refuse_when_withheld(tmp_path: Path) -> None:
    source = tmp_path / "spooled.dcm"
    shutil.copy(next(p for p in pydicom_files() if p.name == "SC_rgb_small_odd.dcm"), source)
    verdict = DeidentifyCheck(engine(), KEY).inspect(_received(source))
    assert verdict.action is ObjectAction.REFUSE and verdict.replacement is None
    assert "clean-pixel-data" in verdict.reason
    (event,) = verdict.events
    assert event.kind == "deid.object.withheld"


def test_the_part_offers_the_check() -> None:
    part, ref = Registry.default().object_checks()["deidentify"]
    assert part.name == "deid" and ref == "pacsguard.deid.object_check:make_check"


def test_the_factory_takes_the_key_and_options_from_the_section(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from pacsguard.deid.config import DeidConfig
    from pacsguard.deid.keys import generate_key
    from pacsguard.deid.object_check import make_check
    from pacsguard.deid.profile import Option

    key = generate_key(tmp_path / "deid.key")
    section = DeidConfig(options=[Option.RETAIN_UIDS], key_file=Path("deid.key"))
    ctx = SimpleNamespace(section=section, resolve=lambda p: tmp_path / p)
    check = make_check(ctx)  # type: ignore[arg-type]
    assert check.fingerprint == key.fingerprint
    assert check.engine.settings.options == frozenset({Option.RETAIN_UIDS})
