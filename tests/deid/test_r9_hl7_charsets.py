"""Round 9 of outside testing (issue 20, HL7 de-identification): a hexadecimal escape (HL7 v2.5.1
2.7.3, \\Xhh\\) stands for bytes of the message's character set, MSH-18 (2.14.9.18). Western
European feeds declare 8859/1 and write an accented letter as \\XE9\\; pacsguard decoded every
\\X escape as UTF-8, so that one stayed undecoded and split the name around it: "Z\\XE9\\bulon"
matched no name part and passed through free text, and PID-5 written that way got another
pseudonym than the patient's DICOM objects."""

from __future__ import annotations

from deid_helpers import KEY, engine
from pydicom.dataset import Dataset

from pacsguard.deid.engine import Report
from pacsguard.deid.hl7 import deidentify_message
from pacsguard.deid.pseudonym import Pseudonyms

P = Pseudonyms(KEY.secret)


def _message(charset: str, pid5: str, note: str) -> str:
    return "\r".join([
        f"MSH|^~\\&|RIS|HOSP|PACS|HOSP|20190317101010||ORU^R01|MSG0001|P|2.5.1||||||{charset}",
        f"PID|1||PID77341^^^HOSP^MR||{pid5}||19470823|M",
        f"OBX|1|FT|NOTE||{note}||||||F",
        f"NTE|1||{note}",
    ]) + "\r"


def _segment(out: str, name: str) -> list[str]:
    return next(s for s in out.split("\r") if s.startswith(name)).split("|")


def test_a_latin1_hex_escape_in_free_text_hides_no_name() -> None:
    out = deidentify_message(_message("8859/1", "QUIXOTE^ZÉBULON", "Seen: Z\\XE9\\bulon, stable"), P)
    for leak in ("bulon", "\\XE9\\", "Z\\X"):
        assert leak not in out, (leak, out)
    assert _segment(out, "OBX")[5] == "Seen: X, stable"
    assert _segment(out, "NTE")[3] == "Seen: X, stable"


def test_a_latin1_hex_escape_in_pid5_gives_the_dicom_objects_name() -> None:
    out = deidentify_message(_message("8859/1", "QUIXOTE^Z\\XC9\\BULON", "stable"), P)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientID, ds.PatientName = "PID77341", "QUIXOTE^ZÉBULON"
    engine().apply_attributes(ds, Report())
    assert _segment(out, "PID")[5] == str(ds.PatientName)


def test_utf8_escapes_still_decode_and_unknown_sets_fall_back() -> None:
    """MSH-18 UNICODE UTF-8 (and no MSH-18 at all) read \\XC3A9\\ as "é", as before; bytes that are
    not UTF-8 under an unnamed set are read as Latin-1 rather than left as a word break."""
    for charset, escaped in (("UNICODE UTF-8", "Z\\XC3A9\\bulon"), ("", "Z\\XC3A9\\bulon"), ("", "Z\\XE9\\bulon")):
        out = deidentify_message(_message(charset, "QUIXOTE^ZÉBULON", f"{escaped} seen"), P)
        assert _segment(out, "NTE")[3] == "X seen", (charset, escaped, out)
