"""Store-and-forward, outside round 7 (issue 19): an object larger than a file in the spool may
be. With a file size limit (the service's RLIMIT_FSIZE, systemd's LimitFSIZE=, or a file
system's largest file) write(2) fails with EFBIG. The route answered 0x0110 (processing failure,
a general status PS3.4 B.2.3 does not list for a C-STORE: dcmtk's storescu shows "Unknown
Status: 0x110") and said only "File too large". It is the SCP lacking room for the object: 0xA700
(Out of Resources), with a reason naming the limit. The gateway goes on receiving.

`pacsguard serve` under prlimit(1), dcmtk's storescu as the modality, on 127.0.62.5."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from gateway_under_test import RunningGateway
from test_store_forward import CALLING, fresh_ct, storescu_acknowledged

from peers.dcmtk import free_port, wait_for_port

pytestmark = [pytest.mark.peers, pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]

HOST = "127.0.62.5"  # this round's own loopback address
FSIZE = 8 << 20  # bytes a file of the gateway may have


def saf_route(*, retry_delay: float = 5) -> dict:
    """A store-and-forward route on HOST whose destination does not answer (the objects stay
    spooled, where the tests look for them)."""
    return {"name": "sf", "mode": "store-and-forward",
            "listen": {"host": HOST, "port": free_port(HOST), "ae_title": "PACSGUARD"},
            "policy": {"calling_ae_titles": [CALLING], "hosts": ["127.0.0.0/8"]},
            "destinations": [{"name": "d0", "host": HOST, "port": free_port(HOST), "ae_title": "NOBODY",
                              "connect_timeout": 3}],
            "spool": {"min_free_mib": 1}, "retry": {"initial_delay": retry_delay, "max_delay": retry_delay}}


def start_gateway(home: Path, route: dict, prefix: list[str] | None = None,
                  prepare: Callable[[Path], None] | None = None) -> RunningGateway:
    """`pacsguard init` and `pacsguard serve` (after ``prefix``, e.g. prlimit) in ``home`` with
    ``route``; ``prepare(home)`` runs between the two. Returns once the route listens."""
    home.mkdir(parents=True, exist_ok=True)
    config = {"store": {"url": "var/pacsguard.db", "checkpoint_interval": 5}, "gateway": {"routes": [route]}}
    (home / "pacsguard.yaml").write_text(yaml.safe_dump(config))
    program = [sys.executable, "-m", "pacsguard.cli"]
    init = subprocess.run([*program, "init", "--no-demo"], cwd=home, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stdout + init.stderr
    if prepare is not None:
        prepare(home)
    log = home / "serve.log"
    proc = subprocess.Popen([*(prefix or []), *program, "serve"], cwd=home, stdout=log.open("a"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    gw = RunningGateway(home, {"sf": route["listen"]["port"]}, proc, log, [route], program)
    if not wait_for_port(HOST, route["listen"]["port"], timeout=30, proc=proc):
        gw.stop()
        raise AssertionError(log.read_text())
    return gw


@pytest.fixture
def limited_gateway(tmp_path: Path) -> Iterator[RunningGateway]:
    """`pacsguard serve` with RLIMIT_FSIZE at 8 MiB, one route (`saf_route`)."""
    gw = start_gateway(tmp_path / "gw", saf_route(), ["prlimit", f"--fsize={FSIZE}"])
    try:
        yield gw
    finally:
        gw.stop()


def test_an_object_larger_than_a_spool_file_may_be_is_out_of_resources(dcmtk, limited_gateway: RunningGateway,
                                                                         tmp_path: Path) -> None:
    gw = limited_gateway
    big = fresh_ct(tmp_path / "big", 1, kib=10 * 1024)  # 10 MiB: past the limit
    small = fresh_ct(tmp_path / "small", 1, kib=64)
    target = ["-aet", CALLING, "-aec", "PACSGUARD", HOST, str(gw.port("sf"))]
    out = dcmtk.run("storescu", "-v", "-xe", *target, *big, timeout=60)
    said = out.stdout + out.stderr
    assert "Refused: OutOfResources" in said and "Unknown Status" not in said, said[-2000:]
    (refused,) = gw.wait_for("gateway.object.refused")
    assert refused.details["status"] == "0xA700"
    assert "File too large" in refused.details["reason"] and "RLIMIT_FSIZE" in refused.details["reason"]
    spool = gw.home / "var" / "spool" / "sf"
    assert list((spool / "tmp").iterdir()) == [] and list((spool / "objects").iterdir()) == []
    # The route goes on receiving what fits.
    out = dcmtk.run("storescu", "-v", "-xe", *target, *small, timeout=60)
    assert len(storescu_acknowledged(out.stdout + out.stderr, small)) == 1, out.stdout + out.stderr
    assert len(list((spool / "objects").glob("*.dcm"))) == 1


def test_a_spool_on_a_read_only_file_system_at_start_is_named_with_its_route(tmp_path: Path) -> None:
    """`serve` stopped with "error: [Errno 30] Read-only file system: '.../tmp'": no route, no
    spool.directory, nothing on what to do."""
    home = tmp_path / "gw"
    spool = home / "var" / "spool" / "sf"
    spool.mkdir(parents=True)
    route = {"name": "sf", "mode": "store-and-forward",
             "listen": {"host": HOST, "port": free_port(HOST), "ae_title": "PACSGUARD"},
             "destinations": [{"name": "d0", "host": HOST, "port": free_port(HOST), "ae_title": "NOBODY"}]}
    config = {"store": {"url": "var/pacsguard.db"}, "gateway": {"routes": [route]}}
    (home / "pacsguard.yaml").write_text(yaml.safe_dump(config))
    program = [sys.executable, "-m", "pacsguard.cli"]
    init = subprocess.run([*program, "init", "--no-demo"], cwd=home, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stdout + init.stderr
    subprocess.run(["mount", "--bind", str(spool), str(spool)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(spool)], check=True)
        served = subprocess.run([*program, "serve"], cwd=home, capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["umount", str(spool)], check=True)
    said = served.stdout + served.stderr
    assert served.returncode == 2 and "Traceback" not in said, said
    assert f"route sf: cannot open its spool {spool}: Read-only file system ({spool}/" in said, said
    assert "spool.directory must be on a writable file system" in said
