"""Expected associations (docs/ids.md): the sub-association a C-MOVE's SCP opens to the Move
Destination (PS3.4 C.4.2.2) is expected, linked to the C-MOVE and not alerted as DICOM on an
unexpected port; from another host, to another AE title or too late it is not."""

from __future__ import annotations

from test_engine import MOVE_PATIENT_ROOT, Session, identifier, make_engine

from pacsguard.ids import Engine
from pacsguard.ids.expect import ExpectedConnections

ARCHIVE = "10.1.1.2"


def moved(engine: Engine, destination: str = "WS9") -> Session:
    s = Session(engine, client="10.1.1.10", server=ARCHIVE, port=104).associate(abstracts=(MOVE_PATIENT_ROOT,))
    s.move(destination, identifier("PATIENT", patient_id="PAT1"))
    return s


def sub(engine: Engine, *, client: str = ARCHIVE, called: str = "WS9", port: int = 11113) -> Session:
    return Session(engine, client=client, server="10.1.1.50", port=port).associate("PACS", called, answer=False)


def test_move_sub_association_is_expected_and_linked() -> None:
    engine, clock = make_engine()
    move = moved(engine)
    clock.t += 5
    s = sub(engine)
    assert "dicom-unexpected-port" not in s.fired()
    announced = s.dicom.expected(s.flow, "WS9")
    assert announced is not None and announced.flow == move.flow.id and announced.message_id == 1
    assert announced.as_details() == {"flow": move.flow.id, "message_id": 1}


def test_unannounced_association_on_that_port_still_fires() -> None:
    engine, clock = make_engine()
    moved(engine)
    clock.t += 5
    assert "dicom-unexpected-port" in sub(engine, client="10.6.6.6").fired()  # another host
    assert "dicom-unexpected-port" in sub(engine, called="WS8").fired()  # another AE title
    alert = sub(engine, called="WS8").alert("dicom-unexpected-port")
    assert "expected_by" not in alert.event.details["observation"]


def test_expectation_ends_after_its_time_bound() -> None:
    engine, clock = make_engine(expect_for="30s")
    moved(engine)  # final response at t=1000: the expectation lasts until 1030
    clock.t += 29
    assert "dicom-unexpected-port" not in sub(engine).fired()
    clock.t += 2
    assert "dicom-unexpected-port" in sub(engine).fired()


def test_expected_by_is_an_observation_field() -> None:
    engine, clock = make_engine()
    move = moved(engine)
    seen = []
    rules = engine.rules_for("dicom")["association-request"]
    original = engine.run

    def spy(rules_, kind, protocol, fields, flow, now, st):  # type: ignore[no-untyped-def]
        seen.append(fields.get("expected_by"))
        return original(rules_, kind, protocol, fields, flow, now, st)

    engine.run = spy  # type: ignore[method-assign]
    assert rules
    sub(engine)
    assert f"{move.flow.id}#1" in seen


def test_expected_connections_are_bounded() -> None:
    table = ExpectedConnections(cap=50, ttl=60.0)
    for i in range(5000):
        table.expect(f"10.0.{i // 250}.{i % 250}", "DEST", "c1", i, float(i))
    assert len(table) == 50 and table.evicted == 4950
    assert table.match("10.0.0.0", "DEST", 5000.0) is None  # evicted
    assert table.match("10.0.19.249", "DEST", 5000.0) is not None
