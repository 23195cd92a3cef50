"""The syslog/SIEM witness against a real rsyslogd: each checkpoint arrives as one RFC 5424 message
whose SD-ELEMENT rsyslog's own parser reads (size, root, signature, key id), and the statements
exported from what rsyslog wrote verify the store; while the collector is down the checkpoint is
recorded unreachable and then sent when it is back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from pacsguard.events import Event
from pacsguard.sinks.syslog import BOM
from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key, key_id, load_public_key
from pacsguard.witness.delivery import WitnessDelivery
from pacsguard.witness.syslog import SD_ID, SyslogWitness
from store_helpers import make_events
from test_cli import run
from test_sinks import Rsyslog, rsyslog_factory  # noqa: F401 - the fixture, shared with the sink's tests


def test_checkpoints_reach_rsyslog_as_structured_data(rsyslog_factory: Callable[..., Rsyslog],  # noqa: F811
                                                      tmp_path: Path) -> None:
    collector = rsyslog_factory()
    key = generate_key(tmp_path / "keys" / "site.key")
    es = EventStore.open(str(tmp_path / "site.db"), key_path=key, create=True)
    published: list[Event] = []
    witness = SyslogWitness("127.0.0.1", collector.port, transport="tcp", confirm=0.3)
    delivery = WitnessDelivery([witness], published.append, backoff=(0.1, 0.3))
    es.add_checkpoint_listener(delivery)
    es.append(make_events(6))
    es.checkpoint()  # the collector is not up yet
    deadline = time.monotonic() + 10
    while not published and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [e.kind for e in published] == ["pacsguard.witness.unreachable"]
    collector.start()
    while len(published) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [e.kind for e in published][-1] == "pacsguard.witness.reachable"
    es.append(make_events(4, 6))
    es.close()  # the final checkpoint (size 10) is delivered as the store closes

    def arrived() -> bool:
        return collector.raw.exists() and len(collector.raw.read_bytes().splitlines()) >= 2

    while not arrived() and time.monotonic() < deadline + 10:
        time.sleep(0.05)
    parsed = collector.parsed.read_text().splitlines()
    log = key_id(load_public_key(key))
    assert len(parsed) == 2
    pri, app, _, msgid, _, sd = parsed[1].split("|", 5)
    assert (pri, app, msgid) == ("85", "pacsguard", "checkpoint")  # authpriv.notice
    assert sd.startswith(f'[{SD_ID} log="{log}" size="10" root="') and ' signature="' in sd
    export = tmp_path / "siem-export.jsonl"
    export.write_bytes(b"\n".join(line.split(BOM, 1)[1] for line in collector.raw.read_bytes().splitlines()))
    out = run("audit", "verify", "--store", str(tmp_path / "site.db"), "--key", str(key), "--witness", str(export),
              cwd=tmp_path).stdout
    assert "2 checkpoints of this log, newest at size 10" in out and "OK" in out
