"""Round 10 K: the rule engine's sources are per VLAN (docs/ids.md, "Limits and suppression").

Since round 10 the passive sensor keys connections by VLAN and names it in events, but the
engine's per-source state (alert limits, thresholds, ``ids.suppress``) keyed on addresses only:
two hosts with the same address on two VLANs (overlapping private ranges per site or modality
VLAN) were one source. One host's alert held the other's back under a limit, a threshold added
both up, a suppress entry could not name one of them, and the end-of-capture aggregate named no
VLAN.

The capture: dcmtk's echoscu twice, with its default calling AE title ECHOSCU (which the built-in
``dicom-tool-default-ae-title`` rule fires on, limited to 1 per client_host per 10 minutes), to
storescp, between two network namespaces (named r10k-*, deleted afterwards), captured by dumpcap.
It is then tagged as VLAN 10 and as VLAN 20 (as a trunk port's switch would tag it: this kernel
has no 802.1Q module) and the two merged with mergecap: the same addresses and ports on two
VLANs, as a SPAN of a trunk shows two sites."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_r10B1_vlan import CLIENT, DCMTK, PORT, SERVER, _ns, captured_pair, ids_read, require, tag

TOOL_AE = "ids.alert.dicom-tool-default-ae-title"
FLOOD = "ids.alert.dicom-association-flood"


def make_echoes(out: Path) -> Path:
    """Two C-ECHOs from echoscu's default AE title ECHOSCU to PACS, captured on the client's veth."""
    require("mergecap")
    with captured_pair(out, "r10k") as (cns, env):
        for _ in range(2):
            subprocess.run(_ns(cns, DCMTK[1], "-aec", "PACS", SERVER, str(PORT)), check=True, env=env, timeout=30,
                           capture_output=True)
    return out


@pytest.fixture(scope="module")
def trunk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both C-ECHOs on VLAN 10 and again on VLAN 20 (same addresses, ports and times)."""
    where = tmp_path_factory.mktemp("r10k")
    plain = make_echoes(where / "plain.pcapng")
    merged = where / "trunk.pcapng"
    subprocess.run(["mergecap", "-w", str(merged), str(tag(plain, where / "a.pcap", (10,))),
                    str(tag(plain, where / "b.pcap", (20,)))], check=True, timeout=30)
    return merged


def _read(trunk: Path, cwd: Path, config: str | None = None) -> tuple[int, list[dict[str, Any]], str]:
    if config is not None:
        (cwd / "pacsguard.yaml").write_text(config)
    code, events, summary, err = ids_read(trunk, cwd)
    assert summary, err
    assert summary["sensor"]["results"] == {"released": 4}, summary
    return code, events, err


def _alerts(events: list[dict[str, Any]], kind: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The written alerts of ``kind`` and its aggregates."""
    mine = [e for e in events if e["kind"] == kind]
    return ([e for e in mine if not e["details"].get("aggregate")],
            [e for e in mine if e["details"].get("aggregate")])


def test_each_vlans_host_gets_its_own_alert_under_a_limit(trunk: Path, tmp_path: Path) -> None:
    """dicom-tool-default-ae-title is limited to 1 per client_host per 10 minutes: each VLAN's
    client writes its first alert, and each VLAN's window ends with its own aggregate naming the
    VLAN. Before, VLAN 20's first alert was held back by VLAN 10's, and one aggregate counted 3
    matches for client_host=10.102.0.1 on no VLAN."""
    code, events, _ = _read(trunk, tmp_path)
    first, aggregates = _alerts(events, TOOL_AE)
    assert sorted(e["details"]["vlan"] for e in first) == [[10], [20]], first
    for e in first:
        assert e["details"]["limit"]["key"] == {"client_host": CLIENT, "vlan": e["details"]["vlan"]}
    assert len(aggregates) == 2, aggregates
    for agg, vid in zip(sorted(aggregates, key=lambda e: e["details"]["vlan"]), (10, 20), strict=True):
        assert agg["details"]["count"] == 1
        assert agg["details"]["vlan"] == [vid]
        assert agg["details"]["limit"]["key"] == {"client_host": CLIENT, "vlan": [vid]}
        assert agg["message"].endswith(f"(VLAN {vid})"), agg["message"]
        assert agg["actor"]["host"] == CLIENT
    # every match accounted for: written alerts plus the aggregates' counts
    assert len(first) + sum(a["details"]["count"] for a in aggregates) == 4
    assert code == 1
    # the same through the Python API (whose Events the test run checks against docs/events.schema.json)
    from pacsguard.ids.passive import build_engine, read

    got: list[Any] = []
    read(trunk, engine=build_engine(), publish=got.append)
    assert sorted((e.details.get("aggregate", False), e.details.get("vlan")) for e in got if e.kind == TOOL_AE) == [
        (False, [10]), (False, [20]), (True, [10]), (True, [20])]


def test_an_aggregate_closed_by_another_vlans_traffic_names_its_own_vlan(trunk: Path, tmp_path: Path) -> None:
    """VLAN 20's copy a minute later, windows of 30 s: VLAN 10's window closes at VLAN 20's first
    association, whose connection must not lend the aggregate its VLAN."""
    later = tmp_path / "later.pcapng"
    subprocess.run(["editcap", "-t", "60", str(trunk), str(tmp_path / "shifted.pcapng")], check=True, timeout=30)
    # the trunk holds both VLANs: keep VLAN 10 as it is, VLAN 20 shifted
    subprocess.run(["tshark", "-r", str(trunk), "-Y", "vlan.id == 10", "-w", str(tmp_path / "v10.pcapng")],
                   check=True, timeout=30, capture_output=True)
    subprocess.run(["tshark", "-r", str(tmp_path / "shifted.pcapng"), "-Y", "vlan.id == 20", "-w",
                    str(tmp_path / "v20.pcapng")], check=True, timeout=30, capture_output=True)
    subprocess.run(["mergecap", "-w", str(later), str(tmp_path / "v10.pcapng"), str(tmp_path / "v20.pcapng")],
                   check=True, timeout=30)
    _code, events, _ = _read(later, tmp_path, "ids:\n  limits:\n    dicom-tool-default-ae-title: {within: 30s}\n")
    first, aggregates = _alerts(events, TOOL_AE)
    assert [e["details"].get("vlan") for e in first] == [[10], [20]], first
    assert [(e["details"].get("vlan"), e["details"]["count"]) for e in aggregates] == [([10], 1), ([20], 1)], aggregates
    for agg in aggregates:
        vid = (agg["details"].get("vlan") or [None])[0]
        assert agg["message"].endswith(f"(VLAN {vid})") and agg["message"].count("(VLAN ") == 1, agg["message"]
    # the first aggregate came mid-capture, before VLAN 20's first alert, as its window closed
    kinds = [(e["kind"], e["details"].get("aggregate", False), e["details"].get("vlan")) for e in events
             if e["kind"] == TOOL_AE]
    assert kinds == [(TOOL_AE, False, [10]), (TOOL_AE, True, [10]), (TOOL_AE, False, [20]), (TOOL_AE, True, [20])]


def test_a_threshold_counts_per_vlan(trunk: Path, tmp_path: Path) -> None:
    """dicom-association-flood at 2 associations per client_host: each VLAN's client reaches it
    (2 each); before, the four were one count, which fired once."""
    config = ("ids:\n  thresholds:\n    dicom-association-flood: {count: 2, within: 10m}\n"
              "  limits:\n    dicom-association-flood: {count: 5}\n")
    _code, events, _ = _read(trunk, tmp_path, config)
    fired, aggregates = _alerts(events, FLOOD)
    assert not aggregates
    assert sorted(e["details"]["vlan"] for e in fired) == [[10], [20]], fired
    for e in fired:
        threshold = e["details"]["threshold"]
        assert threshold["reached"] == 2
        assert threshold["key"] == {"client_host": CLIENT, "vlan": e["details"]["vlan"]}


SUPPRESS = ("ids:\n  suppress:\n"
            "    - {rule: dicom-tool-default-ae-title, track: client_host, values: [10.102.0.0/24]%s}\n")


@pytest.mark.parametrize("vlan", ["10", "[10]"])
def test_a_suppress_naming_a_vlan_silences_only_that_vlan(trunk: Path, tmp_path: Path, vlan: str) -> None:
    code, events, err = _read(trunk, tmp_path, SUPPRESS % f", vlan: {vlan}")
    first, aggregates = _alerts(events, TOOL_AE)
    assert [e["details"]["vlan"] for e in first] == [[20]], (first, err)
    assert [(e["details"]["vlan"], e["details"]["count"]) for e in aggregates] == [([20], 1)], aggregates
    assert code == 1


def test_a_suppress_without_vlan_silences_every_vlan(trunk: Path, tmp_path: Path) -> None:
    code, events, _ = _read(trunk, tmp_path, SUPPRESS % "")
    assert _alerts(events, TOOL_AE) == ([], [])
    assert code == 0


@pytest.mark.parametrize(("vlan", "why"), [("5000", "5000 is not a VLAN id"),
                                           ("[1, 2, 3]", "[1, 2, 3] is not a VLAN id")])
def test_a_bad_suppress_vlan_is_refused(trunk: Path, tmp_path: Path, vlan: str, why: str) -> None:
    (tmp_path / "pacsguard.yaml").write_text(SUPPRESS % f", vlan: {vlan}")
    code, _events, _summary, err = ids_read(trunk, tmp_path)
    assert code == 2 and "suppress.vlan" in err and why in err, err


def test_a_suppress_vlan_without_vlan_tracking_is_refused(trunk: Path, tmp_path: Path) -> None:
    """With ``ids.vlan_tracking: false`` VLANs are no part of sources: an entry that names one
    could never match, and says so."""
    (tmp_path / "pacsguard.yaml").write_text("ids:\n  vlan_tracking: false\n" + (SUPPRESS % ", vlan: 10")[5:])
    code, _events, _summary, err = ids_read(trunk, tmp_path)
    assert code == 2 and "suppress.vlan" in err and "ids.vlan_tracking: true" in err, err


# ----------------------------------------------------------------------------- the engine alone

RULE = """
- id: site-scu
  title: SCU called
  severity: notice
  protocol: dicom
  on: association-request
  match:
    calling_ae: {equals: SCU1}
  threshold: {count: 2, within: 60s, by: [client_host]}
  limit: {count: 1, within: 60s, by: [client_host]}
  action: alert
  reference: site policy
"""


def _engine_hits(tracking: bool, by: str = "client_host") -> list[Any]:
    """Four associations of SCU1 from 10.2.2.2, on VLAN 10, 20, 10, 20, through Engine.observe."""
    from pacsguard.ids import Engine, IdsSettings
    from pacsguard.ids.observation import Flow, Observation
    from pacsguard.ids.rules import parse_rules_text

    rules, problems = parse_rules_text(RULE.replace("client_host]", f"{by}]"), "site.yaml")
    assert not problems, problems
    engine = Engine(rules, IdsSettings(vlan_tracking=tracking), clock=lambda: 100.0)
    out = []
    for n, vid in enumerate((10, 20, 10, 20)):
        flow = Flow("10.2.2.2", 40000 + n, "10.1.1.1", 104, id=f"C{n}", vlan=(vid,))
        fields = {"calling_ae": "SCU1", "called_ae": "PACS"}
        out += engine.observe(Observation("dicom", "association-request", fields, flow), 100.0 + n)
    return out + engine.flush()


def test_the_engine_keys_sources_by_vlan_unless_tracking_is_off() -> None:
    hits = _engine_hits(True)
    assert [(a.flow.vlan, a.record) for a in hits] == [((10,), True), ((20,), True)]
    assert [a.event.details["threshold"]["key"] for a in hits] == [{"client_host": "10.2.2.2", "vlan": [10]},
                                                                    {"client_host": "10.2.2.2", "vlan": [20]}]
    # ids.vlan_tracking: false: the VLAN is no part of a connection, nor of a source
    hits = _engine_hits(False)
    assert [(a.flow.vlan, a.record) for a in hits] == [((20,), True)]
    assert hits[0].event.details["threshold"]["key"] == {"client_host": "10.2.2.2"}
    # a key that names no source (here none: everything counted together): across VLANs, as before
    assert [a.flow.vlan for a in _engine_hits(True, "")] == [(20,)]


def test_a_suppress_vlan_pair_matches_that_qinq_tagging_only() -> None:
    """``vlan: [7, 100]`` is outer VLAN 7, inner 100 (802.1ad), as ``details.vlan`` names it: not
    VLAN 100 alone, nor untagged traffic."""
    from pacsguard.ids import Engine, IdsSettings
    from pacsguard.ids.observation import Flow, Observation
    from pacsguard.ids.rules import parse_rules_text

    rules, problems = parse_rules_text(RULE.replace("  threshold: {count: 2, within: 60s, by: [client_host]}\n", ""),
                                       "site.yaml")
    assert not problems and rules[0].threshold is None, problems
    settings = IdsSettings(suppress=[{"rule": "site-scu", "values": ["10.2.2.0/24"], "vlan": [7, 100]}])
    engine = Engine(rules, settings, clock=lambda: 100.0)
    written = {}
    for n, vlan in enumerate([(7, 100), (100,), (), (7, 100)]):
        flow = Flow("10.2.2.2", 40000 + n, "10.1.1.1", 104, id=f"C{n}", vlan=vlan)
        [alert] = engine.observe(Observation("dicom", "association-request", {"calling_ae": "SCU1"}, flow), 100.0)
        written[n] = alert.record
    assert written == {0: False, 1: True, 2: True, 3: False}
    assert engine.silenced == {"site-scu": 2}
