"""A real Storage Commitment Push SCP (PS3.4 J.3) from pynetdicom, behind the gateway or on a
captured wire: Verification and CT Image Storage; each N-ACTION is answered Success, then its
N-EVENT-REPORT on the same association commits the instances it stored and fails the others
(0x0112, no such object instance, PS3.4 J.3.3.1.1)."""

from __future__ import annotations

import threading
import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StorageCommitmentPushModel,
    Verification,
)

from peers.dcmtk import free_port

#: The well-known Storage Commitment Push SOP Instance (PS3.4 J.3).
COMMIT_UID = "1.2.840.10008.1.20.1.1"


def referenced(*uids: str) -> list[Dataset]:
    """Referenced SOP Sequence items naming CT instances ``uids``."""
    items = []
    for uid in uids:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = str(CTImageStorage), uid
        items.append(item)
    return items


class CommitmentPacs:
    """The SCP on ``host`` (AE title UPSTREAM, a free port). ``server_token``: a User Identity
    asking for a positive response is confirmed with it. ``report_below``: only a request naming
    fewer instances is reported (None: every one). ``reports`` holds the status of each
    N-EVENT-REPORT-RSP the requestor sent back."""

    def __init__(self, host: str, *, server_token: bytes | None = None, report_below: int | None = None) -> None:
        self.ae = AE(ae_title="UPSTREAM")
        self.ae.add_supported_context(Verification)
        self.ae.add_supported_context(CTImageStorage)
        self.ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 20
        self.stored: set[str] = set()
        self.reports: list[int] = []
        self.report_below = report_below
        self.port = free_port(host)
        handlers: list[Any] = [(evt.EVT_C_STORE, self.store), (evt.EVT_N_ACTION, self.action)]
        if server_token is not None:
            handlers.append((evt.EVT_USER_ID, lambda event: (True, server_token)))
        self.server = self.ae.start_server((host, self.port), block=False, evt_handlers=handlers)

    def store(self, event: evt.Event) -> int:
        self.stored.add(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def action(self, event: evt.Event) -> tuple[int, None]:
        asked = event.action_information
        if self.report_below is None or len(asked.ReferencedSOPSequence) < self.report_below:
            threading.Thread(target=self.report, args=(event.assoc, asked), daemon=True).start()
        return 0x0000, None

    def report(self, assoc: Any, asked: Dataset) -> None:
        time.sleep(0.3)  # after the N-ACTION-RSP
        uids = [str(item.ReferencedSOPInstanceUID) for item in asked.ReferencedSOPSequence]
        answer = Dataset()
        answer.TransactionUID = asked.TransactionUID
        answer.ReferencedSOPSequence = referenced(*[u for u in uids if u in self.stored])
        failed = referenced(*[u for u in uids if u not in self.stored])
        for item in failed:
            item.FailureReason = 0x0112
        answer.FailedSOPSequence = failed
        rsp = assoc.send_n_event_report(answer, 2 if failed else 1, StorageCommitmentPushModel, COMMIT_UID)
        self.reports.append(int(rsp[0].Status) if rsp[0] else -1)

    def shutdown(self) -> None:
        self.server.shutdown()


def stored_then_asked(ae_title: str, host: str, port: int, bind: str,
                      objects: list[tuple[str, str, str]], transaction: str, unknown: str) -> tuple[Any, list[str]]:
    """A pynetdicom modality ``ae_title`` (from ``bind``) stores pydicom's CT_small.dcm as each of
    ``objects`` (SOP Instance UID, Patient ID, Study Instance UID) at ``host``:``port``, then on a
    new association asks for the commitment of those and of ``unknown`` (PS3.4 J.3.2) and waits
    for the N-EVENT-REPORT (J.3.3) on it. Returns that association, still open, and the UIDs
    stored."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pynetdicom import build_role

    modality = AE(ae_title=ae_title)
    modality.add_requested_context(CTImageStorage)
    modality.add_requested_context(StorageCommitmentPushModel)
    modality.acse_timeout = modality.dimse_timeout = modality.network_timeout = 20
    assoc = modality.associate(host, port, ae_title="GW", bind_address=(bind, 0))
    assert assoc.is_established
    stored = []
    for uid, patient, study in objects:
        ct = dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
        ct.SOPInstanceUID, ct.PatientID, ct.StudyInstanceUID = uid, patient, study
        assert assoc.send_c_store(ct).Status == 0x0000
        stored.append(uid)
    assoc.release()
    reports: list[Dataset] = []

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.append(event.event_information)
        return 0x0000, None

    asked = Dataset()
    asked.TransactionUID = transaction
    asked.ReferencedSOPSequence = referenced(*stored, unknown)
    assoc = modality.associate(host, port, ae_title="GW", bind_address=(bind, 0),
                               ext_neg=[build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)],
                               evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    assert assoc.is_established
    status, _ = assoc.send_n_action(asked, 1, StorageCommitmentPushModel, COMMIT_UID)
    assert status.Status == 0x0000
    deadline = time.monotonic() + 10
    while not reports and time.monotonic() < deadline:
        time.sleep(0.1)
    assert reports, "the PACS's N-EVENT-REPORT did not arrive through the gateway"
    return assoc, stored
