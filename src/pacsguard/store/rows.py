"""Inserting a batch's rows in statements of many rows each (SQL-92 table value constructor,
``INSERT ... VALUES (...), (...)``), not one statement per row.

Why: Python's sqlite3 releases the GIL around every statement step, and the store's writer is a
thread beside a busy event loop (the gateway's, the ATNA receiver's). With ``executemany`` each
row was one step, so each row waited for the loop to hand the GIL back (up to the 5 ms switch
interval): 1,000 rows took 7-8 s instead of 4 ms while the loop was busy (bench/store.py
``--busy``). A statement of 64 rows is one step. On PostgreSQL it is one round trip.

Rows go in statements of a power-of-two number of rows, largest first, so a table has at most
eight statement texts for the driver's statement cache, and no statement binds more than 999
parameters (SQLite's limit before 3.32, psycopg's needs none)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from sqlalchemy import Table

#: Parameters one statement binds at most: SQLite's SQLITE_MAX_VARIABLE_NUMBER before 3.32.
MAX_PARAMETERS = 999
#: Rows one statement carries at most, however narrow the table.
MAX_ROWS = 128


@dataclass(frozen=True, slots=True)
class RowsInsert:
    """The INSERT statements of one table, by number of rows (a power of two)."""

    table: str
    statements: dict[int, str] = field(repr=False)
    most: int

    @classmethod
    def of(cls, table: Table, paramstyle: str) -> RowsInsert:
        marker = "?" if paramstyle == "qmark" else "%s"
        width = len(table.columns)
        names = ", ".join(c.name for c in table.columns)
        one = "(" + ", ".join([marker] * width) + ")"
        most = 1
        while most * 2 <= MAX_ROWS and most * 2 * width <= MAX_PARAMETERS:
            most *= 2
        statements = {}
        size = most
        while size:
            statements[size] = f"INSERT INTO {table.name} ({names}) VALUES " + ", ".join([one] * size)
            size //= 2
        return cls(table.name, statements, most)

    def run(self, execute: Callable[[str, tuple[Any, ...]], object], rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` in their order through ``execute(statement, parameters)``."""
        at, left = 0, len(rows)
        while left:
            size = min(self.most, 1 << (left.bit_length() - 1))
            chunk = rows[at:at + size]
            execute(self.statements[size], tuple(chain.from_iterable(chunk)))
            at += size
            left -= size
