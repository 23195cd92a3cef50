"""The passive sensor on real traffic, captured in a throwaway network namespace whose loopback
looks like a LAN (MTU 1500, TSO/GSO/GRO off, a 1 Gbit/s shaper), by dumpcap:

(a) normal work: dcmtk's echoscu, storescu (several pydicom test files in one association) and
    findscu at STUDY level against a real Orthanc on the standard port 104 and on 4243: with every
    built-in rule active and the site's AE titles configured, zero alerts; the association log
    agrees with tshark's own DICOM dissection of the same capture, cut at PDU boundaries
    (associations, calling/called AE titles, command names and counts, response statuses); with
    4243 not configured as a DICOM port the associations there are still found and only "DICOM on
    an unexpected port" fires.
(b) attacks: nmap 7.93's dicom-ping and dicom-brute against an Orthanc that checks the called AE
    title: AE brute forcing, probe/scan and tool-default AE rules fire, and nothing else; the
    same rules fire from ``pacsguard ids live`` (the CLI command) capturing at the same time.

Needs root, iproute2, ethtool, tc, dumpcap, tshark, nmap, Debian's dcmtk (by full path:
pynetdicom installs same-named apps into the virtualenv) and Orthanc.  Missing any of these is a
failure, not a skip.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lan_netns import lan_netns, ns_cmd, require_peers
from pdu_segments import pdu_aligned_copy
from test_capture_real import _start_dumpcap

from pacsguard.events import Event
from pacsguard.ids import IdsSettings
from pacsguard.ids.passive import PassiveStats, build_engine, read
from peers.orthanc import _base_config

pytestmark = pytest.mark.peers

ECHOSCU, STORESCU, FINDSCU = "/usr/bin/echoscu", "/usr/bin/storescu", "/usr/bin/findscu"
ORTHANC = "/usr/sbin/Orthanc"
TEST_FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm"]
NORMAL_PORTS = (104, 4243)  # DICOM's registered port, and one no default configuration lists
ATTACK_PORT = 4242  # Orthanc's default port, one of those nmap's DICOM scripts probe
GUESSES = ["PACS", "ARCHIVE", "STORESCP", "DCM4CHEE", "CONQUESTSRV1", "ORTHANC", "PACS1", "SERVER"]
SITE_AES = ["MODALITY1", "WORKSTATION", "ORTHANC"]


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    require_peers(["ip", "ethtool", "tc", "ss", "dumpcap", "tshark", "nmap"], [ECHOSCU, STORESCU, FINDSCU, ORTHANC])
    with lan_netns("pg-ids") as name:
        yield name


def _listening(ns: str, port: int) -> bool:
    r = subprocess.run(ns_cmd(ns, "ss", "-ltnH", f"sport = :{port}"), capture_output=True, text=True)
    return bool(r.stdout.strip())


class NsOrthanc:
    """Debian's Orthanc inside the namespace, on ``port`` (config from tests/peers/orthanc.py)."""

    def __init__(self, ns: str, workdir: Path, port: int, http_port: int, **overrides: Any) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        config = _base_config(workdir, port, http_port, "u" + secrets.token_hex(3), secrets.token_urlsafe(12))
        config.update(overrides)
        path = workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        self.log = workdir / "orthanc.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(ns_cmd(ns, ORTHANC, "--no-jobs", str(path)), cwd=workdir,
                                         stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not _listening(ns, port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"Orthanc did not listen on {port}:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def _run(ns: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(ns_cmd(ns, *args), env=dict(os.environ, TCP_NODELAY="1"), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{args[0]} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


def _stop_dumpcap(proc: subprocess.Popen[str]) -> None:
    time.sleep(1.0)  # let it drain its buffer
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)


# ------------------------------------------------------------------ captures


@pytest.fixture(scope="module")
def normal_capture(netns: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from pydicom.data import get_testdata_file

    tmp = tmp_path_factory.mktemp("normal")
    files = [get_testdata_file(n) for n in TEST_FILES]
    assert all(files), files
    servers = [
        NsOrthanc(netns, tmp / f"orthanc{port}", port, 18000 + i, DicomCheckCalledAet=True, DicomAlwaysAllowFind=True)
        for i, port in enumerate(NORMAL_PORTS)
    ]
    cap = tmp / "normal.pcapng"
    try:
        dumpcap, _err = _start_dumpcap(netns, cap, " or ".join(f"tcp port {p}" for p in NORMAL_PORTS))
        try:
            for port in NORMAL_PORTS:
                _run(netns, ECHOSCU, "-aet", "MODALITY1", "-aec", "ORTHANC", "127.0.0.1", str(port))
                _run(netns, STORESCU, "-aet", "MODALITY1", "-aec", "ORTHANC", "127.0.0.1", str(port), *map(str, files))
                _run(netns, FINDSCU, "-S", "-aet", "WORKSTATION", "-aec", "ORTHANC", "-k", "QueryRetrieveLevel=STUDY",
                     "-k", "PatientID", "-k", "StudyInstanceUID", "-k", "StudyDate", "127.0.0.1", str(port))
        finally:
            _stop_dumpcap(dumpcap)
    finally:
        for s in servers:
            s.stop()
    return {"capture": cap}


LIVE_CLI = r"""
import sys, typer
from pacsguard.cli.ids_read import live_command
sys.argv = ["ids-live", *sys.argv[1:]]
typer.run(live_command)
"""


@pytest.fixture(scope="module")
def attack_capture(netns: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("attack")
    guesses = tmp / "aets.txt"
    guesses.write_text("\n".join(GUESSES) + "\n")
    server = NsOrthanc(netns, tmp / "orthanc", ATTACK_PORT, 18010, DicomCheckCalledAet=True)
    cap = tmp / "attack.pcapng"
    live_jsonl = tmp / "live.jsonl"
    live = None
    try:
        dumpcap, _err = _start_dumpcap(netns, cap, f"tcp port {ATTACK_PORT}")
        # the real CLI command, capturing at the same time as dumpcap
        live = subprocess.Popen(
            ns_cmd(netns, sys.executable, "-c", LIVE_CLI, "--interface", "lo", "--bpf", f"tcp port {ATTACK_PORT}",
                   "--format", "json", "--jsonl", str(live_jsonl)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert live.stderr is not None
        line = live.stderr.readline()
        if "capturing on lo" not in line:
            live.kill()
            pytest.fail(f"ids live did not start: {line!r} {live.stderr.read()}")
        err_lines: list[str] = []
        threading.Thread(target=lambda: err_lines.extend(live.stderr), daemon=True).start()  # type: ignore[arg-type]
        try:
            ping = _run(netns, "nmap", "-n", "-Pn", "-p", str(ATTACK_PORT), "--script", "dicom-ping", "127.0.0.1")
            brute = _run(netns, "nmap", "-n", "-Pn", "-p", str(ATTACK_PORT), "--script", "dicom-brute",
                         "--script-args", f"passdb={guesses}", "127.0.0.1", timeout=240)
        finally:
            _stop_dumpcap(dumpcap)
            live.send_signal(signal.SIGTERM)
            out, _ = live.communicate(timeout=60)
    finally:
        if live is not None and live.poll() is None:
            live.kill()
        server.stop()
    assert "Called AET check enabled" in ping.stdout, ping.stdout
    assert "ORTHANC - Valid credentials" in brute.stdout, brute.stdout
    return {"capture": cap, "live_rc": live.returncode, "live_stdout": out, "live_stderr": "".join(err_lines),
            "live_jsonl": live_jsonl}


# ------------------------------------------------------------------ running the sensor


def run_sensor(cap: Path, settings: IdsSettings) -> tuple[list[Event], PassiveStats, Any]:
    engine = build_engine(settings=settings)
    out: list[Event] = []
    stats = read(cap, engine=engine, publish=out.append)
    assert stats.capture.problem_count == 0, stats.capture.problems
    return out, stats, engine


def alerts_of(events: list[Event]) -> list[Event]:
    return [e for e in events if e.kind.startswith("ids.alert.")]


ENDINGS = ("dicom.association.released", "dicom.association.aborted", "dicom.association.rejected")


def records_of(events: list[Event]) -> list[Event]:
    """The last Event of each association (with ``details.capture``)."""
    return [e for e in events if e.kind in ENDINGS]


def dimse_of(events: list[Event], flow: str, kind: str) -> list[Event]:
    """One association's DIMSE request Events of one kind (``dicom.dimse.c-store``)."""
    return [e for e in events if e.kind == kind and e.details["flow"] == flow]


def all_rules_on(**kw: Any) -> IdsSettings:
    base: dict[str, Any] = {"known_ae_titles": SITE_AES, "move_destinations": ["ORTHANC"],
                            "document_sources": ["MODALITY1"]}
    base.update(kw)
    return IdsSettings(**base)


# ------------------------------------------------------------------ tshark's opinion

_COMMAND = re.compile(r"^\(0000,0100\)\s+\d+\s+Command Field\s+([A-Z]-[A-Z-]+)")
_STATUS = re.compile(r"^\(0000,0900\)\s+\d+\s+Status\s+.*\((0x[0-9a-fA-F]+)\)\s*$")


def _pairs(node: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(node, list):
        for item in node:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                out.append(item)
                _pairs(item[1], out)
            else:
                _pairs(item, out)


def tshark_associations(cap: Path, ports: tuple[int, ...]) -> dict[int, dict[str, Any]]:
    """Per association (keyed by the client's port): AE titles, command counts and statuses as
    Wireshark's DICOM dissector decodes them (``-T json``, duplicate keys kept)."""
    args = ["tshark", "-r", str(cap)]
    for p in ports:
        args += ["-d", f"tcp.port=={p},dicom"]
    r = subprocess.run(args + ["-Y", "dicom", "-T", "json"], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    packets = json.loads(r.stdout, object_pairs_hook=lambda pairs: pairs)
    by_stream: dict[str, dict[str, Any]] = {}
    for pkt in packets:
        pairs: list[tuple[str, Any]] = []
        _pairs(pkt, pairs)
        fields = {k: v for k, v in pairs if isinstance(v, str)}
        stream = fields["tcp.stream"]
        a = by_stream.setdefault(stream, {"client_port": None, "requests": 0, "calling": None, "called": None,
                                          "commands": Counter(), "statuses": Counter()})
        last_command = None
        for k, v in pairs:
            if k == "dicom.pdu.type" and int(v, 16) == 1:
                a["requests"] += 1
                a["client_port"] = int(fields["tcp.srcport"])
            elif k == "dicom.assoc.ae.calling" and a["calling"] is None:
                a["calling"] = v.strip()
            elif k == "dicom.assoc.ae.called" and a["called"] is None:
                a["called"] = v.strip()
            elif (m := _COMMAND.match(k)) is not None:
                last_command = m.group(1)
                a["commands"][last_command] += 1
            elif (m := _STATUS.match(k)) is not None and last_command is not None:
                a["statuses"][(last_command, int(m.group(1), 16))] += 1
    return {a["client_port"]: a for a in by_stream.values() if a["requests"]}


def _ours(records: list[Event]) -> dict[int, dict[str, Any]]:
    out = {}
    for rec in records:
        d = rec.details["capture"]
        port = rec.actor.port
        statuses = Counter()
        for name, per in d["statuses"].items():
            for status, n in per.items():
                statuses[(name, int(status, 16))] += n
        out[port] = {"calling": rec.actor.ae_title, "called": rec.details["called_ae"],
                     "commands": Counter(d["commands"]), "statuses": statuses}
    return out


def assert_agrees_with_tshark(cap: Path, ports: tuple[int, ...], settings: IdsSettings) -> None:
    """tshark reads a copy cut at PDU boundaries (its dissector loses PDUs that end mid-segment,
    pdu_segments.py); pacsguard must read the copy as it reads the original."""
    events, _, _ = run_sensor(cap, settings)
    ours = _ours(records_of(events))
    aligned = pdu_aligned_copy(cap, cap.with_name(cap.stem + ".pdus.pcap"))
    again, _, _ = run_sensor(aligned, settings)
    assert _ours(records_of(again)) == ours, "pacsguard reads the copy cut at PDU boundaries differently"
    theirs = tshark_associations(aligned, ports)
    assert sorted(ours) == sorted(theirs), "associations differ (client ports)"
    assert all(t["requests"] == 1 for t in theirs.values())
    for port, t in theirs.items():
        o = ours[port]
        assert (o["calling"], o["called"]) == (t["calling"], t["called"]), port
        assert o["commands"] == t["commands"], (port, o["commands"], t["commands"])
        assert o["statuses"] == t["statuses"], (port, o["statuses"], t["statuses"])


# ------------------------------------------------------------------ (a) normal traffic


def test_normal_traffic_raises_no_alert(normal_capture: dict[str, Any]) -> None:
    events, stats, engine = run_sensor(normal_capture["capture"], all_rules_on(dicom_ports=[*NORMAL_PORTS]))
    assert not engine.inactive, engine.inactive  # every built-in rule ran
    assert alerts_of(events) == []
    recs = records_of(events)
    assert len(recs) == 3 * len(NORMAL_PORTS)
    assert {r.kind for r in recs} == {"dicom.association.released"}
    assert all(not r.details["capture"]["midstream"] and r.details["capture"]["tcp_close"] == "fin" for r in recs)
    assert not stats.sensor.decode_errors and not stats.sensor.violations and stats.sensor.gaps == 0
    stores = [r for r in recs if "C-STORE-RQ" in r.details["capture"]["commands"]]
    assert len(stores) == len(NORMAL_PORTS)
    for r in stores:
        assert r.details["capture"]["commands"]["C-STORE-RQ"] == len(TEST_FILES)
        assert r.details["capture"]["requestor"]["datasets"] == len(TEST_FILES)
        stored = dimse_of(events, r.details["flow"], "dicom.dimse.c-store")
        assert sum(e.sop_instance_count for e in stored) == len(TEST_FILES)
        assert len({p for e in stored for p in e.patient_ids}) >= 1
    finds = [r for r in recs if "C-FIND-RQ" in r.details["capture"]["commands"]]
    assert len(finds) == len(NORMAL_PORTS)
    for r in finds:
        # one pending response per stored study, then success
        statuses = r.details["capture"]["statuses"]["C-FIND-RSP"]
        assert statuses["0x0000"] == 1
        assert statuses["0xFF00"] >= 1
        assert r.details["capture"]["acceptor"]["datasets"] == statuses["0xFF00"]
        (find,) = dimse_of(events, r.details["flow"], "dicom.dimse.c-find")
        assert find.details["responses"] == statuses["0xFF00"]
        assert find.patient_ids  # the matches name their patients


def test_normal_association_log_agrees_with_tshark(normal_capture: dict[str, Any]) -> None:
    assert_agrees_with_tshark(normal_capture["capture"], NORMAL_PORTS, all_rules_on(dicom_ports=[*NORMAL_PORTS]))


def test_dicom_found_on_an_unlisted_port(normal_capture: dict[str, Any]) -> None:
    # 4243 is not a DICOM port in these settings: found anyway, by the A-ASSOCIATE-RQ itself
    events, _, _ = run_sensor(normal_capture["capture"], all_rules_on(dicom_ports=[104]))
    recs = records_of(events)
    assert Counter(r.target.port for r in recs) == {104: 3, 4243: 3}
    alerts = alerts_of(events)
    assert {a.kind for a in alerts} == {"ids.alert.dicom-unexpected-port"}
    assert sorted(a.target.port for a in alerts) == [4243] * 3


# ------------------------------------------------------------------ (b) attacks


ATTACK_RULES = {
    "dicom-ae-brute-force",  # nmap dicom-brute: called AE titles rejected one after another
    "dicom-scan-echo-probe",  # associations that only associate, across AE pairs
    "dicom-tool-default-ae-title",  # nmap's ECHOSCU / ANY-SCP
    "dicom-unknown-calling-ae",  # ECHOSCU is not a site AE title
    "dicom-unknown-called-ae",  # the guesses are not site AE titles
}


def test_nmap_attack_fires_the_expected_rules(attack_capture: dict[str, Any]) -> None:
    events, stats, engine = run_sensor(attack_capture["capture"], all_rules_on())
    assert not engine.inactive
    fired = Counter(a.kind.removeprefix("ids.alert.") for a in alerts_of(events))
    assert set(fired) == ATTACK_RULES, fired
    assert fired["dicom-ae-brute-force"] >= 1
    brute = next(a for a in alerts_of(events) if a.kind == "ids.alert.dicom-ae-brute-force")
    assert brute.actor.host == "127.0.0.1" and brute.details["action"] == "quarantine"
    assert brute.details["threshold"]["reached"] >= 5
    recs = records_of(events)
    assert {r.actor.ae_title for r in recs} == {"ECHOSCU"}
    rejected = [r for r in recs if r.kind == "dicom.association.rejected"]
    assert {r.details["reason_code"] for r in rejected} == {7}  # called AE title not recognised
    assert {r.target.ae_title for r in rejected} >= {"ANY-SCP", *(g for g in GUESSES if g != "ORTHANC")}
    found = [r for r in recs if r.target.ae_title == "ORTHANC"]
    assert len(found) == 1 and found[0].kind == "dicom.association.aborted"  # accepted, then dropped by nmap
    assert found[0].details["cause"] == "connection-lost" and stats.sensor.results["incomplete"] == 1
    assert not stats.sensor.decode_errors and not stats.sensor.violations


def test_attack_association_log_agrees_with_tshark(attack_capture: dict[str, Any]) -> None:
    assert_agrees_with_tshark(attack_capture["capture"], (ATTACK_PORT,), all_rules_on())


def test_ids_live_saw_the_same_attack(attack_capture: dict[str, Any]) -> None:
    assert attack_capture["live_rc"] == 1, attack_capture["live_stderr"]  # alerts fired
    summary = json.loads(attack_capture["live_stdout"].strip().splitlines()[-1])["summary"]
    live_rules = {r["rule_id"] for r in summary["alerts"]["by_rule"]}
    # default settings (no site AE list): the rules that need none
    assert live_rules == {"dicom-ae-brute-force", "dicom-scan-echo-probe", "dicom-tool-default-ae-title"}
    events, _, _ = run_sensor(attack_capture["capture"], IdsSettings())
    assert summary["sensor"]["associations"] == len(records_of(events))
    assert summary["capture"]["problem_count"] == 0
    lines = attack_capture["live_jsonl"].read_text().splitlines()
    kinds = Counter(Event.from_json(line).kind for line in lines)
    assert sum(kinds[k] for k in ENDINGS) == len(records_of(events))
    assert kinds["ids.alert.dicom-ae-brute-force"] >= 1


LIMITED_OFF = {"count": 1_000_000, "within": "1d"}  # so high that every match is written


def _match_counts(cap: Path, settings: IdsSettings, limited: list[str]) -> Counter[str]:
    """Every match per rule: the same capture read with each rule's limit lifted."""
    lifted = IdsSettings.model_validate({**settings.model_dump(), "limits": {rid: LIMITED_OFF for rid in limited}})
    events, _, engine = run_sensor(cap, lifted)
    assert engine.limited == 0
    return Counter(a.kind.removeprefix("ids.alert.") for a in alerts_of(events))


@pytest.mark.parametrize("site", [False, True], ids=["defaults", "site-ae-titles"])
def test_nmap_attack_gives_a_handful_of_alerts_that_account_for_every_match(
        attack_capture: dict[str, Any], site: bool) -> None:
    """docs/ids.md "Limits and suppression": with the defaults one dicom-ping + dicom-brute run is at
    most five alert events; with or without the site's AE titles, each limited rule writes at most
    its first alert and one aggregate, and its written alerts plus the aggregates' counts are all
    its matches."""
    settings = all_rules_on() if site else IdsSettings()
    events, _, engine = run_sensor(attack_capture["capture"], settings)
    alerts = alerts_of(events)
    if not site:
        assert 0 < len(alerts) <= 5, [(a.kind, a.details.get("count")) for a in alerts]
    limited = [r.id for r in engine.rules if engine.effective_limit(r.id) is not None]
    matches = _match_counts(attack_capture["capture"], settings, limited)
    assert engine.limited == sum(matches.values()) - sum(1 for a in alerts if not a.details.get("aggregate"))
    accounted: Counter[str] = Counter()
    written: Counter[str] = Counter()
    for a in alerts:
        rule = a.kind.removeprefix("ids.alert.")
        written[rule] += 1
        accounted[rule] += a.details["count"] if a.details.get("aggregate") else 1
        assert rule in limited, rule  # the attack trips only the noisy, limited rules
        assert a.details["limit"]["key"] == {"client_host": "127.0.0.1"}
    assert accounted == matches
    assert max(written.values()) <= 2, written
    assert sum(matches.values()) > len(alerts)  # the limits did thin the record out
