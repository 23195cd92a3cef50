"""Outbound (round 8): pacsguard killed (SIGKILL, a power cut) between its store taking an Event
and the feed spooling it. The store is durable first; what it took and the spool did not is
spooled at the next start, each message once, in the store's order (nothing accepted is lost)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pacsguard.atna.message import dicom_xml
from pacsguard.atna.outbound.forwarder import Forwarder
from pacsguard.atna.outbound.spool import Spool
from pacsguard.events.model import Event, Party
from pacsguard.events.subscription import Subscription
from pacsguard.store import EventStore

CT, PACS = Party("CT01", "10.20.0.9", 104), Party("PACS", "10.20.0.2", 104)
N = 40


def stores(i: int) -> Event:
    """The gateway's record of the i-th image of a CT (one patient per image: each message named)."""
    return Event(kind="dicom.dimse.c-store", component="gateway", actor=CT, target=PACS,
                 patient_ids=(f"PID-{i}",), study_uids=("1.2.3",), sop_instance_count=1,
                 details={"route": "main", "message_id": i, "sop_class": "1.2.840.10008.5.1.4.1.1.2",
                          "status": "0x0000"})


def released() -> Event:
    return Event(kind="dicom.association.released", component="gateway", actor=CT, target=PACS)


def started() -> Event:
    return Event(kind="pacsguard.service.started", component="serve", details={"config": "x"})


def run(spool_path: Path, store: EventStore) -> tuple[Forwarder, Spool, Subscription]:
    """One run of serve's feed: serve records its start, then the feed follows the store."""
    since = store.size()
    store.append([started()])
    spool = Spool(spool_path)
    forward = Forwarder(spool, "site-a")
    subscription = forward.follow(Subscription, store, since)
    return forward, spool, subscription


def spooled_patients(spool: Spool, event_id: str = "110104") -> list[str]:
    """The Patient IDs of the spooled messages of ``event_id`` (by default Instances Transferred;
    a Begin Transferring, PS3.15 A.5.3.5, 110102, names the same patient), in spool order."""
    out: list[str] = []
    for _, message in spool.after(0, limit=100_000):
        parsed = dicom_xml.parse_xml(message)
        if parsed.find(f"EventIdentification/EventID[@csd-code='{event_id}']") is None:
            continue
        out += [o.get("ParticipantObjectID", "") for o in parsed.iter("ParticipantObjectIdentification")
                if o.get("ParticipantObjectTypeCode") == "1"]
    return out


@pytest.mark.parametrize("taken", [0, 13, N], ids=["killed-before-any", "killed-mid-stream", "all-taken"])
def test_what_the_store_took_before_a_kill_is_spooled_at_the_next_start(
        tmp_path: Path, taken: int, caplog: pytest.LogCaptureFixture) -> None:
    store = EventStore.open(str(tmp_path / "pacsguard.db"), create=True)
    try:
        forward, spool, subscription = run(tmp_path / "spool.db", store)
        batch = [e for i in range(1, N + 1) for e in (stores(i), released())]
        store.append(batch)
        for event in batch[:2 * taken]:  # what the subscription handed over before the kill
            forward(event)
        subscription.unsubscribe(0)
        spool.close()  # SIGKILL: what is committed stays, nothing else happens

        with caplog.at_level(logging.WARNING, logger="pacsguard.atna.outbound"):
            forward, spool, subscription = run(tmp_path / "spool.db", store)
        try:
            assert spooled_patients(spool) == [f"PID-{i}" for i in range(1, N + 1)]  # each once, in order
            starts = [m for _, m in spool.after(0, limit=100_000) if b'csd-code="110120"' in m]
            assert len(starts) == 2  # both runs' Application Start, once each
            if taken < N:  # each image's Begin Transferring and Instances Transferred (PS3.15 A.5.3.5)
                assert f"{2 * (N - taken)} audit messages" in caplog.text
            else:
                assert "audit messages" not in caplog.text
        finally:
            subscription.unsubscribe(0)
            spool.close()
    finally:
        store.close()


def test_a_spool_full_at_the_kill_does_not_spool_what_it_held_back(tmp_path: Path) -> None:
    """A message held back at the bound was dealt with (counted, recorded): not spooled later."""
    store = EventStore.open(str(tmp_path / "pacsguard.db"), create=True)
    try:
        forward, spool, subscription = run(tmp_path / "spool.db", store)
        spool.max_bytes = spool.size  # full from now on
        batch = [stores(i) for i in range(1, 6)]
        store.append(batch)
        for event in batch:
            forward(event)
        assert spool.held == 10  # with each patient's Begin Transferring (PS3.15 A.5.3.5)
        subscription.unsubscribe(0)
        spool.close()
        forward, spool, subscription = run(tmp_path / "spool.db", store)
        try:
            assert spooled_patients(spool) == [] and spool.held == 10
        finally:
            subscription.unsubscribe(0)
            spool.close()
    finally:
        store.close()


def test_an_event_older_than_the_newest_thousand_is_found_from_the_run_start(tmp_path: Path) -> None:
    """Killed far behind: the last spooled Event is not among the store's newest 1,000, so the
    store is read from where the run began."""
    store = EventStore.open(str(tmp_path / "pacsguard.db"), create=True)
    try:
        forward, spool, subscription = run(tmp_path / "spool.db", store)
        first = [stores(i) for i in range(1, 6)]
        store.append(first)
        for event in first:
            forward(event)
        store.append([released() for _ in range(1200)] + [stores(i) for i in range(6, 9)])
        subscription.unsubscribe(0)
        spool.close()
        forward, spool, subscription = run(tmp_path / "spool.db", store)
        try:
            assert spooled_patients(spool) == [f"PID-{i}" for i in range(1, 9)]
        finally:
            subscription.unsubscribe(0)
            spool.close()
    finally:
        store.close()
