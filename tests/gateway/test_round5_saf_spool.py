"""Round 5, store-and-forward spool (issue 19): the high-water mark counts quarantine/, a purge
that cannot be recorded deletes nothing, deflated data sets are checked before Success, objects
spooled for a destination the configuration no longer has are named, and an object whose file is
gone is listed and recorded as damaged."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from saf_spool import spool_file
from typer.testing import CliRunner

from pacsguard.cli import main
from pacsguard.config.schema import Route
from pacsguard.events import Event
from pacsguard.gateway.quarantine import QuarantineList
from pacsguard.gateway.store_forward import records, structure
from pacsguard.gateway.store_forward.route import StoreForwardRoute
from pacsguard.gateway.store_forward.spool import Spool

DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian (PS3.5 A.5)
CT = get_testdata_file("CT_small.dcm")


# --- the high-water mark ------------------------------------------------------------------------

def test_the_spools_usage_counts_quarantined_objects_too(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    waiting = spool_file(spool, Path(CT), ["archive"])
    received = spool.receive("q1", b"\0" * 3000)
    spool.quarantine(received, "q1", {"object": waiting.to_json()})
    usage = spool.usage()
    assert (usage.waiting, usage.quarantined, usage.quarantined_bytes) == (1, 1, 3000)
    assert usage.bytes == waiting.bytes + 3000 and usage.objects == 2
    event = records.high_water("sf", usage, 0.001)
    assert event.details["bytes"] == usage.bytes and "1 quarantined" in event.message


# --- a purge that cannot be recorded -------------------------------------------------------------

def _config(tmp_path: Path, destinations: str, store: str = "var/pacsguard.db") -> Path:
    config = tmp_path / "pacsguard.yaml"
    config.write_text(f"""
store: {{url: {store}, signing_key: var/keys/store-signing.key}}
gateway:
  routes:
    - name: sf
      mode: store-and-forward
      listen: {{host: 127.0.0.1, port: 11112, ae_title: GW}}
      destinations: {destinations}
      spool: {{directory: spool, min_free_mib: 0}}
""")
    return config


def _one_spooled(tmp_path: Path, destination: str) -> tuple[Path, Spool, Any]:
    """A route configured with ``destination`` and one CT spooled for the destination "archive"."""
    config = _config(tmp_path, f"[{{name: {destination}, host: 127.0.0.1, port: 104, ae_title: ARCHIVE}}]")
    spool = Spool(tmp_path / "spool")
    spool.open()
    kept = spool_file(spool, Path(CT), ["archive"])
    spool.close()
    return config, spool, kept


def test_a_purge_that_cannot_be_recorded_deletes_nothing(tmp_path: Path) -> None:
    config, spool, kept = _one_spooled(tmp_path, "archive")
    result = CliRunner().invoke(main.app, ["gateway", "spool", "purge", kept.id, "--yes", "-c", str(config),
                                           "--store", str(tmp_path / "no-such-dir" / "x.db")])
    assert result.exit_code != 0, result.output
    assert spool.object_path(kept.id).exists() and (spool.objects / f"{kept.id}.json").exists()


# --- deflated data sets --------------------------------------------------------------------------

def _explicit(path: str | None = CT) -> bytes:
    ds = dcmread(path)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = c.compress(data) + c.flush()
    return out + b"\0" * (len(out) % 2)


def _walk(tmp_path: Path, data: bytes) -> structure.Flaw | None:
    path = tmp_path / "ds"
    path.write_bytes(b"HEAD" + data)
    fd = os.open(path, os.O_RDONLY)
    try:
        return structure.walk_file(fd, 4, 4 + len(data), DEFLATED)
    finally:
        os.close(fd)


def _lying_pixel_data(plain: bytes, more: int = 1000) -> bytes:
    i = plain.rfind(struct.pack("<HH", 0x7FE0, 0x0010))
    (n,) = struct.unpack("<I", plain[i + 8:i + 12])
    return plain[:i + 8] + struct.pack("<I", n + more) + plain[i + 12:]


def test_a_deflated_data_set_that_holds_together_passes(tmp_path: Path) -> None:
    assert _walk(tmp_path, _deflate(_explicit())) is None


def test_a_deflated_data_set_of_odd_length_is_a_flaw(tmp_path: Path) -> None:
    raw = Path(get_testdata_file("image_dfl.dcm")).read_bytes()
    data = raw[144 + int.from_bytes(raw[140:144], "little"):]  # as it is on disk: 4,303 bytes
    flaw = _walk(tmp_path, data)
    assert flaw is not None and "odd length" in flaw.reason


def test_a_deflated_stream_that_does_not_inflate_is_a_flaw(tmp_path: Path) -> None:
    flaw = _walk(tmp_path, b"\xff" * 64)
    assert flaw is not None and "does not inflate" in flaw.reason


def test_a_deflated_data_set_whose_inflated_elements_overrun_is_a_flaw(tmp_path: Path) -> None:
    flaw = _walk(tmp_path, _deflate(_lying_pixel_data(_explicit())))
    assert flaw is not None and "(7FE0,0010)" in flaw.reason and "inflated" in flaw.reason


def test_past_the_inflate_limit_what_was_inflated_is_walked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _explicit()
    monkeypatch.setattr(structure, "INFLATE_LIMIT", len(plain) // 2)  # into the pixel data
    assert _walk(tmp_path, _deflate(plain)) is None  # running out of inflated bytes is no flaw
    i = plain.find(struct.pack("<HH", 0x0008, 0x0016))  # SOP Class UID, near the start: a bad VR
    broken = plain[:i + 4] + b"ZZ" + plain[i + 6:]
    flaw = _walk(tmp_path, _deflate(broken))
    assert flaw is not None and "value representation" in flaw.reason


# --- a destination renamed, moved or removed -----------------------------------------------------

def _route(tmp_path: Path, destinations: list[dict[str, object]]) -> Route:
    return Route.model_validate({"name": "sf", "mode": "store-and-forward",
                                 "listen": {"host": "127.0.0.1", "port": 11112, "ae_title": "GW"},
                                 "destinations": destinations,
                                 "spool": {"directory": str(tmp_path / "spool"), "min_free_mib": 0}})


def _started(route: Route) -> tuple[StoreForwardRoute, list[Event]]:
    published: list[Event] = []

    def publish(event: Event) -> None:
        published.append(event)

    sf = StoreForwardRoute(route, [], publish=publish, quarantined=QuarantineList(), quarantine=lambda *a, **k: None)
    sf.forwarding.start = lambda waiting=None: None  # type: ignore[method-assign]  # no child process here
    return sf, published


def test_objects_spooled_for_a_destination_no_longer_configured_are_named_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.open()
    old = spool_file(spool, Path(CT), ["ARCHIVE-127.0.0.1-104"])  # unnamed: AET-HOST-PORT
    both = spool_file(spool, Path(CT), ["ARCHIVE-127.0.0.1-104", "vna"])
    spool.close()
    # The archive moved to port 105: its key is now ARCHIVE-127.0.0.1-105.
    sf, published = _started(_route(tmp_path, [{"host": "127.0.0.1", "port": 105, "ae_title": "ARCHIVE"},
                                               {"name": "vna", "host": "127.0.0.1", "port": 106, "ae_title": "VNA"}]))
    try:
        resuming = sf._start_forwarders()
    finally:
        sf.spool.close()
        sf._meta_writer.shutdown()
    assert resuming == 1  # only `both` still waits for a configured destination (vna)
    stranded = [e for e in published if e.kind == records.UNDELIVERABLE]
    assert sorted(e.details["spool_id"] for e in stranded) == sorted([old.id, both.id])
    assert all(e.details["destination"] == "ARCHIVE-127.0.0.1-104" for e in stranded)
    assert "name: ARCHIVE-127.0.0.1-104" in stranded[0].details["reason"]
    assert "spool purge" in stranded[0].details["reason"]
    assert stranded[0].patient_ids  # the audit trail names whose data waits


def test_spool_list_names_a_destination_no_longer_configured(tmp_path: Path) -> None:
    config, spool, kept = _one_spooled(tmp_path, "archive2")
    listed = CliRunner().invoke(main.app, ["gateway", "spool", "list", "--json", "-c", str(config)])
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.output)
    assert entry["id"] == kept.id and entry["unconfigured"] == ["archive"]
    table = CliRunner().invoke(main.app, ["gateway", "spool", "list", "-c", str(config)])
    assert "no longer" in table.output and "name: archive" in table.output


# --- an object whose file is gone ---------------------------------------------------------------

def test_an_object_whose_file_is_gone_is_damaged_listed_and_recorded(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.open()
    gone = spool_file(spool, Path(CT), ["archive"])
    spool.object_path(gone.id).unlink()
    spool.close()
    (entry,) = list(spool.entries())
    assert entry.state == "damaged" and "missing" in entry.damage and entry.pending == []
    sf, published = _started(_route(tmp_path, [{"name": "archive", "host": "127.0.0.1", "port": 104,
                                                "ae_title": "ARCHIVE"}]))
    try:
        assert sf._start_forwarders() == 0
    finally:
        sf.spool.close()
        sf._meta_writer.shutdown()
    (damaged,) = [e for e in published if e.kind == records.DAMAGED]
    assert damaged.details["spool_id"] == gone.id and "missing" in damaged.details["reason"]
    assert damaged.patient_ids == (gone.patient_id,)


def test_an_object_being_finished_is_not_listed_as_damaged(tmp_path: Path) -> None:
    """Its file goes first, then its ID.json (Spool.finish_if_done): every destination has it."""
    spool = Spool(tmp_path / "spool")
    spool.open()
    done = spool_file(spool, Path(CT), ["archive"])
    spool.mark_sent(done.id, "archive")
    spool.object_path(done.id).unlink()
    assert [e.state for e in spool.entries()] == ["queued"]
    spool.close()
