"""Store-and-forward, outside round 4 (issue 19), through `pacsguard serve` and dcmtk's storescu:
the free-space floor counts an object once, `spool retry` reaches every destination, an orderly
stop of the whole process group records no forwarding failure, and an object whose metadata is
damaged is recorded, listed and purgeable."""

from __future__ import annotations

import json
import os
import signal

import pytest
import test_store_forward
from pydicom import dcmread
from test_store_forward import (
    CountingSCP,
    fresh_ct,
    sf_route,
    spooled,
    storescu_acknowledged,
    target,
    wait_until,
)

from peers.dcmtk import free_port

pytestmark = [pytest.mark.peers, pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]

# test_store_forward's fixtures: a 24 MiB tmpfs, and a counting Storage SCP.
small_disk = test_store_forward.small_disk
counter = test_store_forward.counter


def test_an_object_is_counted_once_against_the_free_space_floor(dcmtk, gateway, small_disk, tmp_path):
    """24 MiB free, 8 kept free: a 12 MiB object fits. Its written bytes were counted twice (missing
    from statvfs and still reserved), so anything past (free - floor) / 2 was refused 0xA700."""
    gw = gateway(sf_route("sf", (free_port(), "NOBODY"), spool={"directory": str(small_disk), "min_free_mib": 8}))
    files = fresh_ct(tmp_path / "big", 1, kib=12 * 1024)
    result = dcmtk.run("storescu", "-v", "-xe", *target(gw), *files, timeout=120)
    out = result.stdout + result.stderr
    assert "OutOfResources" not in out and len(storescu_acknowledged(out, files)) == 1, out[-3000:]
    assert not gw.events("gateway.object.refused")


def counter_on(port: int, monkeypatch: pytest.MonkeyPatch) -> CountingSCP:
    """test_store_forward's CountingSCP, listening on ``port`` (a destination that comes up late)."""
    monkeypatch.setattr(test_store_forward, "free_port", lambda: port)
    return CountingSCP()


def test_spool_retry_reaches_every_waiting_destination(dcmtk, gateway, tmp_path, monkeypatch):
    """The request was one file that the first forwarder to look deleted: the other destination
    waited out its backoff (40 s here)."""
    ports = [free_port(), free_port()]
    r = sf_route("sf", (ports[0], "COUNTER"), (ports[1], "COUNTER"), retry={"initial_delay": 40, "max_delay": 60})
    gw = gateway(r)
    files = fresh_ct(tmp_path / "ct", 2, kib=16)
    assert dcmtk.run("storescu", "-xe", *target(gw), *files, timeout=60).returncode == 0
    gw.wait_for("gateway.object.delayed", count=2, timeout=15)  # both failed once, both wait 40 s
    counters = [counter_on(port, monkeypatch) for port in ports]
    try:
        gw.cli("gateway", "spool", "retry")
        sent = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
        wait_until(lambda: all(set(c.counts) == sent for c in counters), 15, "both destinations retried now")
    finally:
        for c in counters:
            c.stop()


def test_an_orderly_stop_of_the_process_group_is_no_forwarding_failure(dcmtk, gateway, counter, tmp_path):
    """systemd's default KillMode=control-group sends SIGTERM to the gateway and its forwarding
    process at once: every stop recorded gateway.forwarding.restarted (error) "killed by SIGTERM"."""
    gw = gateway(sf_route("sf", (counter.port, "COUNTER")))
    files = fresh_ct(tmp_path / "ct", 2, kib=16)
    assert dcmtk.run("storescu", "-xe", *target(gw), *files, timeout=60).returncode == 0
    wait_until(lambda: len(counter.counts) == 2, 20, "forwarded")
    os.killpg(gw.proc.pid, signal.SIGTERM)
    assert gw.proc.wait(30) == 0
    assert gw.events("gateway.forwarding.restarted") == []
    assert "forwarding process ended" not in gw.log.read_text()


def test_an_object_with_damaged_metadata_is_recorded_listed_and_purgeable(dcmtk, gateway, counter, tmp_path):
    """It vanished: `spool list` said empty, show and purge said "no spooled object", nothing was
    logged or recorded, and its file stayed in objects/ for ever."""
    dead = free_port()
    gw = gateway(sf_route("sf", (dead, "NOBODY")))
    files = fresh_ct(tmp_path / "ct", 2, kib=16, patient="DAMAGED")
    assert dcmtk.run("storescu", "-xe", *target(gw), *files, timeout=60).returncode == 0
    gw.stop()
    objects = sorted(p.with_suffix(".json") for p in spooled(gw))
    objects[0].write_text('{"sop_instance_uid": "1.2.3", trunc')
    damaged = objects[0].stem
    gw.restart()
    event = gw.wait_for("gateway.spool.damaged", timeout=15)[0]
    assert event.details["spool_id"] == damaged and "not JSON" in event.details["reason"]
    listed = json.loads(gw.cli("gateway", "spool", "list", "--json").stdout)
    states = {e["id"]: (e["state"], e["pending"]) for e in listed}
    assert states[damaged] == ("damaged", []) and len(states) == 2, states
    shown = gw.cli("gateway", "spool", "show", damaged, "--json")
    assert "not JSON" in json.loads(shown.stdout)["damage"]
    gw.cli("gateway", "spool", "purge", damaged, "--yes")
    assert not list((gw.home / "var" / "spool" / "sf" / "objects").glob(f"{damaged}.*"))
    assert gw.wait_for("gateway.spool.purged")[0].details["states"] == ["damaged"]
