"""How a sealed record is read back from `event_bodies`, by the search and by verify alike. On
SQLite the record is read as its bytes with its storage class: SQLite keeps whatever bytes an edit
writes as TEXT, and sqlite3 would fail a whole statement on one that is not UTF-8, with a message
that echoes the record (patient data)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, LargeBinary, cast, func, literal

from pacsguard.store.schema import event_bodies


def body_columns(dialect: str) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """The sealed record as read for searching and verifying, and its SQLite storage class ("text" as pacsguard
    writes it). On SQLite the record is read as its bytes (CAST AS BLOB): a TEXT value that is not
    valid UTF-8 (SQLite keeps whatever an edit writes) is then a finding about that one record rather
    than a decoding error that stops the reading (and echoes the record, patient data, in its
    message). PostgreSQL's text is valid UTF-8 by construction."""
    body = event_bodies.c.body
    if dialect == "sqlite":
        return cast(body, LargeBinary).label("body"), func.typeof(body).label("body_type")
    return body.label("body"), literal("text").label("body_type")


class Unreadable:
    """A sealed record that is stored but is not text (``reason`` says what it holds, in words: no
    byte of it, which is patient data); ``raw``: its bytes when it is text that is not UTF-8;
    ``kind``: its SQLite storage class."""

    __slots__ = ("kind", "raw", "reason")

    def __init__(self, reason: str, raw: bytes = b"", kind: str = "text") -> None:
        self.reason, self.raw, self.kind = reason, raw, kind


def body_of(body: Any, body_type: str) -> str | Unreadable:
    """A record read with `body_columns`: its text, or what it holds instead (`Unreadable`)."""
    if isinstance(body, str):
        return body
    if body_type == "text" and isinstance(body, (bytes, memoryview)):
        raw = bytes(body)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Unreadable(f"is not valid UTF-8 text (byte {exc.start} of {len(raw)} is not), so it is not "
                              "a record pacsguard sealed", raw)
    what = {"blob": f"a blob of {len(bytes(body)) if body is not None else 0} bytes", "integer": "a number",
            "real": "a number", "null": "NULL"}.get(body_type, f"a value of type {body_type}")
    return Unreadable(f"holds {what}, not the text of a sealed record", kind=body_type)
