"""The one DICOM association record (pacsguard.records.dicom): which patients an exchange names,
what a request cut off by the end of the association becomes, and capture time."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pacsguard.dicom import dimse
from pacsguard.dicom.dataset import DatasetPeek
from pacsguard.dicom.dimse import CommandSet
from pacsguard.dicom.events import DimseCommand, DimseDatasetEnd, DimseDatasetStart
from pacsguard.events import Event, Outcome, Party
from pacsguard.records.dicom import AssociationRecord, capture_time, single_value

FIND = "1.2.840.10008.5.1.4.1.2.1.1"  # Patient Root Query/Retrieve - FIND
MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
CT = "1.2.840.10008.5.1.4.1.1.2"


def _record(**kw: object) -> tuple[AssociationRecord, list[Event]]:
    out: list[Event] = []
    rec = AssociationRecord(out.append, component="test", client=Party(ae_title="WS", host="10.0.0.5"),
                            server=Party(ae_title="PACS"), route="r", called_ae="GW", **kw)  # type: ignore[arg-type]
    return rec, out


def _rq(field: int, msg: int, sop: str, **kw: object) -> DimseCommand:
    cmd = CommandSet(command_field=field, message_id=msg, affected_sop_class_uid=sop,
                     command_data_set_type=0x0000, **kw)  # type: ignore[arg-type]
    return DimseCommand(True, 1, sop, "1.2.840.10008.1.2", cmd)


def _rsp(field: int, msg: int, status: int, *, has_dataset: bool = False, **kw: object) -> DimseCommand:
    cmd = CommandSet(command_field=field, message_id_being_responded_to=msg, status=status,
                     command_data_set_type=0x0000 if has_dataset else 0x0101, **kw)  # type: ignore[arg-type]
    return DimseCommand(False, 1, None, None, cmd)


def _data(from_requestor: bool, msg: int, **peek: object) -> DimseDatasetStart:
    return DimseDatasetStart(from_requestor, 1, msg, DatasetPeek(**peek))  # type: ignore[arg-type]


@pytest.mark.parametrize("key,one", [("PAT1", True), (" PAT1 ", True), ("*", False), ("PAT*", False),
                                     ("P?T1", False), ("", False), ("   ", False), (None, False),
                                     ("PAT1\\PAT2", False)])
def test_single_value_follows_ps34_matching(key: str | None, one: bool) -> None:
    assert single_value(key) is one


def test_wildcard_find_names_only_the_patients_its_matches_disclosed() -> None:
    rec, out = _record()
    rec.command(_rq(dimse.C_FIND_RQ, 7, FIND))
    rec.dataset_start(_data(True, 7, patient_id="*", query_retrieve_level="PATIENT"))
    for pid in ("A1", "B2"):
        rec.command(_rsp(dimse.C_FIND_RSP, 7, dimse.STATUS_PENDING, has_dataset=True))
        rec.dataset_start(_data(False, 7, patient_id=pid))
    rec.command(_rsp(dimse.C_FIND_RSP, 7, dimse.STATUS_SUCCESS))
    (find,) = out
    assert find.kind == "dicom.dimse.c-find"
    assert find.patient_ids == ("A1", "B2")  # never "*"
    assert find.details["query"] == {"PatientID": "*"} and find.details["responses"] == 2


def test_exact_find_without_matches_names_nobody_but_keeps_the_key() -> None:
    rec, out = _record()
    rec.command(_rq(dimse.C_FIND_RQ, 1, FIND))
    rec.dataset_start(_data(True, 1, patient_id="PAT9", query_retrieve_level="PATIENT"))
    rec.command(_rsp(dimse.C_FIND_RSP, 1, dimse.STATUS_SUCCESS))
    assert out[0].patient_ids == () and out[0].details["query"]["PatientID"] == "PAT9"


@pytest.mark.parametrize("key,completed,named", [("PAT1", 3, ("PAT1",)), ("PAT1", 0, ()), ("PAT*", 3, ())])
def test_a_retrieve_names_its_exact_patient_once_objects_moved(key: str, completed: int, named: tuple) -> None:
    rec, out = _record()
    rec.command(_rq(dimse.C_MOVE_RQ, 2, MOVE, move_destination="WS"))
    rec.dataset_start(_data(True, 2, patient_id=key, query_retrieve_level="PATIENT"))
    rec.command(_rsp(dimse.C_MOVE_RSP, 2, dimse.STATUS_SUCCESS, completed_suboperations=completed,
                     failed_suboperations=0, warning_suboperations=0, remaining_suboperations=0))
    (move,) = out
    assert move.patient_ids == named and move.sop_instance_count == completed


def test_store_names_the_objects_patient_and_counts_bytes() -> None:
    rec, out = _record()
    rec.command(_rq(dimse.C_STORE_RQ, 3, CT, affected_sop_instance_uid="1.2.3"))
    rec.dataset_start(_data(True, 3, patient_id="PAT2", study_instance_uid="1.2.9", sop_instance_uid="1.2.3"))
    rec.dataset_end(DimseDatasetEnd(True, 3, 4096))
    rec.command(_rsp(dimse.C_STORE_RSP, 3, dimse.STATUS_SUCCESS))
    (store,) = out
    assert (store.patient_ids, store.study_uids, store.sop_instance_count) == (("PAT2",), ("1.2.9",), 1)
    assert store.details["bytes"] == 4096 and store.details["sop_instance"] == "1.2.3"
    assert store.actor.ae_title == "WS" and store.target.ae_title == "PACS"


def test_requests_in_flight_at_the_end_are_recorded_as_aborted_before_the_phase() -> None:
    rec, out = _record()
    rec.command(_rq(dimse.C_STORE_RQ, 4, CT))
    rec.ended("aborted", outcome=Outcome.SERIOUS_FAILURE, by="client")
    assert [e.kind for e in out] == ["dicom.dimse.c-store", "dicom.association.aborted"]
    assert out[0].details["decision"] == "aborted" and out[0].outcome == Outcome.SERIOUS_FAILURE
    assert out[1].details["by"] == "client" and out[1].details["called_ae"] == "GW"


def test_an_untracked_request_leaves_no_record() -> None:
    rec, out = _record()
    rec.request(_rq(dimse.C_STORE_RQ, 5, CT))  # judged and aborted before it was tracked
    rec.ended("aborted", by="client")
    assert [e.kind for e in out] == ["dicom.association.aborted"]


def test_capture_clock_sets_event_time_and_durations() -> None:
    now = [1_700_000_000.0]
    rec, out = _record(clock=lambda: now[0], wallclock=lambda: capture_time(now[0]), flow="C1", sensor="s1")
    rec.command(_rq(dimse.C_STORE_RQ, 6, CT))
    now[0] += 0.25
    rec.command(_rsp(dimse.C_STORE_RSP, 6, dimse.STATUS_SUCCESS))
    (store,) = out
    assert store.time == datetime.fromtimestamp(1_700_000_000.25, timezone.utc)
    assert store.details["duration_ms"] == 250.0
    assert store.details["flow"] == "C1" and store.details["sensor"] == "s1"
