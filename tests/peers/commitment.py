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
