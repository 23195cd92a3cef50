"""The engine is protocol-neutral: a second adapter plugs in by adding files, not engine edits
(DESIGN.md "Seams"), and the engine module never imports the DICOM decoder."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

import pacsguard.ids.engine as engine_module
from pacsguard.ids.engine import Alert, Engine, FlowState
from pacsguard.ids.observation import KINDS, Flow, Roles, register_kinds
from pacsguard.ids.rules import load_rules
from pacsguard.ids.settings import IdsSettings

PROTOCOL = "echo-test"

RULES = """
- id: echo-test-shout
  title: Shouted word
  severity: warning
  protocol: echo-test
  on: echo
  match:
    word: {regex: "^[A-Z]+$"}
  action: drop
  reference: none (a made-up protocol)
- id: echo-test-chatty
  title: Chatty echo client
  severity: notice
  protocol: echo-test
  on: echo
  threshold: {count: 3, within: 10s, by: [client_host]}
  action: alert
  reference: none (a made-up protocol)
- id: echo-test-closed
  title: Echo connection that said something
  severity: info
  protocol: echo-test
  on: echo-closed
  match:
    words: {gt: 0}
  action: alert
  reference: none (a made-up protocol)
"""


class EchoState(FlowState):
    """The made-up protocol's per-connection state: how many words the client said."""

    __slots__ = ("speaker", "words")
    protocol: ClassVar[str] = PROTOCOL
    closed_kind: ClassVar[str | None] = "echo-closed"

    def __init__(self, now: float) -> None:
        super().__init__(now)
        self.speaker: str | None = None
        self.words = 0

    def parties(self) -> tuple[str | None, str | None]:
        return self.speaker, None

    def summary(self, now: float) -> dict[str, Any]:
        return {"speaker": self.speaker, "words": self.words}


class EchoAdapter:
    """A second adapter, written only against the engine's adapter API."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.rules = engine.rules_for(PROTOCOL)

    def said(self, flow: Flow, speaker: str, word: str, now: float) -> list[Alert]:
        self.engine.observations += 1
        st = self.engine.flows.get_or_create(flow.key(), now, lambda: EchoState(now))
        assert isinstance(st, EchoState)
        st.speaker, st.words = speaker, st.words + 1
        rules = self.rules.get("echo")
        if not rules:
            return []
        return self.engine.run(rules, "echo", PROTOCOL, {"speaker": speaker, "word": word}, flow, now, st)


@pytest.fixture
def echo_kinds() -> Iterator[None]:
    register_kinds(
        PROTOCOL,
        {
            "echo": ("one word the client said", {"speaker": ("str", "who"), "word": ("str", "the word")}),
            "echo-closed": ("the connection ended", {"speaker": ("str", "who"), "words": ("int", "how many")}),
        },
        Roles(actor="speaker"),
    )
    yield
    KINDS.pop(PROTOCOL, None)


def _engine(tmp_path: Path) -> Engine:
    (tmp_path / "echo.yaml").write_text(RULES)
    return Engine(load_rules([tmp_path], builtin=False), IdsSettings(), clock=lambda: 0.0)


def test_second_adapter_rules_fire_through_the_unchanged_engine(echo_kinds: None, tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    echo = EchoAdapter(engine)
    flow = Flow("10.0.0.7", 40000, "10.0.0.1", 7, sensor="inline", id="e1")
    assert echo.said(flow, "alice", "hello", 1.0) == []
    shout = echo.said(flow, "alice", "HELLO", 2.0)
    assert [a.rule_id for a in shout] == ["echo-test-shout"]
    assert shout[0].action == "drop"
    assert shout[0].event.actor.ae_title == "alice"  # the kind's actor role, not a DICOM field
    assert shout[0].event.details["protocol"] == PROTOCOL
    chatty = echo.said(flow, "alice", "again", 3.0)
    assert [a.rule_id for a in chatty] == ["echo-test-chatty"]
    assert engine.tracked_flows() == 1
    closed = engine.flow_closed(flow, 4.0)
    assert [a.rule_id for a in closed] == ["echo-test-closed"]
    assert closed[0].event.details["observation"]["words"] == 3
    assert engine.tracked_flows() == 0


def test_a_close_of_an_unseen_flow_observes_only_with_a_state_factory(echo_kinds: None, tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    flow = Flow("10.0.0.8", 40001, "10.0.0.1", 7)
    assert engine.flow_closed(flow, 1.0) == []
    assert engine.flow_closed(flow, 1.0, new_state=EchoState) == []  # words == 0: rule does not match
    assert engine.observations == 2


def test_unknown_protocol_rules_are_refused_without_its_adapter(tmp_path: Path) -> None:
    (tmp_path / "echo.yaml").write_text(RULES)
    with pytest.raises(Exception, match="unknown protocol 'echo-test'"):
        load_rules([tmp_path], builtin=False)


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "pacsguard.ids." * (node.level > 0) + (node.module or "")
            names.add(base)
    return names


def test_engine_module_imports_no_decoder() -> None:
    assert engine_module.__file__ is not None
    imported = _imported_modules(Path(engine_module.__file__))
    assert "pacsguard.events" in imported  # the walk sees the engine's real imports
    banned = ("pacsguard.dicom.", "pacsguard.gateway")
    assert not {m for m in imported if m == "pacsguard.dicom" or m.startswith(banned)}
    source = Path(engine_module.__file__).read_text()
    for name in ("AssociationRequested", "DimseCommand", "calling_ae", "A-ASSOCIATE"):
        assert name not in source


def test_importing_pacsguard_ids_is_lazy() -> None:
    code = (
        "import sys, pacsguard.ids\n"
        "heavy = [m for m in ('pacsguard.ids.engine', 'pacsguard.ids.sensor', 'pacsguard.ids.capture', "
        "'pacsguard.dicom') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
        "from pacsguard.ids import Engine, rj_reason, guess_protocol, KINDS\n"
        "print(Engine.__module__, rj_reason(1, 3), guess_protocol(b'SSH-2.0'), 'dicom' in KINDS)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    first, second = out.splitlines()
    assert first == ""
    assert second == "pacsguard.ids.engine calling-ae-not-recognized ssh True"


def test_tls_sniffing_is_one_function() -> None:
    from pacsguard.ids.sniff import guess_protocol, looks_like_tls

    assert looks_like_tls(bytes.fromhex("160303"))  # handshake, TLS 1.2 record version
    assert looks_like_tls(bytes.fromhex("150301"))  # alert
    assert not looks_like_tls(bytes.fromhex("1603"))  # too short to tell
    assert not looks_like_tls(bytes.fromhex("160305"))  # no such record version
    assert not looks_like_tls(bytes.fromhex("010000"))  # A-ASSOCIATE-RQ
    assert guess_protocol(bytes.fromhex("150301000202")) == "tls"
