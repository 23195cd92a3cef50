"""How a route judges traffic: `Check`s, an ordered `Chain` of them, and the one `decide()`.

A check is a small object with hooks called at the points of an association where the gateway can
still say no (PS3.8 9.2: before the A-ASSOCIATE-AC, per presentation context, per DIMSE request),
plus notifications the inline IDS needs (every other decoder event, decode errors, the gateway's
own rejection, the end of the connection). Every hook returns a `Verdict`; `decide()` combines
them, so the ladder of actions and the meaning of a refusal at each point are written once, here.
"""

from __future__ import annotations

from typing import Any, Protocol

from pacsguard.config.schema import Route
from pacsguard.dicom import pdu as P
from pacsguard.dicom.errors import DecodeError
from pacsguard.dicom.events import DimseCommand, ProtocolEvent
from pacsguard.events import Event
from pacsguard.gateway.verdict import ALLOW, Action, Verdict
from pacsguard.records.dicom import Pending

HOOKS = ("on_associate", "on_context", "on_request", "on_event", "on_data_event", "on_decode_error", "on_not_dicom",
         "on_rejected", "on_closed", "expected_by")
# Before the association exists there is nothing to abort: every acting verdict is an
# A-ASSOCIATE-RJ or a context rejection, and the first check to refuse names the rule.
_FIRST_REFUSAL_WINS = frozenset({"on_associate", "on_context"})


class Association(Protocol):
    """What a check sees of one association (the relay implements it)."""

    route: Route
    host: str
    port: int
    calling_ae: str | None
    cert: dict[str, Any] | None
    #: the address the upstream leg is connected to (its peer's IP), None before it is
    upstream_host: str | None

    def publish(self, event: Event) -> None: ...

    def quarantine(self, verdict: Verdict) -> None: ...

    def abstract_syntax(self, context_id: int) -> str | None:
        """The abstract syntax of an accepted presentation context (PS3.8 7.1.1.13), if known."""
        ...


class Check:
    """Base of every check: each hook allows. A check overrides the hooks it judges; `observer`
    checks (the inline IDS) are called even after another check refused, so they see everything."""

    name = ""
    observer = False

    def expected_by(self, assoc: Association, rq: P.AssociateRQ) -> dict[str, Any] | None:
        """A query, not a verdict: the exchange that announced this association, as ``{flow,
        message_id}`` for its ``requested`` record (a C-MOVE's sub-association, PS3.4 C.4.2.2);
        None when this check knows of none."""
        return None

    def on_associate(self, assoc: Association, rq: P.AssociateRQ, events: list[ProtocolEvent]) -> Verdict:
        """The A-ASSOCIATE-RQ (PS3.8 9.3.2); a refusal is answered with `verdict.rj`."""
        return ALLOW

    def on_context(self, assoc: Association, abstract_syntax: str) -> Verdict:
        """A presentation context the upstream accepted (PS3.8 9.3.3.2); a refusal turns it into a
        user-rejection in the A-ASSOCIATE-AC the client receives."""
        return ALLOW

    def on_request(self, assoc: Association, pending: Pending, event: DimseCommand) -> Verdict:
        """A DIMSE request from the client (PS3.7 9.1), judged before its command set is forwarded;
        a refusal is answered with `verdict.status` and its data set is swallowed."""
        return ALLOW

    def on_event(self, assoc: Association, event: ProtocolEvent) -> Verdict:
        """A decoder event outside P-DATA (A-ASSOCIATE-AC, release, abort, violations there)."""
        return ALLOW

    def on_data_event(self, assoc: Association, event: ProtocolEvent) -> Verdict:
        """A decoder event inside P-DATA that is no client request: responses, requests of the
        upstream (C-GET sub-operations), data sets, C-CANCEL, violations."""
        return ALLOW

    def on_decode_error(self, assoc: Association, from_client: bool, error: DecodeError) -> Verdict:
        """Bytes the decoder refused; the association ends with a protocol violation anyway."""
        return ALLOW

    def on_not_dicom(self, assoc: Association, head: bytes) -> Verdict:
        """The client's first bytes read as a PDU header but look like another protocol (RDP's
        TPKT header reads as an A-ASSOCIATE-RJ); *head* is up to their first 16 bytes. The
        association ends with a protocol violation anyway (PS3.8 9.2: the requestor opens with an
        A-ASSOCIATE-RQ)."""
        return ALLOW

    def on_rejected(self, assoc: Association, verdict: Verdict) -> Verdict:
        """The gateway itself sent an A-ASSOCIATE-RJ for `verdict`."""
        return ALLOW

    def on_closed(self, assoc: Association) -> Verdict:
        """The association's connections are closed: its last notification."""
        return ALLOW


class Chain:
    """A route's checks in their configured order, with per hook the checks that implement it,
    so that a hook no check judges costs one dictionary lookup."""

    def __init__(self, checks: list[Check]) -> None:
        self.checks = checks
        self.by_hook: dict[str, tuple[Check, ...]] = {
            hook: tuple(c for c in checks if getattr(type(c), hook) is not getattr(Check, hook)) for hook in HOOKS}

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.checks]


def decide(chain: Chain, hook: str, assoc: Association, *args: Any) -> Verdict:
    """Run `hook` of the route's checks in order and return what the gateway does.

    - Once a check refuses, the remaining checks are skipped except observers (the inline IDS
      sees every request, also those the policy refuses: that is how probing shows).
    - A quarantine verdict quarantines the source here, whichever verdict wins.
    - The strongest action wins (`Action` order); of equal ones the first in the chain. On
      `on_associate` and `on_context` the first refusal wins (nothing to abort yet).
    - The IPS's "drop" (REFUSE) means: on the RQ, an A-ASSOCIATE-RJ; on a client request, a DIMSE
      failure status, and the PACS never sees it; on `on_event` (outside P-DATA) there is nothing
      to refuse, so it ends the association; on `on_data_event` it lets the PDU pass.
    """
    result = ALLOW
    for check in chain.by_hook[hook]:
        if result.action and not check.observer:
            continue
        verdict: Verdict = getattr(check, hook)(assoc, *args)
        if verdict.action is Action.QUARANTINE:
            assoc.quarantine(verdict)
        if hook in _FIRST_REFUSAL_WINS:
            if not result.action and verdict.action:
                result = verdict
        elif verdict.action > result.action:
            result = verdict
    if result.action is Action.REFUSE and hook == "on_event":
        return Verdict(Action.ABORT, result.reason, result.rule, component=result.component)
    return result


def expected_by(chain: Chain, assoc: Association, rq: P.AssociateRQ) -> dict[str, Any] | None:
    """The first announcement a check of the route knows for this A-ASSOCIATE-RQ (PS3.4 C.4.2.2),
    asked before the association is recorded as requested."""
    for check in chain.by_hook["expected_by"]:
        found = check.expected_by(assoc, rq)
        if found is not None:
            return found
    return None
