"""The rule engine: protocol events in, alerts out, the same inline and passive.

A *sensor* (the gateway inline, the capture reader passively) owns the sockets or the capture
and the DICOM decoder; it hands every decoder event to :meth:`Engine.observe_dicom` together with
the :class:`Flow` (the TCP connection) it belongs to, plus the few things the decoder cannot see
(bytes that are not DICOM, decode errors, the gateway's own rejections, the end of the
connection).  The engine turns each into one :class:`~pacsguard.ids.observation.Observation`,
runs the rules written for that observation kind, and returns the :class:`Alert` s that fired.
What to do with an alert's ``action`` is the sensor's business: the gateway drops, aborts or
quarantines; the passive sensor only records.

The engine never imports the gateway (DESIGN.md) and keeps no unbounded state: per-connection
state lives in an LRU of ``max_tracked_flows`` entries, each threshold rule's per-key windows in
an LRU of ``max_tracked_sources`` keys (:mod:`.state`).

Not thread-safe: one engine per event loop / sensor thread.
"""

from __future__ import annotations

import fnmatch
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from ipaddress import ip_network
from pathlib import Path
from typing import Any, Final, Literal

from pacsguard.dicom.dimse import COMMAND_NAMES, CommandSet, status_category
from pacsguard.dicom.errors import DecodeError
from pacsguard.dicom.events import (
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    DimseCommand,
    DimseDatasetEnd,
    DimseDatasetStart,
    ProtocolEvent,
    ProtocolViolation,
    ReleaseCompleted,
    ReleaseRequested,
)
from pacsguard.events import Event, Outcome, Party, Severity

from .observation import FLOW_FIELDS, KINDS, Flow, Observation
from .rules import (
    Condition,
    IdsSettings,
    Rule,
    RuleError,
    RuleProblem,
    SettingRef,
    Threshold,
    format_duration,
    load_rules,
    parse_duration,
)
from .state import BoundedLRU, CountWindow, DistinctWindow, SumWindow

__all__ = ["Alert", "Engine", "Flow", "IdsSettings", "guess_protocol", "rj_reason"]

ActionName = Literal["alert", "drop", "abort", "quarantine"]


@dataclass(slots=True)
class Alert:
    """A rule fired.  ``event`` is the record to store (kind ``ids.alert.<rule id>``)."""

    rule_id: str
    title: str
    severity: Severity
    action: ActionName
    quarantine_for: timedelta | None
    message: str
    reference: str
    flow: Flow
    event: Event


# ----------------------------------------------------------------------------- vocabulary

#: A-ASSOCIATE-RJ source (PS3.8 Table 9-21) -> slug.
RJ_SOURCES: Final = {1: "service-user", 2: "service-provider-acse", 3: "service-provider-presentation"}
#: (source, reason/diag) -> slug (PS3.8 Table 9-21).
RJ_REASONS: Final = {
    (1, 1): "no-reason",
    (1, 2): "application-context-not-supported",
    (1, 3): "calling-ae-not-recognized",
    (1, 7): "called-ae-not-recognized",
    (2, 1): "no-reason",
    (2, 2): "protocol-version-not-supported",
    (3, 1): "temporary-congestion",
    (3, 2): "local-limit-exceeded",
}
REASON_SLUGS: Final = frozenset(RJ_REASONS.values())


def rj_reason(source: int, reason: int) -> str:
    """The reason slug of an A-ASSOCIATE-RJ (what ``observe_association_result`` wants)."""
    return RJ_REASONS.get((source, reason), f"reason-{source}-{reason}")


def _reason_slug(reason: str) -> str:
    text = reason.strip()
    if text in REASON_SLUGS:
        return text
    low = text.lower()
    if "calling" in low and "ae" in low:
        return "calling-ae-not-recognized"
    if "called" in low and "ae" in low:
        return "called-ae-not-recognized"
    return "other"


def guess_protocol(first_bytes: bytes) -> str:
    """What non-DICOM bytes look like: tls, http, ssh, smb, rdp, text or unknown."""
    b = bytes(first_bytes[:16])
    if len(b) >= 2 and b[0] == 0x16 and b[1] == 0x03:
        return "tls"
    if b.startswith((b"GET ", b"POST ", b"HEAD ", b"PUT ", b"OPTIONS ", b"DELETE ", b"CONNECT ", b"PRI * ")):
        return "http"
    if b.startswith(b"SSH-"):
        return "ssh"
    if len(b) >= 8 and b[4:8] in (b"\xffSMB", b"\xfeSMB"):
        return "smb"
    if len(b) >= 4 and b[0] == 0x03 and b[1] == 0x00:
        return "rdp"
    if b and all(32 <= c < 127 or c in (9, 10, 13) for c in b):
        return "text"
    return "unknown"


def _service(name: str) -> str:
    for suffix in ("-RQ", "-RSP"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


#: command field -> (command name, service)
_COMMANDS: Final = {cf: (name, _service(name)) for cf, name in COMMAND_NAMES.items()}
_RETRIEVES: Final = frozenset({"C-MOVE", "C-GET"})
_WILDCARD_ONLY: Final = frozenset("*?^= ")
_NO_ALERTS: Final[tuple[()]] = ()


def _names_patient(value: str | None) -> bool:
    return bool(value) and not set(value) <= _WILDCARD_ONLY  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- per-flow state

_MAX_FLOW_IDS = 16
_MAX_SERVICES = 32
_MAX_RETRIEVES = 64


class _FlowState:
    """What the engine remembers about one connection (bounded: a few small fields)."""

    __slots__ = (
        "aborted",
        "accepted",
        "associated",
        "called_ae",
        "calling_ae",
        "cmd_ac",
        "cmd_rq",
        "fired",
        "non_echo",
        "patient_ids",
        "rejected",
        "released",
        "requests",
        "result_seen",
        "retrieves",
        "services",
        "started",
        "study_uids",
        "touched",
    )

    def __init__(self, now: float) -> None:
        self.touched = now
        self.started = now
        self.calling_ae: str | None = None
        self.called_ae: str | None = None
        self.associated = False
        self.accepted = False
        self.rejected = False
        self.released = False
        self.aborted = False
        self.result_seen = False
        self.requests = 0
        self.services: dict[str, None] = {}
        self.non_echo = False
        #: (command name, service, SOP class UID) of the last command in each direction
        self.cmd_rq: tuple[str, str, str | None] | None = None
        self.cmd_ac: tuple[str, str, str | None] | None = None
        self.retrieves: set[int] = set()
        self.patient_ids: dict[str, None] = {}
        self.study_uids: dict[str, None] = {}
        #: rule id -> alerts of that (alert-only, threshold-free) rule on this connection
        self.fired: dict[str, int] | None = None

    def ae_pair(self) -> str | None:
        if self.calling_ae is None and self.called_ae is None:
            return None
        return f"{self.calling_ae or ''}->{self.called_ae or ''}"


# ----------------------------------------------------------------------------- compiled rules

Pred = Callable[[Any], bool]


_IP_CACHE_SIZE: Final = 4096


_inet_pton = socket.inet_pton
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_V4_MAPPED: Final = b"\0" * 10 + b"\xff\xff"


def _ip_int(host: str) -> tuple[int, int] | None:
    """(4 or 6, address as an integer), or None for something that is not an IP address."""
    try:
        return 4, int.from_bytes(_inet_pton(_AF_INET, host), "big")
    except (OSError, TypeError, ValueError):
        pass
    text = str(host).split("%", 1)[0]  # an IPv6 zone id (fe80::1%eth0) is not part of the address
    try:
        packed = _inet_pton(_AF_INET6, text)
    except (OSError, ValueError):
        return None
    if packed[:12] == _V4_MAPPED:  # IPv4-mapped (::ffff:a.b.c.d): judge the IPv4 address
        return 4, int.from_bytes(packed[12:], "big")
    return 6, int.from_bytes(packed, "big")


def _ip_cache(nets: list, inside: bool) -> Pred:
    """Membership of an address in any of *nets*, with a bounded cache (hosts repeat)."""
    v4 = tuple((int(n.network_address), int(n.netmask)) for n in nets if n.version == 4)
    v6 = tuple((int(n.network_address), int(n.netmask)) for n in nets if n.version == 6)
    cache: dict[str, bool] = {}

    def test(host: str) -> bool:
        hit = cache.get(host)
        if hit is None:
            addr = _ip_int(host)
            if addr is None:
                hit = False  # not an address: neither inside nor outside, never fires
            else:
                value = addr[1]
                found = False
                for net, mask in v4 if addr[0] == 4 else v6:
                    if value & mask == net:
                        found = True
                        break
                hit = found if inside else not found
            if len(cache) >= _IP_CACHE_SIZE:
                cache.clear()
            cache[host] = hit
        return hit

    return test


def _is_empty(v: Any) -> bool:
    return v is None or v == "" or v == [] or v == ()


def _compile_condition(cond: Condition, is_list: bool, settings: IdsSettings) -> Pred | str:
    """A predicate over the field's value, or the reason the rule cannot run (unset settings)."""
    op, arg = cond.op, cond.value
    if isinstance(arg, SettingRef):
        resolved = settings.ref(arg.name)
        if resolved is None:
            return f"needs ids.{arg.name}"
        arg = resolved
    if op == "exists":
        return (lambda v: v is not None) if arg else (lambda v: v is None)
    if op == "empty":
        return _is_empty if arg else (lambda v: not _is_empty(v))
    base: Pred
    if op == "equals":
        base = _equals(arg)
    elif op == "in":
        base = frozenset(arg).__contains__
    elif op == "not_in":
        base = _not_in(frozenset(arg))
    elif op == "regex":
        base = _search(re.compile(arg))
    elif op == "wildcard":
        base = _whole(re.compile(fnmatch.translate(arg)))
    elif op in ("cidr_in", "not_cidr_in"):
        nets = [n if not isinstance(n, str) else ip_network(n, strict=False) for n in arg]
        base = _ip_cache(nets, op == "cidr_in")
    elif op == "gt":
        base = _greater(arg)
    elif op == "lt":
        base = _less(arg)
    else:  # pragma: no cover - rules.py validated the operator
        raise ValueError(op)
    return _any_of(base) if is_list else _present(base)


def _equals(a: Any) -> Pred:
    return lambda x: x == a


def _not_in(members: frozenset) -> Pred:
    return lambda x: x not in members


def _search(pattern: re.Pattern) -> Pred:
    search = pattern.search
    return lambda x: search(x) is not None


def _whole(pattern: re.Pattern) -> Pred:
    match = pattern.match
    return lambda x: match(x) is not None


def _greater(a: Any) -> Pred:
    return lambda x: x > a


def _less(a: Any) -> Pred:
    return lambda x: x < a


def _present(base: Pred) -> Pred:
    return lambda v: v is not None and base(v)


def _any_of(base: Pred) -> Pred:
    return lambda v: v is not None and any(base(x) for x in v)


class _Compiled:
    __slots__ = ("action", "by", "checks", "factory", "quarantine_for", "rule", "state", "threshold", "value_field")

    def __init__(self, rule: Rule, checks: list[tuple[bool, str, Pred]], threshold: Threshold | None,
                 action: ActionName, quarantine_for: timedelta | None, cap: int) -> None:
        self.rule = rule
        self.checks = tuple(checks)
        self.threshold = threshold
        self.action = action
        self.quarantine_for = quarantine_for
        self.state: BoundedLRU | None = None
        self.by: tuple[tuple[bool, str], ...] = ()
        self.value_field: tuple[bool, str] | None = None
        self.factory: Callable[[], Any] | None = None
        if threshold is not None:
            t = threshold
            ttl = t.within if t.baseline is None else max(t.within * 24, 86400.0)
            self.state = BoundedLRU(cap, ttl=ttl)
            self.by = tuple(_getter(name) for name in t.by)
            name = t.distinct or t.sum
            self.value_field = _getter(name) if name else None
            if t.distinct:
                self.factory = lambda: DistinctWindow(int(t.count), t.within)
            elif t.sum or t.baseline is not None:
                self.factory = lambda: SumWindow(t.count, t.within, t.baseline)
            else:
                self.factory = lambda: CountWindow(int(t.count), t.within)


def _getter(name: str) -> tuple[bool, str]:
    flow_attr = FLOW_FIELDS.get(name)
    return (True, flow_attr[0]) if flow_attr is not None else (False, name)


# ----------------------------------------------------------------------------- the engine


class Engine:
    """Runs the rules over observations from any number of flows.

    Raises :class:`RuleError` when ``settings`` name rule ids that are not loaded (in
    ``disabled_rules``, ``thresholds`` or ``actions``) or override a threshold a rule does not
    have.  Rules whose conditions name a settings list that is not set (``$known_ae_titles``
    ...) are inactive; :attr:`inactive` says which and why.
    """

    def __init__(self, rules: list[Rule], settings: IdsSettings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings = settings if settings is not None else IdsSettings()
        self._clock = clock
        self.rules = list(rules)
        #: rule id -> why it does not run (disabled, or a settings list is not set)
        self.inactive: dict[str, str] = {}
        self._index: dict[str, dict[str, list[_Compiled]]] = {}
        self._compiled: dict[str, _Compiled] = {}
        self._compile(settings)
        self._dicom: dict[str, list[_Compiled]] = self._index.get("dicom", {})
        self._flows: BoundedLRU[object, _FlowState] = BoundedLRU(settings.max_tracked_flows)
        self._per_flow = settings.max_alerts_per_flow
        self.observations = 0
        self.alerts = 0
        #: alerts not raised because their rule already fired max_alerts_per_flow times on the connection
        self.suppressed = 0
        self._handlers: dict[type, Callable[[Flow, _FlowState, Any, float], list[Alert]]] = {
            AssociationRequested: self._on_rq,
            AssociationAccepted: self._on_ac,
            AssociationRejected: self._on_rj,
            ReleaseRequested: self._on_release,
            ReleaseCompleted: self._on_release,
            Aborted: self._on_abort,
            DimseCommand: self._on_command,
            DimseDatasetStart: self._on_dataset,
            DimseDatasetEnd: self._on_nothing,
            ProtocolViolation: self._on_violation,
        }

    @classmethod
    def from_settings(cls, settings: IdsSettings | None = None, *, base_dir: Path | None = None,
                      clock: Callable[[], float] = time.monotonic) -> "Engine":
        """Load the built-in rules (unless ``settings.builtin_rules`` is false) and every file under
        ``settings.rules_dirs`` (relative ones from *base_dir*), and build the engine.

        Raises :class:`RuleError` listing every broken rule or setting: refuse to start on it.
        """
        settings = settings if settings is not None else IdsSettings()
        base = base_dir if base_dir is not None else Path.cwd()
        dirs = [d if d.is_absolute() else base / d for d in settings.rules_dirs]
        return cls(load_rules(dirs, builtin=settings.builtin_rules), settings, clock=clock)

    # ------------------------------------------------------------------ setup

    def _compile(self, settings: IdsSettings) -> None:
        problems: list[RuleProblem] = []
        ids = {r.id for r in self.rules}
        for name in ("disabled_rules", "thresholds", "actions"):
            for rule_id in getattr(settings, name):
                if rule_id not in ids:
                    problems.append(RuleProblem("ids settings", rule_id, name, "no rule with this id is loaded"))
        for rule in self.rules:
            if rule.id in settings.disabled_rules:
                self.inactive[rule.id] = "disabled in ids.disabled_rules"
                continue
            broken = False
            threshold = rule.threshold
            override = settings.thresholds.get(rule.id)
            if override is not None:
                if threshold is None:
                    problems.append(RuleProblem("ids settings", rule.id, "thresholds", "the rule has no threshold"))
                    broken = True
                elif override.baseline is not None and threshold.distinct is not None:
                    problems.append(RuleProblem("ids settings", rule.id, "thresholds.baseline",
                                                "a baseline applies to count or sum thresholds, not distinct"))
                    broken = True
                else:
                    threshold = Threshold(
                        count=float(override.count) if override.count is not None else threshold.count,
                        within=parse_duration(override.within) if override.within is not None else threshold.within,
                        by=threshold.by, distinct=threshold.distinct, sum=threshold.sum,
                        baseline=override.baseline if override.baseline is not None else threshold.baseline,
                    )
            action: ActionName = rule.action
            quarantine_for = rule.quarantine_for
            act = settings.actions.get(rule.id)
            if act is not None:
                action = act.action
                if act.quarantine_for is not None:
                    quarantine_for = timedelta(seconds=parse_duration(act.quarantine_for))
                if action == "quarantine" and quarantine_for is None:
                    problems.append(RuleProblem("ids settings", rule.id, "actions.quarantine_for",
                                                "quarantine needs quarantine_for (e.g. 15m)"))
                    broken = True
                if action != "quarantine":
                    quarantine_for = None
            if broken:
                continue
            spec = KINDS[rule.protocol][rule.on]
            checks: list[tuple[bool, str, Pred]] = []
            reason = None
            for cond in rule.conditions:
                pred = _compile_condition(cond, spec.field_type(cond.field) == "str-list", settings)
                if isinstance(pred, str):
                    reason = pred
                    break
                is_flow, name = _getter(cond.field)
                checks.append((is_flow, name, pred))
            if reason is not None:
                self.inactive[rule.id] = reason
                continue
            compiled = _Compiled(rule, checks, threshold, action, quarantine_for, settings.max_tracked_sources)
            self._compiled[rule.id] = compiled
            self._index.setdefault(rule.protocol, {}).setdefault(rule.on, []).append(compiled)
        if problems:
            raise RuleError(problems)

    @property
    def active_rules(self) -> list[Rule]:
        return [c.rule for c in self._compiled.values()]

    def effective_threshold(self, rule_id: str) -> Threshold | None:
        compiled = self._compiled.get(rule_id)
        return compiled.threshold if compiled is not None else None

    def effective_action(self, rule_id: str) -> str | None:
        compiled = self._compiled.get(rule_id)
        return compiled.action if compiled is not None else None

    def tracked_keys(self, rule_id: str | None = None) -> int:
        """Keys held by one threshold rule (or the largest of all): the memory bound's witness."""
        states = [c.state for c in self._compiled.values() if c.state is not None
                  and (rule_id is None or c.rule.id == rule_id)]
        return max((len(s) for s in states), default=0)

    def tracked_flows(self) -> int:
        return len(self._flows)

    # ------------------------------------------------------------------ sensor API

    def observe(self, obs: Observation, now: float | None = None) -> list[Alert]:
        """Run the rules for one observation of any protocol (HL7's adapter and `rules test`)."""
        rules = self._index.get(obs.protocol, {}).get(obs.kind)
        self.observations += 1
        if not rules:
            return []
        return self._run(rules, obs.kind, obs.protocol, obs.fields, obs.flow,
                         self._clock() if now is None else now, None)

    def observe_dicom(self, flow: Flow, ev: ProtocolEvent, now: float | None = None) -> list[Alert]:
        """Every event of the flow's AssociationDecoder, in order."""
        t: float = self._clock() if now is None else now
        self.observations += 1
        st = self._flows.get_or_create(flow.key(), t, lambda: _FlowState(t))
        handler = self._handlers.get(type(ev))
        if handler is None:
            return []
        return handler(flow, st, ev, t)

    def observe_decode_error(self, flow: Flow, from_client: bool, err: DecodeError,
                             now: float | None = None) -> list[Alert]:
        """The decoder raised DecodeError on bytes of this flow."""
        t: float = self._clock() if now is None else now
        self.observations += 1
        st = self._flows.get_or_create(flow.key(), t, lambda: _FlowState(t))
        rules = self._dicom.get("decode-error")
        if not rules:
            return []
        fields = {"calling_ae": st.calling_ae, "called_ae": st.called_ae, "from_client": from_client,
                  "code": err.code, "message": err.detail, "offset": err.offset}
        return self._run(rules, "decode-error", "dicom", fields, flow, t, st)

    def observe_non_dicom(self, flow: Flow, first_bytes: bytes, now: float | None = None) -> list[Alert]:
        """The first bytes a client sent to a DICOM port are not an A-ASSOCIATE-RQ."""
        if now is None:
            now = self._clock()
        self.observations += 1
        rules = self._dicom.get("non-dicom")
        if not rules:
            return []
        head = bytes(first_bytes[:16])
        fields = {"length": len(first_bytes), "protocol_guess": guess_protocol(head), "first_bytes": head.hex()}
        return self._run(rules, "non-dicom", "dicom", fields, flow, now, None)

    def observe_association_result(self, flow: Flow, *, rejected: bool, reason: str, by: str,
                                   now: float | None = None) -> list[Alert]:
        """An association's outcome the decoder does not see, e.g. the gateway's own A-ASSOCIATE-RJ.

        ``reason`` is a slug (see :func:`rj_reason`: ``calling-ae-not-recognized``,
        ``called-ae-not-recognized`` ...); free text that names a calling/called AE title is
        mapped to those.  Only the first result of a flow counts, so a sensor that also feeds
        the decoder's AssociationRejected for the same flow is not counted twice.
        """
        t: float = self._clock() if now is None else now
        self.observations += 1
        st = self._flows.get_or_create(flow.key(), t, lambda: _FlowState(t))
        slug = _reason_slug(reason) if rejected else ""
        return self._result(flow, st, t, rejected=rejected, result="rejected-permanent" if rejected else "accepted",
                            source=by if rejected else "", reason=slug, reason_text=reason, by=by)

    def flow_closed(self, flow: Flow, now: float | None = None) -> list[Alert]:
        """The connection ended (FIN/RST, eviction, end of capture): summary rules run now."""
        if now is None:
            now = self._clock()
        self.observations += 1
        st = self._flows.pop(flow.key()) or _FlowState(now)
        rules = self._dicom.get("flow-closed")
        if not rules:
            return []
        services = list(st.services)
        fields = {
            "calling_ae": st.calling_ae, "called_ae": st.called_ae, "ae_pair": st.ae_pair(),
            "associated": st.associated, "accepted": st.accepted, "rejected": st.rejected,
            "released": st.released, "aborted": st.aborted, "dimse_requests": st.requests,
            "services": services, "probe": st.associated and not st.non_echo,
            "duration": max(0.0, now - st.started),
        }
        return self._run(rules, "flow-closed", "dicom", fields, flow, now, st)

    # ------------------------------------------------------------------ DICOM events

    def _on_nothing(self, flow: Flow, st: _FlowState, ev: Any, now: float) -> list[Alert]:
        return []

    def _on_rq(self, flow: Flow, st: _FlowState, ev: AssociationRequested, now: float) -> list[Alert]:
        rq = ev.rq
        st.calling_ae = rq.calling_ae_title
        st.called_ae = rq.called_ae_title
        st.associated = True
        st.started = now
        rules = self._dicom.get("association-request")
        if not rules:
            return []
        ui = rq.user_information
        identity = ui.user_identity if ui is not None else None
        fields = {
            "calling_ae": rq.calling_ae_title,
            "called_ae": rq.called_ae_title,
            "ae_titles": [rq.calling_ae_title, rq.called_ae_title],
            "abstract_syntaxes": [pc.abstract_syntax for pc in rq.presentation_contexts],
            "context_count": len(rq.presentation_contexts),
            "max_pdu_length": ui.max_length if ui is not None else None,
            "implementation_class_uid": ui.implementation_class_uid if ui is not None else None,
            "implementation_version_name": ui.implementation_version_name if ui is not None else None,
            "user_identity_type": getattr(identity, "identity_type", None),
            "application_context": rq.application_context_name,
        }
        return self._run(rules, "association-request", "dicom", fields, flow, now, st)

    def _on_ac(self, flow: Flow, st: _FlowState, ev: AssociationAccepted, now: float) -> list[Alert]:
        return self._result(flow, st, now, rejected=False, result="accepted", source="", reason="",
                            reason_text="", by="acceptor")

    def _on_rj(self, flow: Flow, st: _FlowState, ev: AssociationRejected, now: float) -> list[Alert]:
        rj = ev.rj
        return self._result(flow, st, now, rejected=True,
                            result="rejected-transient" if rj.result == 2 else "rejected-permanent",
                            source=RJ_SOURCES.get(rj.source, str(rj.source)),
                            reason=rj_reason(rj.source, rj.reason), reason_text="", by="acceptor")

    def _result(self, flow: Flow, st: _FlowState, now: float, *, rejected: bool, result: str, source: str,
                reason: str, reason_text: str, by: str) -> list[Alert]:
        if st.result_seen:
            return []
        st.result_seen = True
        if rejected:
            st.rejected = True
        else:
            st.accepted = True
        rules = self._dicom.get("association-result")
        if not rules:
            return []
        fields = {
            "calling_ae": st.calling_ae, "called_ae": st.called_ae, "ae_pair": st.ae_pair(),
            "rejected": rejected, "result": result, "source": source or None, "reason": reason or None,
            "reason_text": reason_text or None, "by": by,
        }
        return self._run(rules, "association-result", "dicom", fields, flow, now, st)

    def _on_release(self, flow: Flow, st: _FlowState, ev: Any, now: float) -> list[Alert]:
        st.released = True
        return []

    def _on_abort(self, flow: Flow, st: _FlowState, ev: Aborted, now: float) -> list[Alert]:
        st.aborted = True
        rules = self._dicom.get("abort")
        if not rules:
            return []
        fields = {"calling_ae": st.calling_ae, "called_ae": st.called_ae, "from_requestor": ev.from_requestor,
                  "source": ev.source, "reason": ev.reason}
        return self._run(rules, "abort", "dicom", fields, flow, now, st)

    def _on_command(self, flow: Flow, st: _FlowState, ev: DimseCommand, now: float) -> list[Alert]:
        cmd: CommandSet = ev.command
        cf = cmd.command_field
        known = _COMMANDS.get(cf)
        name, service = known if known is not None else (f"UNKNOWN-0x{cf:04X}", f"UNKNOWN-0x{cf & 0x7FFF:04X}")
        sop_class = cmd.affected_sop_class_uid or cmd.requested_sop_class_uid
        from_rq = ev.from_requestor
        if from_rq:
            st.cmd_rq = (name, service, sop_class)
        else:
            st.cmd_ac = (name, service, sop_class)
        sender = st.calling_ae if from_rq else st.called_ae
        if not cf & 0x8000:  # a request (PS3.7 E.1: responses have bit 15 set)
            if from_rq:
                st.requests += 1
                if service != "C-ECHO":
                    st.non_echo = True
                if len(st.services) < _MAX_SERVICES:
                    st.services[service] = None
                if service in _RETRIEVES and cmd.message_id is not None and len(st.retrieves) < _MAX_RETRIEVES:
                    st.retrieves.add(cmd.message_id)
            rules = self._dicom.get("dimse-request")
            if not rules:
                return []
            fields = {
                "calling_ae": st.calling_ae, "called_ae": st.called_ae, "from_requestor": from_rq,
                "command": name, "service": service, "sop_class_uid": sop_class,
                "sop_instance_uid": cmd.affected_sop_instance_uid or cmd.requested_sop_instance_uid,
                "abstract_syntax": ev.abstract_syntax, "transfer_syntax": ev.transfer_syntax,
                "message_id": cmd.message_id, "priority": cmd.priority, "move_destination": cmd.move_destination,
                "sender_ae": sender, "has_dataset": cmd.command_data_set_type != 0x0101,
            }
            return self._run(rules, "dimse-request", "dicom", fields, flow, now, st)
        announced = None
        if service in _RETRIEVES and not from_rq:
            mid = cmd.message_id_being_responded_to
            if mid is not None and mid in st.retrieves:
                st.retrieves.discard(mid)
                parts = (cmd.remaining_suboperations, cmd.completed_suboperations,
                         cmd.failed_suboperations, cmd.warning_suboperations)
                if any(p is not None for p in parts):
                    announced = sum(p for p in parts if p is not None)
        rules = self._dicom.get("dimse-response")
        if not rules:
            return []
        status = cmd.status
        fields = {
            "calling_ae": st.calling_ae, "called_ae": st.called_ae, "from_requestor": from_rq,
            "command": name, "service": service, "sop_class_uid": sop_class,
            "message_id": cmd.message_id_being_responded_to, "status": status,
            "status_category": status_category(status) if status is not None else None,
            "remaining": cmd.remaining_suboperations, "completed": cmd.completed_suboperations,
            "failed": cmd.failed_suboperations, "warning": cmd.warning_suboperations,
            "suboperations_announced": announced,
        }
        return self._run(rules, "dimse-response", "dicom", fields, flow, now, st)

    def _on_dataset(self, flow: Flow, st: _FlowState, ev: DimseDatasetStart, now: float) -> list[Alert]:
        peek = ev.peek
        pid, study = peek.patient_id, peek.study_instance_uid
        if pid and pid not in st.patient_ids and len(st.patient_ids) < _MAX_FLOW_IDS:
            st.patient_ids[pid] = None
        if study and study not in st.study_uids and len(st.study_uids) < _MAX_FLOW_IDS:
            st.study_uids[study] = None
        rules = self._dicom.get("dataset")
        if not rules:
            return []
        from_rq = ev.from_requestor
        cmd = st.cmd_rq if from_rq else st.cmd_ac
        name, service, sop_class = cmd if cmd is not None else (None, None, None)
        pname = peek.patient_name
        queried = pid if _names_patient(pid) else pname if _names_patient(pname) else None
        fields = {
            "calling_ae": st.calling_ae, "called_ae": st.called_ae, "from_requestor": from_rq,
            "command": name, "service": service, "sender_ae": st.calling_ae if from_rq else st.called_ae,
            "sop_class_uid": peek.sop_class_uid or sop_class, "sop_instance_uid": peek.sop_instance_uid,
            "patient_id": pid, "patient_name": pname, "study_instance_uid": study,
            "series_instance_uid": peek.series_instance_uid, "accession_number": peek.accession_number,
            "modality": peek.modality, "query_level": peek.query_retrieve_level,
            "patient_keys_empty": not pid and not pname, "queried_patient": queried,
            "complete": peek.complete, "anomaly": peek.anomaly,
        }
        return self._run(rules, "dataset", "dicom", fields, flow, now, st)

    def _on_violation(self, flow: Flow, st: _FlowState, ev: ProtocolViolation, now: float) -> list[Alert]:
        rules = self._dicom.get("protocol-violation")
        if not rules:
            return []
        fields = {"calling_ae": st.calling_ae, "called_ae": st.called_ae, "from_requestor": ev.from_requestor,
                  "code": ev.code, "message": ev.message}
        return self._run(rules, "protocol-violation", "dicom", fields, flow, now, st)

    # ------------------------------------------------------------------ matching

    def _run(self, rules: list[_Compiled], kind: str, protocol: str, fields: dict[str, Any], flow: Flow,
             now: float, st: _FlowState | None) -> list[Alert]:
        alerts: list[Alert] = []
        get = fields.get
        for compiled in rules:
            for is_flow, name, pred in compiled.checks:
                if not pred(getattr(flow, name) if is_flow else get(name)):
                    break
            else:
                fired: Any = True
                if compiled.state is not None:
                    fired = self._threshold(compiled, fields, flow, now)
                    if fired is None:
                        continue
                elif st is not None and compiled.action == "alert":
                    # A peer that breaks every PDU must not become an alert storm: an alert-only
                    # rule without threshold fires at most max_alerts_per_flow times per connection.
                    counts = st.fired
                    if counts is None:
                        counts = st.fired = {}
                    seen = counts.get(compiled.rule.id, 0)
                    if seen >= self._per_flow:
                        self.suppressed += 1
                        continue
                    counts[compiled.rule.id] = seen + 1
                alerts.append(self._alert(compiled, kind, protocol, fields, flow, st, fired))
        return alerts

    @staticmethod
    def _threshold(compiled: _Compiled, fields: dict[str, Any], flow: Flow, now: float) -> Any:
        by = compiled.by
        if len(by) == 1:  # the usual case (per client_host): no generator
            is_flow, name = by[0]
            key: Any = getattr(flow, name) if is_flow else fields.get(name)
        else:
            key = tuple(getattr(flow, name) if is_flow else fields.get(name) for is_flow, name in by)
        window = compiled.state.get_or_create(key, now, compiled.factory)  # type: ignore[union-attr, arg-type]
        vf = compiled.value_field
        if vf is None:
            return window.add(now) if isinstance(window, CountWindow) else window.add(now, 1.0)
        value = getattr(flow, vf[1]) if vf[0] else fields.get(vf[1])
        if value is None:
            return None
        if isinstance(window, DistinctWindow):
            return window.add(now, value)
        try:
            return window.add(now, float(value))
        except (TypeError, ValueError):
            return None

    def _alert(self, compiled: _Compiled, kind: str, protocol: str, fields: dict[str, Any], flow: Flow,
               st: _FlowState | None, fired: Any) -> Alert:
        self.alerts += 1
        rule = compiled.rule
        obs = Observation(protocol, kind, fields, flow)
        data = obs.as_dict()
        calling = fields.get("calling_ae") or (st.calling_ae if st is not None else None)
        called = fields.get("called_ae") or (st.called_ae if st is not None else None)
        actor = Party(ae_title=calling or None, host=flow.client_host, port=flow.client_port)
        target = Party(ae_title=called or None, host=flow.server_host, port=flow.server_port)
        pid = fields.get("patient_id") if kind == "dataset" else None
        patient_ids = (pid,) if pid else tuple(st.patient_ids) if st is not None else ()
        study = fields.get("study_instance_uid") if kind == "dataset" else None
        study_uids = (study,) if study else tuple(st.study_uids) if st is not None else ()
        shown = []
        for cond in rule.conditions:
            if cond.field not in shown:
                shown.append(cond.field)
        parts = [f"{name}={_show(obs.get(name))}" for name in shown if obs.get(name) is not None][:6]
        threshold_details: dict[str, Any] | None = None
        t = compiled.threshold
        if t is not None:
            keytext = ", ".join(f"{b}={_show(obs.get(b))}" for b in t.by)
            if isinstance(fired, list):
                reached = f"{len(fired)} distinct {t.distinct}"
            elif t.sum:
                reached = f"{fired:g} {t.sum}"
            else:
                reached = f"{fired:g} times" if isinstance(fired, float) else f"{fired} times"
            parts.append(f"{reached} within {format_duration(t.within)} for {keytext}")
            threshold_details = {
                "count": t.count, "within_seconds": t.within, "by": list(t.by),
                "key": {b: obs.get(b) for b in t.by},
                "reached": len(fired) if isinstance(fired, list) else fired,
            }
            if t.distinct:
                threshold_details["distinct"] = t.distinct
                threshold_details["values"] = [str(v) for v in fired[:50]]
            if t.sum:
                threshold_details["sum"] = t.sum
            if t.baseline is not None:
                threshold_details["baseline"] = t.baseline
        message = f"{rule.title}: {'; '.join(parts)}" if parts else rule.title
        message += f" ({actor.label()} -> {target.label()})"
        details: dict[str, Any] = {
            "rule_id": rule.id, "title": rule.title, "action": compiled.action, "reference": rule.reference,
            "protocol": protocol, "on": kind, "sensor": flow.sensor, "route": flow.route, "flow_id": flow.id,
            "tls": flow.tls, "observation": data,
        }
        if compiled.quarantine_for is not None:
            details["quarantine_seconds"] = compiled.quarantine_for.total_seconds()
        if threshold_details is not None:
            details["threshold"] = threshold_details
        event = Event(
            kind=f"ids.alert.{rule.id}", component="ids", severity=rule.severity, outcome=Outcome.UNKNOWN,
            actor=actor, target=target, patient_ids=patient_ids, study_uids=study_uids,
            message=message, details=details,
        )
        return Alert(rule_id=rule.id, title=rule.title, severity=rule.severity, action=compiled.action,
                     quarantine_for=compiled.quarantine_for, message=message, reference=rule.reference,
                     flow=flow, event=event)


def _show(value: Any) -> str:
    if isinstance(value, list):
        text = ",".join(str(v) for v in value[:5]) + (",..." if len(value) > 5 else "")
        return f"[{text}]"
    if isinstance(value, str):
        return repr(value) if value == "" or value != value.strip() else value
    return str(value)
