"""HL7 v2 de-identification beyond PID, NK1, PV1, OBX and NTE (issue 20, round 6): merges
(MRG), insurance and guarantors (IN1, IN2, GT1), orders (ORC, OBR, IPC), results (OBX of every
value type), site-defined Z-segments, and escapes, repetitions and components that hid a name or
an ID. Each message is realistic (HL7 v2.5.1 chapters 2, 3, 4, 6, 7); every name, ID, date,
address and phone it holds must be absent from the output."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from deid_helpers import KEY

from pacsguard.deid import hl7
from pacsguard.deid.hl7 import deidentify_message
from pacsguard.deid.pseudonym import Pseudonyms

P = Pseudonyms(KEY.secret)
STUDY_UID = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment from its fields by HL7 field number (gaps are empty fields)."""
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return "|".join([name, *values])


def msh(kind: str, control: str) -> str:
    return f"MSH|^~\\&|ADT1|GOOD HEALTH HOSPITAL^1.2.3.4.55^ISO|RADIS|SPRINGFIELD IMAGING|20240402101500||{kind}|" \
           f"{control}|P|2.5.1"


PID = seg("PID", {1: "1", 3: "MRN556677^^^GHH^MR~ZK77QX^^^GHH^PI", 5: "QUIMBY^JOSEPHINE^Q~BOUVIER^JOSETTE^^^^^M",
                  6: "GURNEY^MAUDE", 7: "19520714", 8: "F", 11: "742 EVERGREEN TER^^SPRINGFIELD^OR^97403",
                  13: "(541)555-0142", 18: "ACCT9911^^^GHH^AN", 19: "987-65-4321", 33: "20240301"})

#: ADT^A40: patient MRN112233 merged into MRN556677 (HL7 v2.5.1 3.3.40).
A40 = "\r".join([
    msh("ADT^A40^ADT_A39", "CTRL88310"),
    seg("EVN", {1: "A40", 2: "20240402101500", 5: "OPR77^KRABAPPEL^EDNA", 6: "20240402101000"}),
    PID,
    seg("MRG", {1: "MRN112233^^^GHH^MR~MRN445566^^^GHH^MR", 2: "ALTQ5519", 3: "ACCT7722^^^GHH^AN",
                5: "VISIT3344^^^GHH^VN", 7: "QUIMBY^JOSIE"}),
    seg("PV1", {1: "1", 2: "I", 3: "WARD3^12^A", 7: "9988^HIBBERT^JULIUS^^^DR", 19: "VISIT5566^^^GHH^VN",
                44: "20240401083000"}),
]) + "\r"

#: ADT^A04 with insurance, guarantor, next of kin and a site's Z-segment (3.3.4, 6.5).
A04 = "\r".join([
    msh("ADT^A04^ADT_A01", "CTRL88311"),
    seg("EVN", {1: "A04", 2: "20240402101500"}),
    PID,
    seg("PD1", {3: "SPRINGFIELD CLINIC^^4455", 4: "8877^RIVIERA^NICK^^^DR", 10: "DUP5599^^^GHH^MR"}),
    seg("NK1", {1: "1", 2: "QUIMBY^DIAMOND", 3: "SPO", 4: "742 EVERGREEN TER^^SPRINGFIELD^OR^97403",
                5: "(541)555-0143"}),
    seg("PV1", {1: "1", 2: "O", 3: "CLINIC2^RM4^B", 7: "9988^HIBBERT^JULIUS^^^DR", 19: "VISIT5567^^^GHH^VN",
                44: "20240402100000"}),
    seg("PV2", {3: "^Chest pain after fall at Quimby residence", 8: "20240402"}),
    seg("IN1", {1: "1", 2: "PLAN01^GOLD PLAN", 3: "INSCO77", 4: "BLUE SHIELD OF SPRINGFIELD",
                5: "100 INSURANCE WAY^^CAPITAL CITY^OR^97301", 7: "(800)555-0199", 8: "GRP4411",
                9: "SPRINGFIELD NUCLEAR PLANT", 12: "20240101", 13: "20241231", 15: "PPO",
                16: "QUIMBY^JOSEPH^J", 17: "SPO", 18: "19500101", 19: "742 EVERGREEN TER^^SPRINGFIELD^OR^97403",
                36: "POL77881122", 44: "1 NUCLEAR PLAZA^^SPRINGFIELD^OR^97404", 49: "INSID5544^^^BSS"}),
    seg("IN2", {1: "EMP3321", 2: "123-44-5678", 6: "MCARE9911A"}),
    seg("GT1", {1: "1", 2: "GUAR6655", 3: "QUIMBY^JOSEPH^J", 5: "742 EVERGREEN TER^^SPRINGFIELD^OR^97403",
                6: "(541)555-0144", 8: "19500101", 9: "M", 11: "SPO", 12: "123-44-5678",
                16: "BURNS^MONTGOMERY", 17: "1 NUCLEAR PLAZA^^SPRINGFIELD^OR^97404"}),
    seg("DG1", {1: "1", 3: "R07.9^Chest pain, unspecified^I10", 4: "Chest pain reported by Josephine",
                5: "20240402", 16: "9988^HIBBERT^JULIUS"}),
    seg("AL1", {1: "1", 2: "DA", 3: "^PENICILLIN", 4: "SV", 5: "HIVES", 6: "20100101"}),
    seg("ROL", {1: "ROL001", 2: "AD", 3: "PP^Primary Care Provider^HL70443", 4: "8877^RIVIERA^NICK"}),
    seg("ACC", {1: "20240401083000", 2: "HOME", 3: "742 EVERGREEN TER", 8: "FELL DOWN STAIRS, seen by GURNEY"}),
    seg("ZPI", {1: "1", 2: "SECRETZ^QUIMBY", 3: "MRN556677", 4: "SPRINGFIELD ELEMENTARY"}),
]) + "\r"

#: ORM^O01: a chest X-ray ordered (4.4.1), with IHE's IPC and a Z-segment carrying the study UID.
ORM = "\r".join([
    msh("ORM^O01^ORM_O01", "CTRL88312"),
    PID,
    seg("PV1", {1: "1", 2: "O", 19: "VISIT5567^^^GHH^VN"}),
    seg("ORC", {1: "NW", 2: "PLC12345^RIS", 3: "FIL67890^PACS", 7: "^^^20240402120000^^R", 9: "20240402115500",
                10: "2233^SZYSLAK^MOE", 12: "8877^RIVIERA^NICK^^^DR", 13: "XRAY^^^GHH", 14: "(541)555-0150"}),
    seg("OBR", {1: "1", 2: "PLC12345^RIS", 3: "FIL67890^PACS", 4: "71020^CHEST XRAY 2 VIEWS^C4",
                6: "20240402120000", 13: "Fall; ask Dr Riviera", 16: "8877^RIVIERA^NICK^^^DR",
                17: "(541)555-0150", 18: "ACC2024000123", 19: "RP5566", 20: "SPS7788", 24: "RAD", 25: "O",
                27: "^^^20240402120000^^R", 32: "4455&CARLSON&CARL"}),
    seg("IPC", {1: "ACC2024000123", 2: "RP5566", 3: STUDY_UID, 4: "SPS7788", 5: "CR"}),
    seg("ZDS", {1: f"{STUDY_UID}^PACS^Application^DICOM"}),
]) + "\r"

#: ORU^R01: the report (7.3.1), OBX of several value types.
ORU = "\r".join([
    msh("ORU^R01^ORU_R01", "CTRL88313"),
    PID,
    seg("OBR", {1: "1", 2: "PLC12345^RIS", 3: "FIL67890^PACS", 4: "71020^CHEST XRAY 2 VIEWS^C4",
                7: "20240402121500", 22: "20240402130000", 25: "F", 32: "4455&CARLSON&CARL"}),
    seg("OBX", {1: "1", 2: "TX", 3: "GDT^Report^L", 5: "Josephine Quimby (MRN556677) fell.~Lungs clear.",
                11: "F", 14: "20240402121500", 16: "4456^LEONARD^LENNY"}),
    seg("OBX", {1: "2", 2: "CWE", 3: "IMP^Impression^L", 5: "J18.9^Pneumonia, per BOUVIER^I10^^^^^^seen by Carlson",
                11: "F"}),
    seg("OBX", {1: "3", 2: "PN", 3: "REF^Referrer^L", 5: "RIVIERA^NICK", 11: "F"}),
    seg("OBX", {1: "4", 2: "NM", 3: "HR^Heart rate^L", 5: "72", 6: "/min", 11: "F"}),
    seg("OBX", {1: "5", 2: "ED", 3: "PDF^Report^L", 5: "^AP^PDF^Base64^SlZCRVJJMjAyNA==", 11: "F"}),
    seg("OBX", {1: "6", 2: "TS", 3: "DT^Exam date^L", 5: "20240402121500", 11: "F"}),
    seg("NTE", {1: "1", 3: "Results phoned to (541)555-0142, Mrs Quimby"}),
]) + "\r"

#: Every name, ID, date, address and phone of the four messages.
SECRETS = (
    "MRN556677", "ZK77QX", "QUIMBY", "Quimby", "JOSEPHINE", "Josephine", "BOUVIER", "JOSETTE", "GURNEY", "MAUDE",
    "19520714", "EVERGREEN", "97403", "555-014", "ACCT9911", "987-65-4321", "20240301", "GOOD HEALTH",
    "1.2.3.4.55", "SPRINGFIELD", "CTRL8831", "20240402", "KRABAPPEL", "OPR77", "MRN112233", "MRN445566",
    "ALTQ5519", "ACCT7722", "VISIT3344", "JOSIE", "WARD3", "HIBBERT", "Hibbert", "JULIUS", "9988", "VISIT556",
    "20240401", "CLINIC2", "4455", "RIVIERA", "Riviera", "NICK", "8877", "DUP5599", "DIAMOND", "INSCO77",
    "BLUE SHIELD", "INSURANCE WAY", "CAPITAL CITY", "555-0199", "GRP4411", "NUCLEAR", "20240101", "20241231",
    "JOSEPH^", "19500101", "POL77881122", "INSID5544", "EMP3321", "123-44-5678", "MCARE9911A", "GUAR6655",
    "BURNS", "MONTGOMERY", "20100101", "ROL001", "SECRETZ", "ELEMENTARY", "PLC12345", "FIL67890", "SZYSLAK",
    "MOE", "2233", "555-0150", "ACC2024000123", "RP5566", "SPS7788", STUDY_UID, "CARLSON", "CARL", "SlZCRVJJ",
    "LEONARD", "LENNY", "4456",
)
MESSAGES = {"adt-a40": A40, "adt-a04": A04, "orm-o01": ORM, "oru-r01": ORU}


def _segments(out: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in out.split("\r") if s.startswith(name + "|") or s == name]


@pytest.mark.parametrize("kind", sorted(MESSAGES))
@pytest.mark.parametrize("shifted", [False, True], ids=["dates-removed", "dates-shifted"])
def test_no_name_id_date_address_or_phone_survives(kind: str, shifted: bool) -> None:
    message = MESSAGES[kind]
    out = deidentify_message(message, P, keep_dates_shifted=shifted)
    present = [s for s in SECRETS if s in message]
    assert len(present) >= 10, present  # the message holds what the test looks for
    assert [s for s in present if s in out] == []


def test_merge_keys_the_prior_patient_like_pid3_and_dicom() -> None:
    out = deidentify_message(A40, P)
    mrg = _segments(out, "MRG")[0]
    assert mrg[1] == f"{P.patient_id('MRN112233')}~{P.patient_id('MRN445566')}"
    assert mrg[3] == P.text("hl7-account", "ACCT7722")
    assert mrg[5] == P.text("hl7-visit", "VISIT3344^^^GHH^VN")
    assert mrg[7] == P.patient_name("MRN112233", "QUIMBY^JOSIE")  # what the prior patient's DICOM objects get
    assert mrg[2] == ""  # the prior alternate ID, emptied like PID-4
    # The same prior patient, as a patient of their own in an earlier message: the same pseudonyms.
    earlier = deidentify_message(A40.replace(PID, seg("PID", {1: "1", 3: "MRN112233^^^GHH^MR", 5: "QUIMBY^JOSIE",
                                                              18: "ACCT7722"})), P)
    pid = _segments(earlier, "PID")[0]
    assert (pid[3], pid[5], pid[18]) == (P.patient_id("MRN112233"), mrg[7], mrg[3])


def test_each_patient_group_of_a_merge_gets_its_own_keys() -> None:
    """ADT^A40 repeats PID-MRG per merged pair (HL7 v2.5.1 3.3.40): each MRG-7 is its own prior
    patient's name, and each patient's dates move by that patient's offset."""
    second_pid = seg("PID", {1: "2", 3: "MRN990011^^^GHH^MR", 5: "FLANDERS^NED", 7: "19600101"})
    second_mrg = seg("MRG", {1: "MRN220033^^^GHH^MR", 7: "FLANDERS^NEDWARD"})
    message = A40 + second_pid + "\r" + second_mrg + "\r"
    out = deidentify_message(message, P, keep_dates_shifted=True)
    mrgs, pids = _segments(out, "MRG"), _segments(out, "PID")
    assert mrgs[1][7] == P.patient_name("MRN220033", "FLANDERS^NEDWARD")
    assert pids[1][5] == P.patient_name("MRN990011", "FLANDERS^NED")
    assert pids[1][7] == (datetime(1960, 1, 1) - P.day_shift("MRN990011")).strftime("%Y%m%d")
    assert pids[0][7] == (datetime(1952, 7, 14) - P.day_shift("MRN556677")).strftime("%Y%m%d")


def test_orders_keep_their_links_and_the_study_uid_matches_dicom() -> None:
    out = deidentify_message(ORM, P)
    orc, obr, ipc = _segments(out, "ORC")[0], _segments(out, "OBR")[0], _segments(out, "IPC")[0]
    assert orc[2] == obr[2] == P.text("hl7-order", "PLC12345") and orc[3] == obr[3] != orc[2]
    assert obr[18] == ipc[1] and ipc[3] == P.uid(STUDY_UID)
    assert obr[4] == "71020^CHEST XRAY 2 VIEWS^C4" and ipc[5] == "CR" and orc[1] == "NW"
    assert "ask Dr X" in obr[13]  # the clinician's name is scrubbed from the clinical info, the rest stays


def test_unknown_and_z_segments_keep_only_their_id() -> None:
    out = deidentify_message(A04, P) + deidentify_message(ORM, P)
    assert _segments(out, "ZPI") == [["ZPI"]] and _segments(out, "ZDS") == [["ZDS"]]
    other = deidentify_message(A04.replace("ZPI|", "UB1|"), P)
    assert _segments(other, "UB1") == [["UB1"]]
    assert "ZPI" not in hl7.SEGMENTS and "UB1" not in hl7.SEGMENTS


def test_msh_keeps_routing_and_keys_facilities_and_control_id() -> None:
    out = deidentify_message(ORU, P)
    msh_fields = out.split("\r")[0].split("|")
    assert msh_fields[:3] == ["MSH", "^~\\&", "ADT1"]  # MSH-3: the application's namespace ID
    assert msh_fields[3] == P.text("hl7-facility", "GOOD HEALTH HOSPITAL")
    assert msh_fields[5] == P.text("hl7-facility", "SPRINGFIELD IMAGING")
    assert msh_fields[6] == "19000101"  # MSH-7 is required: a dummy when dates are removed
    assert msh_fields[8:] == ["ORU^R01^ORU_R01", P.text("hl7-control", "CTRL88313", 20), "P", "2.5.1"]
    ack = "\r".join(["MSH|^~\\&|RADIS|SPRINGFIELD IMAGING|ADT1|GOOD HEALTH HOSPITAL|20240402101501||ACK|A1|P|2.5.1",
                     "MSA|AA|CTRL88313|Message accepted"]) + "\r"
    msa = _segments(deidentify_message(ack, P), "MSA")[0]
    assert msa == ["MSA", "AA", msh_fields[9], "Message accepted"]  # the ACK still answers its message


def test_observations_by_value_type() -> None:
    out = deidentify_message(ORU, P)
    obx = {o[1]: o for o in _segments(out, "OBX")}
    assert obx["1"][5] == "X X (X) fell.~Lungs clear."
    assert obx["2"][5] == "J18.9^Pneumonia, per X^I10^^^^^^seen by X"  # codes kept, texts cleaned
    assert obx["3"][5] == "" and obx["5"][5] == ""  # a person's name; a PDF nobody looked into
    assert obx["4"][5:7] == ["72", "/min"]
    assert obx["6"][5] == "" and obx["1"][14] == "" and obx["1"][16] == ""


def test_dates_move_by_one_offset_across_segments() -> None:
    out = deidentify_message(A04, P, keep_dates_shifted=True)
    in1, pv1 = _segments(out, "IN1")[0], _segments(out, "PV1")[0]
    start, end = (datetime.strptime(in1[n], "%Y%m%d") for n in (12, 13))
    assert (end - start).days == (datetime(2024, 12, 31) - datetime(2024, 1, 1)).days
    shift = datetime(2024, 1, 1) - start
    assert shift == P.day_shift("MRN556677")
    assert pv1[44] == (datetime(2024, 4, 2, 10) - shift).strftime("%Y%m%d%H%M%S")
    msh_time = out.split("\r")[0].split("|")[6]
    assert msh_time == (datetime(2024, 4, 2, 10, 15) - shift).strftime("%Y%m%d%H%M%S")


# -- 2. escapes, repetitions, components ------------------------------------------------------------


def _one(pid5: str, text: str, pid3: str = "MRN556677") -> str:
    message = "\r".join([msh("ORU^R01", "C1"), f"PID|1||{pid3}||{pid5}||19520714|F",
                         f"OBX|1|TX|GDT^Report^L||{text}||||||F", f"NTE|1||{text}"]) + "\r"
    return deidentify_message(message, P)


@pytest.mark.parametrize(("pid5", "text", "secret"), [
    ("QUIMBY^JOSEPHINE~BOUVIER^JOSETTE", "Daughter of the Bouvier family", "Bouvier"),  # a second repetition
    ("QUIMBY^JOSEPHINE~LI^WU", "Seen with Li today", "Li "),  # a short name of the second repetition
    ("LI^WU", "Patient LI~WU stable", "LI~"),  # a repetition separator inside the text
    ("LI^WU", "Patient LI&WU stable", "LI&"),  # a subcomponent separator inside the text
    ("SMITH\\T\\JONES^ANNA", "Mrs Jones called", "Jones"),  # an escaped subcomponent in the name
    ("SMITH\\S\\JONES^ANNA", "Mrs Jones called", "Jones"),  # an escaped component in the name
    ("QUIMBY^JOSEPHINE", "Mrs \\X51\\UIMBY called", "UIMBY"),  # a hex escape inside a word of the text
    ("QUIMBY^JOSEPHINE", "QUIMBY\\F\\JOSEPHINE\\S\\Q", "JOSEPHINE"),  # escaped separators in the text
], ids=["second-repetition", "second-repetition-short", "text-repetition", "text-subcomponent",
        "name-escaped-T", "name-escaped-S", "text-hex", "text-F-S"])
def test_escapes_and_repetitions_hide_no_name(pid5: str, text: str, secret: str) -> None:
    out = _one(pid5, text)
    body = out.split("\r", 1)[1]
    assert secret.lower() not in body.lower(), body


def test_every_patient_id_repetition_is_keyed_and_scrubbed() -> None:
    out = _one("QUIMBY^JOSEPHINE", "Old number ZK77QX, see MRN\\S\\5566", pid3="MRN556677~ZK77QX~MRN\\S\\5566")
    pid = _segments(out, "PID")[0]
    assert pid[3] == "~".join(P.patient_id(i) for i in ("MRN556677", "ZK77QX", "MRN^5566"))
    assert "ZK77QX" not in out and "5566" not in out


def test_formatting_escapes_stay_in_cleaned_text() -> None:
    out = _one("QUIMBY^JOSEPHINE", "Impression:\\.br\\\\H\\normal\\N\\ for Quimby")
    note = _segments(out, "NTE")[0][3]
    assert note == "Impression:\\.br\\\\H\\normal\\N\\ for X"


def test_a_pid5_escape_gives_the_dicom_name_pseudonym() -> None:
    """DICOM's Patient's Name holds the characters HL7 escapes: the pseudonyms must agree."""
    out = _one("O\\S\\BRIEN^PAT", "x")
    assert _segments(out, "PID")[0][5] == P.patient_name("MRN556677", "O^BRIEN^PAT")


def test_tables_name_only_known_actions() -> None:
    for name, table in hl7.SEGMENTS.items():
        assert re.fullmatch(r"[A-Z][A-Z0-9]{2}", name)
        assert set(table.values()) <= set("KDTPNMAVOUnci"), name
