"""Round 6: rule files bounded as pacsguard.yaml is (YAML aliases, nesting), and the DICOM query rules
on keys that list several patients (PS3.5 6.4) or only wildcards (PS3.4 C.2.2.2.4), passively and in
the gateway's inline IDS (the same DicomAdapter).

Traffic is real bytes: PDUs from pacsguard.dicom's encoders through the real AssociationDecoder."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import pytest
from test_engine import identifier
from typer.testing import CliRunner

from pacsguard.dicom import AssociationDecoder, encode_dimse_message
from pacsguard.dicom import pdu as P
from pacsguard.dicom.dimse import C_FIND_RQ, C_FIND_RSP, CommandSet, encode_command_set
from pacsguard.ids import Alert, Engine, Flow, IdsSettings, RuleError, load_rules
from pacsguard.ids.dicom import DicomAdapter
from pacsguard.ids.rules import parse_rules_text
from pacsguard.yaml_shape import MAX_VALUES

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gateway"))

IVLE = "1.2.840.10008.1.2"
FIND_PATIENT_ROOT = "1.2.840.10008.5.1.4.1.2.1.1"
FIND_STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.1"
ENUMERATION = "dicom-find-patient-enumeration"
UNIVERSAL = "dicom-find-patient-universal"
WILDCARD = "dicom-find-wildcard-patient-name"

BUILTIN = load_rules([])
_ports = itertools.count(41000)


# --------------------------------------------------------------------------- 4: rule file limits


def alias_bomb(levels: int) -> str:
    """A rule whose title is ten aliases of ten aliases ... (`levels` deep): 10**levels values once
    expanded, in a few hundred bytes (the "billion laughs")."""
    anchors = ["&a [x,x,x,x,x,x,x,x,x,x]"]
    names = "abcdefghij"
    for i in range(1, levels):
        anchors.append(f"&{names[i]} [" + ",".join([f"*{names[i - 1]}"] * 10) + "]")
    return ("- id: site-bomb\n  title: [" + ", ".join(anchors) + "]\n  severity: warning\n  protocol: dicom\n"
            "  on: association-request\n  reference: site policy\n")


def test_alias_bomb_is_refused_naming_the_file_before_any_value_is_written(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(7))  # 10**7 values expanded
    assert path.stat().st_size < 400
    with pytest.raises(RuleError) as info:
        load_rules([path], builtin=False)
    (problem,) = info.value.problems
    assert problem.file == str(path) and problem.field == "file"
    assert f"more than {MAX_VALUES:,} values" in problem.problem and "aliases" in problem.problem
    assert len(str(info.value)) < 300


def test_alias_bomb_in_rules_check_is_a_short_refusal_exit_2(tmp_path: Path) -> None:
    from pacsguard.cli import ids as ids_cli

    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(6))  # 10**6 values: the old loader printed 58 MB for this
    result = CliRunner().invoke(ids_cli.app, ["rules", "check", str(path)])
    assert result.exit_code == 2
    assert str(path) in result.output and "aliases" in result.output
    assert len(result.output) < 1000 and "Traceback" not in result.output


def test_aliases_within_the_limit_still_load(tmp_path: Path) -> None:
    """Anchors and aliases themselves are fine: a list of AE titles shared by two rules."""
    text = """\
- id: site-a
  title: retired modalities
  severity: warning
  protocol: dicom
  on: association-request
  match:
    calling_ae: {in: &retired [CT_OLD, MR_OLD]}
  reference: site policy
- id: site-b
  title: retired modalities called
  severity: warning
  protocol: dicom
  on: association-request
  match:
    called_ae: {in: *retired}
  reference: site policy
"""
    rules, problems = parse_rules_text(text, "site.yaml")
    assert not problems and [r.conditions[0].value for r in rules] == [("CT_OLD", "MR_OLD")] * 2


def test_deep_nesting_is_a_problem_not_a_crash() -> None:
    """300 nested lists: the constructor recursed past Python's limit (RecursionError)."""
    text = "- id: site-deep\n  title: " + "[" * 300 + "]" * 300 + "\n"
    rules, problems = parse_rules_text(text, "deep.yaml")
    assert rules == [] and [(p.file, p.field) for p in problems] == [("deep.yaml", "file")]
    assert "nested too deeply" in problems[0].problem


def test_a_long_aliased_value_is_quoted_short(tmp_path: Path) -> None:
    """Within the value limit, 9,000 aliases of a 10 kB string are 90 MB written out: a problem quotes
    the value cut short."""
    big = "x" * 10_000
    text = (f"- id: site-long\n  title: [&s {big}, " + ", ".join(["*s"] * 9_000) + "]\n  severity: warning\n"
            "  protocol: dicom\n  on: association-request\n  reference: site policy\n")
    rules, problems = parse_rules_text(text, "long.yaml")
    (problem,) = problems
    assert problem.field == "title" and problem.problem.startswith("expected text, got [")
    assert len(problem.problem) < 1000


# --------------------------------------------------------------------------- 10, 11: query keys


def listed(prefix: str, count: int) -> str:
    """`count` values separated by backslashes (PS3.5 6.4)."""
    return "\\".join(f"{prefix}{i:03d}" for i in range(count))


class Client:
    """One association of a client doing C-FINDs, its PDUs through the real decoder into the adapter."""

    def __init__(self, engine: Engine, client: str = "10.7.7.7") -> None:
        self.dicom = DicomAdapter(engine)
        self.flow = Flow(client, next(_ports), "10.1.1.2", 104, sensor="inline", id=f"r6-{next(_ports)}")
        self.decoder = AssociationDecoder()
        self.alerts: list[Alert] = []
        contexts = [P.PresentationContextRQ(1, FIND_PATIENT_ROOT, [IVLE]), P.PresentationContextRQ(3, FIND_STUDY_ROOT,
                                                                                                   [IVLE])]
        rq = P.AssociateRQ("PACS", "WS01", contexts, P.UserInformation.build(max_length=16384))
        self.send(True, P.encode_associate_rq(rq))
        ac = P.AssociateAC("PACS", "WS01", [P.PresentationContextAC(c.context_id, 0, IVLE) for c in contexts],
                           P.UserInformation.build(max_length=16384))
        self.send(False, P.encode_associate_ac(ac))
        self._mid = itertools.count(1)

    def send(self, from_client: bool, data: bytes) -> None:
        for ev in self.decoder.feed(from_client, data):
            self.alerts += self.dicom.observe(self.flow, ev)

    def find(self, ident: bytes, model: str = FIND_PATIENT_ROOT) -> None:
        mid = next(self._mid)
        context = 1 if model == FIND_PATIENT_ROOT else 3
        rq = CommandSet(C_FIND_RQ, message_id=mid, affected_sop_class_uid=model, priority=0, command_data_set_type=1)
        for pdu in encode_dimse_message(context, encode_command_set(rq), ident):
            self.send(True, pdu)
        rsp = CommandSet(C_FIND_RSP, message_id_being_responded_to=mid, affected_sop_class_uid=model, status=0)
        for pdu in encode_dimse_message(context, encode_command_set(rsp), None):
            self.send(False, pdu)

    def fired(self) -> list[str]:
        return [a.rule_id for a in self.alerts]


def engine() -> Engine:
    return Engine(BUILTIN, IdsSettings())


@pytest.mark.parametrize("key", ["patient_id", "patient_name"])
def test_one_find_listing_60_patients_is_enumeration(key: str) -> None:
    """Orthanc answers each value of a listed key as its own match: 60 patients in one C-FIND."""
    c = Client(engine())
    values = listed("ID" if key == "patient_id" else "DOE^", 60)
    c.find(identifier("PATIENT", **{key: values}))
    assert c.fired().count(ENUMERATION) == 1
    (alert,) = [a for a in c.alerts if a.rule_id == ENUMERATION]
    assert alert.event.details["threshold"]["reached"] == 50


def test_listed_patients_add_up_with_single_queries_and_repeats_count_once() -> None:
    """30 single queries and a list of 25 (5 of them already asked for, one twice, two wildcard-only)
    make 50 distinct patients: the 50th fires, no sooner."""
    c = Client(engine())
    for i in range(30):
        c.find(identifier("STUDY", patient_id=f"MRN{i:03d}"), FIND_STUDY_ROOT)
    assert ENUMERATION not in c.fired()
    old = [f"MRN{i:03d}" for i in range(25, 30)]
    new = [f"MRN{i:03d}" for i in range(30, 49)]
    c.find(identifier("STUDY", patient_id="\\".join(old + new + ["MRN030", "*", "?*"])), FIND_STUDY_ROOT)
    assert ENUMERATION not in c.fired()  # 49 distinct so far
    c.find(identifier("STUDY", patient_id="MRN049"), FIND_STUDY_ROOT)
    assert c.fired().count(ENUMERATION) == 1


def test_a_short_list_is_not_enumeration() -> None:
    """A viewer asking for a few patients at once (a list of 3) repeatedly stays quiet."""
    c = Client(engine())
    for _ in range(40):
        c.find(identifier("STUDY", patient_id="A1\\B2\\C3"), FIND_STUDY_ROOT)
    assert ENUMERATION not in c.fired()


@pytest.mark.parametrize("pid", ["*", "**", "?*", "*\\*"])
@pytest.mark.parametrize("name", ["", None])
def test_patient_level_find_with_wildcard_only_id_is_universal(pid: str, name: str | None) -> None:
    """PS3.4 C.2.2.2.4: a key of only `*` is universal matching, as an empty one (C.2.2.2.3)."""
    c = Client(engine())
    c.find(identifier("PATIENT", patient_name=name, patient_id=pid))
    assert c.fired() == [UNIVERSAL]


def test_wildcard_only_keys_with_a_named_patient_are_not_universal() -> None:
    c = Client(engine())
    c.find(identifier("PATIENT", patient_name="", patient_id="12345"))
    c.find(identifier("PATIENT", patient_name="SMITH^JOHN", patient_id="*"))
    c.find(identifier("PATIENT", patient_name="", patient_id="*\\12345"))
    c.find(identifier("STUDY", patient_name="", patient_id="*"), FIND_STUDY_ROOT)  # not PATIENT level
    assert UNIVERSAL not in c.fired()


def test_wildcard_name_list_is_a_wildcard_name() -> None:
    c = Client(engine())
    c.find(identifier("STUDY", patient_name="*\\*"), FIND_STUDY_ROOT)
    assert c.fired() == [WILDCARD]


# --------------------------------------------------------------------------- the inline IDS


def test_inline_ids_counts_a_listed_c_find_as_enumeration() -> None:
    """The gateway's inline IDS runs the same DicomAdapter: a relayed C-FIND whose Patient ID lists 60
    patients fires dicom-find-patient-enumeration there too, and one with Patient ID `*` the universal rule."""
    from playbook import Playbook, play, request, route_config

    from pacsguard.dicom import dimse

    ids = DicomAdapter(engine())

    def find(ident: bytes) -> bytes:
        command = dimse.CommandSet(dimse.C_FIND_RQ, message_id=3, affected_sop_class_uid=FIND_PATIENT_ROOT,
                                   priority=0, command_data_set_type=0x0000)
        return request(command, ident)

    def scenario_for(ident: bytes):  # type: ignore[no-untyped-def]
        async def scenario(pb: Playbook) -> None:
            await pb.associate(FIND_PATIENT_ROOT)
            await pb.client(find(ident))

        return scenario

    route = route_config()
    listed_pb = play(route, scenario_for(identifier("PATIENT", patient_id=listed("ID", 60))), engine=ids)
    assert listed_pb.kinds().count(f"ids.alert.{ENUMERATION}") == 1
    star_pb = play(route, scenario_for(identifier("PATIENT", patient_name="", patient_id="*")), engine=ids)
    assert f"ids.alert.{UNIVERSAL}" in star_pb.kinds()
