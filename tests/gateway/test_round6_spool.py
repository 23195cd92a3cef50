"""Round 6, store-and-forward spool: a purge whose store fails part way deletes only what was
recorded, and says how many it purged and what stopped it (exit 2); a deflated data set is walked
whole however far it inflates (up to structure.MAX_INFLATED), not its first 16 MiB only."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from playbook import MAX_PDU, request
from pydicom.data import get_testdata_file
from saf_spool import spool_file
from test_durable import Gate
from test_store_forward_scp import Client, answers, route_under_test, status_of
from typer.testing import CliRunner

from pacsguard.cli import main
from pacsguard.config.schema import Route
from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.gateway.store_forward import structure
from pacsguard.gateway.store_forward.spool import Spool, SpooledMeta
from pacsguard.store import EventStore
from pacsguard.store.search import EventQuery
from peers.dcmtk import free_port_in

CT = Path(get_testdata_file("CT_small.dcm"))
PURGED = "gateway.spool.purged"


def _two_routes(tmp_path: Path) -> Path:
    """A configuration of two store-and-forward routes, a (first) and b, each with its own spool."""
    config = tmp_path / "pacsguard.yaml"
    routes = "".join(f"""
    - name: {name}
      mode: store-and-forward
      listen: {{host: 127.0.63.1, port: {port}, ae_title: GW}}
      destinations: [{{name: archive, host: 127.0.63.2, port: 22900, ae_title: ARCHIVE}}]
      spool: {{directory: spool-{name}, min_free_mib: 0}}
""" for name, port in (("a", 22001), ("b", 22002)))
    config.write_text(f"store: {{url: var/pacsguard.db}}\ngateway:\n  routes:{routes}")
    return config


def _spooled(tmp_path: Path, name: str, count: int) -> tuple[Spool, list[SpooledMeta]]:
    spool = Spool(tmp_path / f"spool-{name}")
    spool.open()
    metas = [spool_file(spool, CT, ["archive"]) for _ in range(count)]
    spool.close()
    return spool, metas


def _store_that_fills_after_one_record(path: Path) -> None:
    """An SQLite store that takes one more event, then refuses every insert as a full disk would
    (SQLITE_FULL's words), from inside the database: a real store failure, after some records."""
    EventStore.open(str(path), create=True).close()
    with sqlite3.connect(path) as db:
        (held,) = db.execute("SELECT count(*) FROM events").fetchone()
        db.execute(f"CREATE TRIGGER fill BEFORE INSERT ON events WHEN (SELECT count(*) FROM events) > {held} "
                   "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")


def _purge_events(path: Path) -> list[dict[str, object]]:
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER fill")
    store = EventStore.open(str(path))
    try:
        return [dict(s.event.details) for s in store.search(EventQuery(kind=PURGED))]
    finally:
        store.close()


def _exists(spool: Spool, meta: SpooledMeta) -> bool:
    return spool.object_path(meta.id).exists() and (spool.objects / f"{meta.id}.json").exists()


def test_a_store_that_fills_part_way_keeps_what_it_did_not_record(tmp_path: Path) -> None:
    """The first route's record lands and its objects go; the second's does not land, so its
    objects stay, and the command says 1 of 3 purged and what stopped it (exit 2)."""
    config = _two_routes(tmp_path)
    spool_a, [first] = _spooled(tmp_path, "a", 1)
    spool_b, second = _spooled(tmp_path, "b", 2)
    db = tmp_path / "audit.db"
    _store_that_fills_after_one_record(db)
    result = CliRunner().invoke(main.app, ["gateway", "spool", "purge", "--yes", "-c", str(config),
                                           "--store", str(db)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "purged 1 of 3 object(s)" in text and "stopped at route b" in text, text
    assert "database or disk is full" in text and "were not deleted" in text, text
    assert "Traceback" not in result.output
    assert not _exists(spool_a, first)  # recorded, then deleted
    assert all(_exists(spool_b, meta) for meta in second)  # not recorded: kept
    recorded = _purge_events(db)
    assert [d["route"] for d in recorded] == ["a"] and recorded[0]["spool_ids"] == [first.id], recorded


def test_a_locked_store_deletes_nothing_and_says_so(tmp_path: Path) -> None:
    """Another writer holds the SQLite database (BEGIN EXCLUSIVE) for the whole purge: nothing is
    recorded, so nothing is deleted; "purged 0 of 1" names the store's error."""
    config = _two_routes(tmp_path)
    spool_a, [only] = _spooled(tmp_path, "a", 1)
    db = tmp_path / "audit.db"
    EventStore.open(str(db), create=True).close()
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("PRAGMA busy_timeout=0")
        holder.execute("BEGIN EXCLUSIVE")
        result = CliRunner().invoke(main.app, ["gateway", "spool", "purge", "--yes", "--route", "a",
                                               "-c", str(config), "--store", str(db)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "purged 0 of 1 object(s); stopped at route a" in text and "locked" in text, text
    assert _exists(spool_a, only)


def test_a_purge_that_works_records_every_route_before_it_deletes(tmp_path: Path) -> None:
    """The ordinary case still purges all and records one event per route."""
    config = _two_routes(tmp_path)
    spool_a, [first] = _spooled(tmp_path, "a", 1)
    spool_b, [second] = _spooled(tmp_path, "b", 1)
    db = tmp_path / "audit.db"
    EventStore.open(str(db), create=True).close()
    result = CliRunner().invoke(main.app, ["gateway", "spool", "purge", "--yes", "-c", str(config),
                                           "--store", str(db)])
    assert result.exit_code == 0, result.output
    assert "purged 2 object(s)" in result.output
    assert not _exists(spool_a, first) and not _exists(spool_b, second)
    store = EventStore.open(str(db))
    try:
        routes = sorted(str(s.event.details["route"]) for s in store.search(EventQuery(kind=PURGED)))
    finally:
        store.close()
    assert routes == ["a", "b"]


# --- deflated data sets that inflate past 16 MiB ---------------------------------------------------

DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian (PS3.5 A.5)
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE = "1.2.3.63"
PIXELS = 20 * 1024 * 1024  # past the 16 MiB that were walked before round 6


def _element(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    """An Explicit VR Little Endian element (PS3.5 Table 7.1-1/7.1-2); ``length`` as announced."""
    size = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, size) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, size) + value


def _big_ct(*, announce_more: int = 0, tail: bytes = b"") -> bytes:
    """A CT data set whose pixel data inflate to 20 MiB: it announces ``announce_more`` bytes more
    than it holds, and ``tail`` follows it."""
    head = (_element(0x00080016, b"UI", CT_STORAGE.encode() + b"\0")
            + _element(0x00080018, b"UI", INSTANCE.encode())
            + _element(0x00100020, b"LO", b"R6DFL "))
    return head + _element(0x7FE00010, b"OB", bytes(PIXELS), PIXELS + announce_more) + tail


def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate (PS3.5 A.5)
    out = packer.compress(data) + packer.flush()
    return out + b"\0" * (len(out) % 2)


def _walk(tmp_path: Path, deflated: bytes, **limit: int) -> structure.Flaw | None:
    path = tmp_path / "ds"
    path.write_bytes(b"HEAD" + deflated)
    fd = os.open(path, os.O_RDONLY)
    try:
        return structure.walk_deflated(fd, 4, 4 + len(deflated), **limit)
    finally:
        os.close(fd)


BAD_VR_PAST_16_MIB = _element(0x00091010, b"ZZ", b"ab")


def test_a_flaw_past_16_mib_inflated_is_found(tmp_path: Path) -> None:
    """An element past the first 16 MiB inflated was never judged: acknowledged, then refused by
    every destination for ever."""
    assert _walk(tmp_path, _deflate(_big_ct())) is None  # the whole 20 MiB holds together
    flaw = _walk(tmp_path, _deflate(_big_ct(tail=BAD_VR_PAST_16_MIB)))
    assert flaw is not None and "(0009,1010)" in flaw.reason and "value representation" in flaw.reason, flaw
    assert flaw.offset > 16 * 1024 * 1024 and "inflated" in flaw.reason


def test_a_value_that_runs_past_the_inflated_end_is_found(tmp_path: Path) -> None:
    """The pixel data announce 1,000 bytes more than the stream holds: only the end shows it."""
    flaw = _walk(tmp_path, _deflate(_big_ct(announce_more=1000)))
    assert flaw is not None and "(7FE0,0010)" in flaw.reason and "announces" in flaw.reason, flaw


def test_a_stream_that_inflates_past_the_bound_is_refused_unjudged(tmp_path: Path) -> None:
    flaw = _walk(tmp_path, _deflate(_big_ct()), max_inflated=8 * 1024 * 1024)
    assert flaw is not None and "inflates to more than 8,388,608 bytes" in flaw.reason, flaw


def test_the_walk_holds_a_window_not_the_inflated_data_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of 4 KiB still find the flaw past 20 MiB and pass the sound data set: the walk keeps
    its place from one window to the next."""
    monkeypatch.setattr(structure, "INFLATE_LIMIT", 4096)
    assert _walk(tmp_path, _deflate(_big_ct())) is None
    flaw = _walk(tmp_path, _deflate(_big_ct(tail=BAD_VR_PAST_16_MIB)))
    assert flaw is not None and "(0009,1010)" in flaw.reason, flaw


def _listen_port(host: str) -> int:
    """A free port of this helper's range (22000-22999) on ``host``."""
    return free_port_in(host, range(22600, 22700))


def _deflated_route(tmp_path: Path) -> Route:
    host = "127.0.63.6"
    return Route.model_validate({
        "name": "r6dfl", "mode": "store-and-forward",
        "listen": {"host": host, "port": _listen_port(host), "ae_title": "PACSGUARD"},
        "destinations": [{"host": "127.0.63.7", "port": 22999, "ae_title": "NOBODY", "connect_timeout": 1}],
        "spool": {"directory": str(tmp_path / "spool"), "min_free_mib": 0},
        "retry": {"initial_delay": 30, "max_delay": 30}})


def _send(route: Route, datasets: list[bytes]) -> tuple[list[int | None], list[Any]]:
    """Associate with ``route`` (CT Image Storage, deflated only) on a raw socket, send each data set
    as a C-STORE, and return the statuses and the route's Events."""
    gate = Gate()
    sf, bus, published = route_under_test(route, gate, 0.5)
    statuses: list[int | None] = []

    async def main() -> None:
        port = await sf.start()
        reader, writer = await asyncio.wait_for(asyncio.open_connection(route.listen.host, port), 10)
        client = Client(reader, writer)
        try:
            await client.send(P.encode_associate_rq(P.AssociateRQ(
                called_ae_title="PACSGUARD", calling_ae_title="WS1",
                presentation_contexts=[P.PresentationContextRQ(1, CT_STORAGE, [DEFLATED])],
                user_information=P.UserInformation.build(max_length=MAX_PDU, implementation_class_uid="1.2.3"))))
            [ac] = await client.read(10)
            assert isinstance(ac, P.AssociateAC) and ac.presentation_contexts[0].transfer_syntax == DEFLATED
            for n, data in enumerate(datasets, start=1):
                command = dimse.CommandSet(dimse.C_STORE_RQ, message_id=n, affected_sop_class_uid=CT_STORAGE,
                                           affected_sop_instance_uid=INSTANCE, priority=0,
                                           command_data_set_type=0x0000)
                await client.send(request(command, _deflate(data)))
                statuses.append(status_of((await answers(client, 1))[0]))
            await client.send(P.encode_release_rq())
            await client.read(10)
        finally:
            writer.close()
            await sf.stop(grace=1.0)

    try:
        asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        gate.close()
        bus.close(5)
    return statuses, published


def test_a_route_refuses_a_deflated_data_set_flawed_past_16_mib(tmp_path: Path) -> None:
    """A store-and-forward route on loopback, a C-STORE of each data set over a deflated context:
    the sound one is Success and spooled, the one flawed past 16 MiB is 0xC000 and recorded with
    the element and its offset; before round 6 both were Success."""
    statuses, published = _send(_deflated_route(tmp_path), [_big_ct(), _big_ct(tail=BAD_VR_PAST_16_MIB)])
    assert statuses == [dimse.STATUS_SUCCESS, dimse.STATUS_CANNOT_UNDERSTAND], [f"0x{s or 0:04X}" for s in statuses]
    [refused] = [e for e in published if e.kind == "gateway.object.refused"]
    assert refused.details["rule"] == "c-store.data-set-structure" and "(0009,1010)" in refused.details["reason"]
    assert len([e for e in published if e.kind == "gateway.object.received"]) == 1
