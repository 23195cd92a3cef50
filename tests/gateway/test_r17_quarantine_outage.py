"""Outside round 17: while the store could not be read, the gateway's quarantine poll (every half
second) logged two multi-line SQLAlchemy errors a second. It now logs the outage once, on one line,
then at most once a minute, and says when reading works again. Enforcement goes on throughout.
The same timer (runtime.periodic.every) keeps the IDS alert windows and the audit endpoint's
summaries going after a failing step: a timer's task that raised had ended for good, unsaid."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from pacsguard.config.schema import GatewayConfig
from pacsguard.gateway.server import Gateway
from pacsguard.gateway.service import quarantine_reader
from store_helpers import new_store


def test_a_store_that_cannot_be_read_is_logged_once_on_one_line(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "store.db"
    store, _ = new_store(str(path), tmp_path)
    config = GatewayConfig.model_validate({"quarantine_poll_interval": 0.02})
    gateway = Gateway(config, lambda event: None, read_quarantine=quarantine_reader(store))

    async def run() -> None:
        await gateway.start()
        with sqlite3.connect(path) as db:  # the database loses the table the poll reads
            db.execute("ALTER TABLE event_terms RENAME TO event_terms_away")
        await asyncio.sleep(1.0)  # ~50 polls
        with sqlite3.connect(path) as db:
            db.execute("ALTER TABLE event_terms_away RENAME TO event_terms")
        await asyncio.sleep(0.3)
        await gateway.stop()

    with caplog.at_level(logging.WARNING, logger="pacsguard.gateway"):
        asyncio.run(run())
    store.close()
    failed = [r.getMessage() for r in caplog.records if "quarantine refresh failed" in r.getMessage()]
    assert len(failed) == 1, failed
    assert "\n" not in failed[0] and "sqlalche.me" not in failed[0], failed[0]
    assert "no such table: event_terms" in failed[0], failed[0]
    assert any("quarantine refresh works again" in r.getMessage() for r in caplog.records), caplog.text


def test_a_timer_outlives_a_failing_step(caplog: pytest.LogCaptureFixture) -> None:
    from pacsguard.runtime.periodic import every

    calls: list[int] = []

    def step() -> None:
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError(f"step {len(calls)} broke\nsecond line")

    async def run() -> None:
        task = asyncio.create_task(every(0.01, step, "the test timer", logging.getLogger("pacsguard.test")))
        await asyncio.sleep(0.3)
        assert not task.done()
        task.cancel()

    with caplog.at_level(logging.WARNING, logger="pacsguard.test"):
        asyncio.run(run())
    assert len(calls) > 5
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == "the test timer failed: step 1 broke" and said[1].startswith("the test timer works again"), said
