"""Outside round 17, area D: the privacy officer's outputs of audit messages a hostile sender wrote.
A user name with U+202E (RIGHT-TO-LEFT OVERRIDE) reads reversed in a browser ("\\u202enimda" as
"admin"), and one with U+200B (ZERO WIDTH SPACE) reads as another user's name: the html pages and
the table show such characters as visible marks. The messages are sent for real over the syslog
receiver (RFC 5425 octet counting, PS3.15 A.5 XML) and stored as `serve` stores them."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from atna_corpus import record
from receiver import free_port, running
from typer.testing import CliRunner

from pacsguard.atna.message.build import to_xml
from pacsguard.atna.message.record import Participant
from pacsguard.cli import main
from pacsguard.store.keys import public_path
from store_helpers import new_store

#: This helper's loopback address (outside round 17, area D).
HOST = "127.0.74.1"
PATIENT = "PID-1^^^STMARY&1.2.3&ISO"
REVERSED = "\u202enimda"  # shown by a browser as "admin"
LOOKALIKE = "j\u200bsmith"  # shown by a browser as "jsmith"


def _message(user: str, when: datetime) -> bytes:
    """A Patient Record read (PS3.15 A.5.3) by ``user`` at ``when``, framed for the syslog receiver."""
    base = record("110110")
    r = replace(base, time=when, action="R",
                objects=(replace(base.objects[0], object_id=PATIENT),),
                participants=(Participant(user, requestor=True, access_point="10.20.0.7", access_point_type="2"),))
    frame = b"<85>1 2026-12-03T10:00:00Z vna1 audit - IHE+RFC-3881 - " + to_xml(r)
    return str(len(frame)).encode() + b" " + frame


def _site(tmp_path: Path, users: list[str], times: list[datetime] | None = None) -> tuple[str, Path]:
    """A store holding one access by each of ``users`` (at ``times``; default a minute apart from
    2026-12-03 10:00 UTC), received over TCP syslog."""
    times = times or [datetime(2026, 12, 3, 10, n, tzinfo=timezone.utc) for n in range(len(users))]
    store, key = new_store(str(tmp_path / "store.db"), tmp_path)
    port = free_port(HOST)
    with running({"tcp": {"host": HOST, "port": port}}, store) as rx:
        with socket.create_connection((HOST, port), timeout=5) as conn:
            conn.sendall(b"".join(_message(u, when) for u, when in zip(users, times, strict=True)))
        got = rx.wait(lambda evs: sum(e.kind.startswith("atna.audit.") for e in evs) >= len(users),
                      "every message received")
        store.append([e for e in got if e.kind.startswith("atna.audit.")])
    store.close()
    return str(tmp_path / "store.db"), key


def _cli(*args: str) -> tuple[int, str]:
    out = CliRunner().invoke(main.app, list(args))
    return out.exit_code, out.output


def _shown_part(page: str) -> str:
    """What a browser shows of a page: all but its data script element."""
    return page[:page.index('<script type="application/json"')]


def test_the_patient_report_page_shows_reversing_and_invisible_characters(tmp_path: Path) -> None:
    """The html form showed U+202E and U+200B as they are: "\\u202enimda" read "admin" and
    "j\\u200bsmith" read "jsmith", so the signed report let a sender pose as another user. They
    are shown as <U+202E> and <U+200B>; the json keeps them exact, and the page still proves."""
    target, key = _site(tmp_path, [REVERSED, LOOKALIKE, "jsmith"])
    code, page = _cli("audit", "patient", PATIENT, "--store", target, "--key", str(key), "--format", "html")
    assert code == 0, page
    shown = _shown_part(page)
    assert "\u202e" not in shown and "\u200b" not in shown, shown
    assert "&lt;U+202E&gt;nimda" in shown and "j&lt;U+200B&gt;smith" in shown
    saved = tmp_path / "report.html"
    saved.write_text(page, encoding="utf-8")
    code, said = _cli("audit", "prove", str(saved), "--key", str(public_path(key)))
    assert code == 0 and "OK: 3 events proven" in said, said
    code, text = _cli("audit", "patient", PATIENT, "--store", target, "--key", str(key), "--format", "json")
    assert code == 0 and {r["user"] for r in json.loads(text)["events"]} == {REVERSED, LOOKALIKE, "jsmith"}


def test_a_page_saved_before_the_characters_were_shown_still_proves(tmp_path: Path) -> None:
    """A page `audit patient` wrote before showed the characters raw; it is still what the signed
    report renders as then, so it proves; an edit of it still fails."""
    from pacsguard.atna import report as made

    target, key = _site(tmp_path, [REVERSED])
    code, text = _cli("audit", "patient", PATIENT, "--store", target, "--key", str(key), "--format", "json")
    assert code == 0, text
    earlier = "".join(part for _, part in made._page_parts(json.loads(text), made._earlier_text)) + "\n"
    assert REVERSED in _shown_part(earlier)
    saved = tmp_path / "earlier.html"
    saved.write_text(earlier, encoding="utf-8")
    code, said = _cli("audit", "prove", str(saved), "--key", str(public_path(key)))
    assert code == 0, said
    saved.write_text(earlier.replace("nimda</td>", "nimdb</td>"), encoding="utf-8")
    code, said = _cli("audit", "prove", str(saved), "--key", str(public_path(key)))
    assert code == 1 and "was edited" in said, said


def test_the_daily_page_shows_a_lookalike_user_as_another(tmp_path: Path) -> None:
    """The daily page's top users showed "j\\u200bsmith" and "jsmith" as two bars both reading
    "jsmith" (only the bidi controls were made visible)."""
    target, _ = _site(tmp_path, [LOOKALIKE, "jsmith", "jsmith", "x\u2028y\ufeff"])
    code, page = _cli("audit", "report", "--day", "2026-12-03", "--time-zone", "UTC", "--store", target)
    assert code == 0, page
    shown = _shown_part(page)
    assert not any(c in shown for c in "\u200b\u2028\ufeff"), shown
    assert "j&lt;U+200B&gt;smith" in shown and "x&lt;U+2028&gt;y&lt;U+FEFF&gt;" in shown


def test_the_table_shows_a_lookalike_user_as_another(tmp_path: Path) -> None:
    """The table escaped controls and bidi marks (`layout.printable`) but wrote U+200B as it is."""
    target, key = _site(tmp_path, [LOOKALIKE, "jsmith"])
    code, out = _cli("audit", "patient", PATIENT, "--store", target, "--key", str(key))
    assert code == 0, out
    assert "\u200b" not in out and "j\\u200bsmith" in out, out


def test_the_csv_shows_reversing_and_invisible_characters(tmp_path: Path) -> None:
    """A spreadsheet shows U+202E and U+200B as a browser does: the csv wrote them as they are.
    A formula start is still guarded after them ("\\u202e=1+2" is no formula: it starts with "<")."""
    import csv
    import io

    target, key = _site(tmp_path, [REVERSED, LOOKALIKE, "=1+2", "\u202e=1+2"])
    code, text = _cli("audit", "patient", PATIENT, "--store", target, "--key", str(key), "--format", "csv")
    assert code == 0, text
    assert "\u202e" not in text and "\u200b" not in text, text
    users = [row["user"] for row in csv.DictReader(io.StringIO(text))]
    assert sorted(users) == sorted(["<U+202E>nimda", "j<U+200B>smith", "'=1+2", "<U+202E>=1+2"]), users


def test_the_daily_page_tells_the_twice_lived_hour_apart(tmp_path: Path) -> None:
    """On 2026-10-25 Berlin's clocks go back at 03:00 CEST: 00:30 and 01:30 UTC are both 02:30 on
    the ward's clock. The page listed both accesses at night as "2026-10-25T02:30:00"; it gives
    each its offset (the json did already)."""
    night = [datetime(2026, 10, 25, 0, 30, tzinfo=timezone.utc), datetime(2026, 10, 25, 1, 30, tzinfo=timezone.utc)]
    target, _ = _site(tmp_path, ["kim", "lee"], night)
    code, page = _cli("audit", "report", "--day", "2026-10-25", "--time-zone", "Europe/Berlin", "--store", target)
    assert code == 0, page
    shown = _shown_part(page)
    assert "<td>2026-10-25T02:30:00+02:00</td>" in shown and "<td>2026-10-25T02:30:00+01:00</td>" in shown, shown


def test_every_table_shows_zero_width_and_tag_characters_as_escapes() -> None:
    """The tables of `audit search`, `atna sources` and the rest all write cells through
    layout.printable: a zero-width space, a word joiner, a BOM or a tag character in a user name
    is shown as an escape, not as nothing."""
    from pacsguard.cli.layout import printable

    assert printable("j\u200bsmith") == "j\\u200bsmith"
    assert printable("a\u2060b\ufeffc") == "a\\u2060b\\ufeffc"
    assert printable("x\U000e0041") == "x\\U000e0041"
    assert printable("M\u00fcller \u00e9") == "M\u00fcller \u00e9"  # letters stay as they are
