"""A batch's rows go into the store in statements of many rows each (store/rows.py). One
statement per row made the writer thread, beside a busy event loop, wait for the GIL once per
row: 40 events/s instead of 30,000 (bench/store.py --busy). Checked on SQLite and PostgreSQL:
the statements a batch costs, and that every row of every table arrives, in order, whatever the
number of rows."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, event

from pacsguard.store import EventQuery, EventStore
from pacsguard.store.keys import load_public_key
from pacsguard.store.rows import MAX_PARAMETERS, RowsInsert
from pacsguard.store.verify import verify_store
from store_helpers import make_events, new_store


def test_a_batch_of_a_thousand_events_is_a_few_dozen_statements(target: str, tmp_path: Any) -> None:
    es, key = new_store(target, tmp_path)
    statements: list[str] = []  # one per statement the database runs (executemany: one a row)

    def ran(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        statements.extend([sql] * (len(params) if many else 1))

    event.listen(es.engine, "before_cursor_execute", ran)
    sent = make_events(1000)
    es.append(sent)
    inserts = [s for s in statements if s.startswith("INSERT")]
    assert 0 < len(inserts) <= 60, len(inserts)  # one a row made 1000 for each table
    assert [s.event.to_dict() for s in es.search(EventQuery(limit=None))] == [e.to_dict() for e in sent]
    es.close()
    report = verify_store(EventStore.open(target), load_public_key(key))
    assert report.ok and report.newest_checkpoint == 1000, report.findings


@pytest.mark.parametrize("n", [0, 1, 2, 3, 63, 64, 65, 127, 128, 129, 1000])
def test_every_row_goes_in_once_in_order(n: int) -> None:
    table = Table("t", MetaData(), *(Column(f"c{i}", Integer if i else String) for i in range(9)))
    insert = RowsInsert.of(table, "qmark")
    rows = [(f"r{r}", *range(r, r + 8)) for r in range(n)]
    done: list[tuple[str, tuple[Any, ...]]] = []
    insert.run(lambda sql, params: done.append((sql, params)), rows)
    got = []
    for sql, params in done:
        assert sql.count("?") == len(params) <= MAX_PARAMETERS
        got += [tuple(params[i:i + 9]) for i in range(0, len(params), 9)]
    assert got == rows
    assert len(done) <= max(1, n.bit_length()) + n // insert.most  # largest statements first
    assert len({sql for sql, _ in done}) <= len(insert.statements)
