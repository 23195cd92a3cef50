"""The rule engine: observations in, alerts out, the same inline and passive, for any protocol.

The engine knows rules, their compiled conditions, thresholds and windows, actions, the alert
record, and per-flow state; it knows no protocol.  A *protocol adapter* (``ids/dicom/`` for
DICOM; HL7 and audit later) turns its decoder's events into :class:`Observation` s of the kinds
it registered (:func:`~pacsguard.ids.observation.register_kinds`) and hands them over, either
one at a time through :meth:`Engine.observe`, or on its hot path through the adapter API:
:attr:`Engine.flows` (per-connection state, a :class:`FlowState` subclass the adapter defines),
:meth:`Engine.rules_for` (the compiled rules of its protocol, by kind) and :meth:`Engine.run`.
:meth:`Engine.flow_closed` ends a connection of any protocol: its state's
:meth:`FlowState.summary` becomes the closing observation.  What to do with an alert's
``action`` is the sensor's business: the gateway drops, aborts or quarantines; the passive
sensor only records.

The engine never imports the gateway or a decoder (DESIGN.md) and keeps no unbounded state:
per-connection state lives in an LRU of ``max_tracked_flows`` entries, each threshold rule's
per-key windows in an LRU of ``max_tracked_sources`` keys (:mod:`.state`), each limited rule's
alert windows in at most ``max_tracked_sources`` keys (:mod:`.limit`), and announced associations
in at most ``max_expected_connections`` entries (:mod:`.expect`).

Limits and suppressions (docs/ids.md) decide which matches are *written*: every match is still
returned as an :class:`Alert` (its ``record`` false when held back), so the gateway enforces
drop/abort/quarantine on each one; the aggregate alert of a closed limit window comes back from
the next :meth:`Engine.run` (or :meth:`Engine.flush`) with action ``alert``.

Not thread-safe: one engine per event loop / sensor thread.
"""

from __future__ import annotations

import fnmatch
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_network
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from pacsguard.events import Event, Outcome, Party, Severity

from .defaults import IdsDefaults
from .expect import ExpectedConnections
from .limit import AlertLimit, LimitWindow
from .observation import FLOW_FIELDS, Flow, KindSpec, Observation, Roles
from .protocols import KINDS
from .rules import (
    Condition,
    Limit,
    Rule,
    RuleError,
    RuleProblem,
    SettingRef,
    Threshold,
    format_duration,
    parse_duration,
)
from .state import BoundedLRU, CountWindow, DistinctWindow, SumWindow

if TYPE_CHECKING:
    from .settings import IdsSettings

    #: The ``ids:`` section as validated from pacsguard.yaml, or the defaults without one.
    Settings = IdsSettings | IdsDefaults

__all__ = ["ActionName", "Alert", "CompiledRule", "Engine", "Flow", "FlowState"]

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
    #: False when a limit or suppression holds the event back: act on the alert, do not write it
    record: bool = True


# ----------------------------------------------------------------------------- per-flow state


class FlowState:
    """What the engine remembers about one connection, whatever its protocol (bounded: a few
    small fields).  An adapter subclasses it with its protocol's own fields and overrides
    :meth:`parties` and :meth:`summary`; the engine keeps one per flow in :attr:`Engine.flows`."""

    __slots__ = ("fired", "patient_ids", "started", "study_uids", "touched")

    #: the protocol and observation kind of :meth:`summary` (None: nothing to observe at close)
    protocol: ClassVar[str] = ""
    closed_kind: ClassVar[str | None] = None

    def __init__(self, now: float) -> None:
        self.touched = now
        self.started = now
        #: patients and studies the connection touched (bounded by the adapter), for alerts
        self.patient_ids: dict[str, None] = {}
        self.study_uids: dict[str, None] = {}
        #: rule id -> alerts of that (alert-only, threshold-free) rule on this connection
        self.fired: dict[str, int] | None = None

    def parties(self) -> tuple[str | None, str | None]:
        """The client's and the server's application names (e.g. AE titles), when known."""
        return None, None

    def summary(self, now: float) -> dict[str, Any]:
        """The fields of the :attr:`closed_kind` observation made when the connection ends."""
        return {}


# ----------------------------------------------------------------------------- compiled rules

Pred = Callable[[Any], bool]
#: an ids.suppress entry compiled: (is a flow field, field name, predicate, the VLAN ids it is
#: limited to, or None for every VLAN)
Silence = tuple[bool, str, Pred, tuple[int, ...] | None]


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


def _ip_cache(nets: list[Any], inside: bool) -> Pred:
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


def _compile_condition(cond: Condition, is_list: bool, settings: Settings,
                       lists: dict[str, set[Any]]) -> Pred | str:
    """A predicate over the field's value, or the reason the rule cannot run (unset settings).
    ``in``/``not_in`` a settings list test the engine's live copy in ``lists``, which a sensor may
    extend (:meth:`Engine.extend_setting`)."""
    op, arg = cond.op, cond.value
    if isinstance(arg, SettingRef):
        resolved = settings.ref(arg.name)
        if resolved is None:
            return f"needs ids.{arg.name}"
        if op in ("in", "not_in"):
            live = lists.setdefault(arg.name, set(resolved))
            base_live: Pred = live.__contains__ if op == "in" else _not_in_live(live)
            return _any_of(base_live) if is_list else _present(base_live)
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


def _not_in(members: frozenset[Any]) -> Pred:
    return lambda x: x not in members


def _not_in_live(members: set[Any]) -> Pred:
    return lambda x: x not in members


#: Characters of a value a ``regex`` condition searches: no DICOM identifier comes near (PS3.5
#: Table 6.2-1: LO 64, PN 64 per component group), while the decoder passes values up to 64 KiB,
#: on which even a plain ``.*X.*`` backtracks for seconds (quadratic); ``$`` matches at the cut.
MAX_REGEX_TEXT: Final = 4096


def _search(pattern: re.Pattern[str]) -> Pred:
    search = pattern.search
    return lambda x: search(x, 0, MAX_REGEX_TEXT) is not None


def _whole(pattern: re.Pattern[str]) -> Pred:
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


class CompiledRule:
    """A rule ready to run: its checks, effective threshold and action, and its windows.
    Adapters hold lists of them (:meth:`Engine.rules_for`) and hand them back to :meth:`Engine.run`."""

    __slots__ = ("action", "by", "checks", "factory", "limit", "limit_by", "limit_spec", "limit_vlan", "quarantine_for",
                 "roles", "rule", "silence", "state", "threshold", "threshold_vlan", "value_field")

    def __init__(self, rule: Rule, checks: list[tuple[bool, str, Pred]], threshold: Threshold | None,
                 action: ActionName, quarantine_for: timedelta | None, cap: int, roles: Roles,
                 limit: Limit | None = None, silence: list[Silence] | None = None,
                 source: Callable[[tuple[str, ...]], bool] | None = None) -> None:
        self.rule = rule
        #: whether the VLAN joins the limit's and the threshold's keys: it does when a ``by`` field
        #: names a source (an address or AE title, ``source``), which VLANs may reuse
        self.limit_vlan = bool(limit is not None and source is not None and source(limit.by))
        self.threshold_vlan = bool(threshold is not None and source is not None and source(threshold.by))
        #: the effective alert limit and its windows (None: every match is written)
        self.limit_spec = limit
        self.limit = AlertLimit(limit.count, limit.within, cap) if limit is not None else None
        self.limit_by = tuple(_getter(name) for name in limit.by) if limit is not None else ()
        #: ids.suppress entries of this rule: (is flow field, name, predicate, VLAN ids or None for
        #: any); any match silences
        self.silence = tuple(silence or ())
        self.roles = roles
        self.checks = tuple(checks)
        self.threshold = threshold
        self.action = action
        self.quarantine_for = quarantine_for
        self.state: BoundedLRU[Any, Any] | None = None
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


def _names_a_source(spec: KindSpec) -> Callable[[tuple[str, ...]], bool]:
    """Whether key fields ``by`` name a source VLANs may reuse: an address, or an AE title (the
    kind's actor or target role), the same on two sites' or modalities' VLANs."""
    parties = {spec.roles.actor, spec.roles.target} - {None}
    return lambda by: any(spec.field_type(name) == "ip" or name in parties for name in by)


def _suppress_vlan(entry: Any, tracking: bool) -> tuple[tuple[int, ...] | None, str]:
    """The VLAN ids an ids.suppress entry is limited to (None: every VLAN), as ``details.vlan``
    names them (``[id]``, or ``[outer, inner]`` for 802.1ad), and what is wrong with them."""
    raw = getattr(entry, "vlan", None)
    if raw is None:
        return None, ""
    ids = (raw,) if isinstance(raw, int) else tuple(raw)
    if not 1 <= len(ids) <= 2 or not all(type(v) is int and 1 <= v <= 4094 for v in ids):  # not a bool
        # IEEE 802.1Q 9.6: VLAN ids 1 to 4094 (0 is a priority tag, 4095 reserved)
        return None, f"{raw!r} is not a VLAN id (1-4094) or an [outer, inner] pair of them"
    if not tracking:
        return None, "a suppress entry names a VLAN only with ids.vlan_tracking: true (VLANs are no part of sources)"
    return ids, ""


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

    def __init__(self, rules: list[Rule], settings: Settings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings = settings if settings is not None else IdsDefaults()
        #: the engine's time source (adapters read it when a caller gives no ``now``)
        self.clock = clock
        #: an engine time as an Event time (aggregates' first/last); a sensor that feeds capture
        #: times (seconds since the epoch) replaces it
        self.to_wall: Callable[[float], datetime] = self._wall_from_clock
        #: live copies of the settings lists that rules test with in/not_in (extend_setting)
        self._lists: dict[str, set[Any]] = {}
        #: associations announced by a protocol exchange (a C-MOVE's sub-association), bounded
        self.expected = ExpectedConnections(settings.max_expected_connections, parse_duration(settings.expect_for))
        self._limited: list[CompiledRule] = []
        self._next_due = float("inf")
        #: a flow's VLAN ids are part of its source keys (as of its connection's: ids.vlan_tracking)
        self._vlans = bool(getattr(settings, "vlan_tracking", True))
        self.rules = list(rules)
        #: rule id -> why it does not run (disabled, or a settings list is not set)
        self.inactive: dict[str, str] = {}
        self._index: dict[str, dict[str, list[CompiledRule]]] = {}
        self._compiled: dict[str, CompiledRule] = {}
        self._compile(settings)
        #: per-connection state of every protocol, bounded; adapters get or create their entries
        self.flows: BoundedLRU[object, FlowState] = BoundedLRU(settings.max_tracked_flows)
        self._per_flow = settings.max_alerts_per_flow
        self.observations = 0
        self.alerts = 0
        #: alerts not raised because their rule already fired max_alerts_per_flow times on the connection
        self.suppressed = 0
        #: matches whose alert event a limit held back (summed up in aggregates), and per rule
        self.limited = 0
        #: matches silenced by ids.suppress, per rule id
        self.silenced: dict[str, int] = {}

    # ------------------------------------------------------------------ setup

    def _compile(self, settings: Settings) -> None:
        problems: list[RuleProblem] = []
        ids = {r.id for r in self.rules}
        for name in ("disabled_rules", "thresholds", "actions", "limits"):
            for rule_id in getattr(settings, name):
                if rule_id not in ids:
                    problems.append(RuleProblem("ids settings", rule_id, name, "no rule with this id is loaded"))
        for entry in settings.suppress:
            if entry.rule not in ids:
                problems.append(RuleProblem("ids settings", entry.rule, "suppress", "no rule with this id is loaded"))
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
            limit = rule.limit
            lover = settings.limits.get(rule.id)
            if lover is not None:
                limit = Limit(count=lover.count if lover.count is not None else (limit.count if limit else 1),
                              within=parse_duration(lover.within) if lover.within is not None
                              else (limit.within if limit else 600.0),
                              by=limit.by if limit is not None else ("client_host",))
            spec = KINDS[rule.protocol][rule.on]
            silence: list[Silence] = []
            for entry in settings.suppress:
                if entry.rule != rule.id:
                    continue
                vlan, why = _suppress_vlan(entry, self._vlans)
                if why:
                    problems.append(RuleProblem("ids settings", rule.id, "suppress.vlan", why))
                    broken = True
                    continue
                ftype = spec.field_type(entry.track)
                if ftype is None:
                    problems.append(RuleProblem("ids settings", rule.id, "suppress.track",
                                                f"unknown field {entry.track!r} for on: {rule.on}"))
                    broken = True
                    continue
                try:
                    cond = (Condition(entry.track, "cidr_in", tuple(entry.values)) if ftype == "ip"
                            else Condition(entry.track, "in", tuple(entry.values)))
                    pred = _compile_condition(cond, ftype == "str-list", settings, {})
                except ValueError as exc:
                    problems.append(RuleProblem("ids settings", rule.id, "suppress.values", str(exc)))
                    broken = True
                    continue
                assert not isinstance(pred, str)  # literal values: no settings list to miss
                silence.append((*_getter(entry.track), pred, vlan))
            if broken:
                continue
            checks: list[tuple[bool, str, Pred]] = []
            reason = None
            for cond in rule.conditions:
                pred = _compile_condition(cond, spec.field_type(cond.field) == "str-list", settings, self._lists)
                if isinstance(pred, str):
                    reason = pred
                    break
                is_flow, name = _getter(cond.field)
                checks.append((is_flow, name, pred))
            if reason is not None:
                self.inactive[rule.id] = reason
                continue
            compiled = CompiledRule(rule, checks, threshold, action, quarantine_for, settings.max_tracked_sources,
                                    spec.roles, limit, silence, _names_a_source(spec))
            if compiled.limit is not None:
                self._limited.append(compiled)
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

    def effective_limit(self, rule_id: str) -> Limit | None:
        compiled = self._compiled.get(rule_id)
        return compiled.limit_spec if compiled is not None else None

    def extend_setting(self, name: str, values: list[Any]) -> None:
        """Add ``values`` to the settings list ``$name`` as the rules test it with in/not_in, e.g.
        the gateway's route ports to ``$dicom_ports`` (a route's ports are DICOM ports by definition)."""
        live = self._lists.get(name)
        if live is None:
            base = self.settings.ref(name)
            live = self._lists[name] = set(base or ())
        live.update(values)

    def setting_values(self, name: str) -> list[Any]:
        """The settings list ``$name`` as the rules see it (with what sensors added)."""
        live = self._lists.get(name)
        return sorted(live) if live is not None else list(self.settings.ref(name) or ())

    def tracked_keys(self, rule_id: str | None = None) -> int:
        """Keys held by one threshold rule (or the largest of all): the memory bound's witness."""
        states = [c.state for c in self._compiled.values() if c.state is not None
                  and (rule_id is None or c.rule.id == rule_id)]
        return max((len(s) for s in states), default=0)

    def tracked_flows(self) -> int:
        return len(self.flows)

    # ------------------------------------------------------------------ adapter API

    def observe(self, obs: Observation, now: float | None = None) -> list[Alert]:
        """Run the rules for one observation of any protocol, without per-flow state (a simple
        adapter, ``pacsguard ids rules test``)."""
        rules = self._index.get(obs.protocol, {}).get(obs.kind)
        self.observations += 1
        if not rules:
            return self.due(self.clock() if now is None else now)
        return self.run(rules, obs.kind, obs.protocol, obs.fields, obs.flow,
                         self.clock() if now is None else now, None)

    def rules_for(self, protocol: str) -> dict[str, list[CompiledRule]]:
        """The active rules of ``protocol`` by observation kind (empty kinds absent); an adapter
        looks its kind up before building fields, so a kind no rule uses costs nothing."""
        return self._index.get(protocol, {})

    def flow_closed(self, flow: Flow, now: float | None = None, *,
                    new_state: Callable[[float], FlowState] | None = None) -> list[Alert]:
        """The connection ended (FIN/RST, eviction, end of capture): its state leaves
        :attr:`flows` and the rules on its protocol's closing kind run over its summary.

        ``new_state`` stands in for the state of a flow the engine never saw (an adapter that
        reports every close passes its state class), else such a close observes nothing.
        """
        if now is None:
            now = self.clock()
        self.observations += 1
        st = self.flows.pop(flow.key())
        if st is None:
            if new_state is None:
                return self.due(now)
            st = new_state(now)
        kind = st.closed_kind
        if kind is None:
            return self.due(now)
        rules = self._index.get(st.protocol, {}).get(kind)
        if not rules:
            return self.due(now)
        return self.run(rules, kind, st.protocol, st.summary(now), flow, now, st)

    # ------------------------------------------------------------------ matching

    def run(self, rules: list[CompiledRule], kind: str, protocol: str, fields: dict[str, Any], flow: Flow,
            now: float, st: FlowState | None) -> list[Alert]:
        """Match ``rules`` (of ``protocol``/``kind``, from :meth:`rules_for`) against one
        observation's ``fields``; ``st`` is the flow's state in :attr:`flows`, if the adapter keeps
        one.  The caller counts the observation in :attr:`observations`.  Aggregates of limit
        windows that closed by ``now`` come first."""
        alerts: list[Alert] = self._close_due(now) if now >= self._next_due else []
        get = fields.get
        for compiled in rules:
            for is_flow, name, pred in compiled.checks:
                if not pred(getattr(flow, name) if is_flow else get(name)):
                    break
            else:
                fired: Any = True
                if compiled.state is not None:
                    fired = self._threshold(compiled, fields, flow, now, self._vlan_of(flow))
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
                alert = self._alert(compiled, kind, protocol, fields, flow, st, fired)
                if compiled.silence or compiled.limit is not None:
                    self._limit(compiled, alert, fields, flow, now)
                alerts.append(alert)
        return alerts

    # ------------------------------------------------------------------ limits and suppression

    def _limit(self, compiled: CompiledRule, alert: Alert, fields: dict[str, Any], flow: Flow, now: float) -> None:
        """Decide whether the match's event is written (ids.suppress, then the rule's limit)."""
        get = fields.get
        vlan = self._vlan_of(flow)
        for is_flow, name, pred, only in compiled.silence:
            if (only is None or only == vlan) and pred(getattr(flow, name) if is_flow else get(name)):
                alert.record = False
                rid = compiled.rule.id
                self.silenced[rid] = self.silenced.get(rid, 0) + 1
                return
        limit = compiled.limit
        if limit is None:
            return
        by = compiled.limit_by
        # (the by fields' values, the VLAN ids or ()): a source on another VLAN is another source
        key = (tuple(getattr(flow, name) if is_flow else get(name) for is_flow, name in by),
               vlan if compiled.limit_vlan else ())
        if not limit.admit(key, now, alert):
            alert.record = False
            self.limited += 1
        self._next_due = min(self._next_due, limit.next_due())

    def _vlan_of(self, flow: Flow) -> tuple[int, ...]:
        """The VLAN ids that are part of ``flow``'s sources: none without ids.vlan_tracking, or for
        a flow that carries none (inline, untagged, or a sensor's own Flow type without them)."""
        return getattr(flow, "vlan", ()) if self._vlans else ()

    def due(self, now: float) -> list[Alert]:
        """The aggregate alerts of limit windows closed by ``now`` (for a sensor with idle time)."""
        return self._close_due(now) if now >= self._next_due else []

    def flush(self) -> list[Alert]:
        """Close every limit window now (end of a capture, shutdown): their aggregate alerts."""
        out = [self._aggregate(c, w) for c in self._limited for w in c.limit.drain()]  # type: ignore[union-attr]
        self._next_due = float("inf")
        return out

    def _close_due(self, now: float) -> list[Alert]:
        out: list[Alert] = []
        nxt = float("inf")
        for compiled in self._limited:
            limit = compiled.limit
            assert limit is not None
            out.extend(self._aggregate(compiled, w) for w in limit.due(now))
            nxt = min(nxt, limit.next_due())
        self._next_due = nxt
        return out

    def _wall_from_clock(self, t: float) -> datetime:
        # the clock is monotonic: place t relative to the wall clock now
        return datetime.now(UTC) - timedelta(seconds=self.clock() - t)

    def _aggregate(self, compiled: CompiledRule, window: LimitWindow) -> Alert:
        """One alert event for the matches a limit window held back: how many, first and last time."""
        self.alerts += 1
        last: Alert = window.last_alert
        spec = compiled.limit_spec
        assert spec is not None
        # one value per `by` field, and the VLAN ids (see _limit)
        key_of: tuple[tuple[Any, ...], tuple[int, ...]] = window.key  # type: ignore[assignment]
        values, vlan = key_of
        key = dict(zip(spec.by, values, strict=True))
        first, lastt = self.to_wall(window.first), self.to_wall(window.last)
        keytext = ", ".join(f"{k}={_show(v)}" for k, v in key.items())
        message = (f"{compiled.rule.title}: {window.extra} more match(es) for {keytext} from {first.isoformat()} "
                   f"to {lastt.isoformat()} (limit {spec.describe()})")
        details = {**last.event.details, "action": "alert", "aggregate": True, "count": window.extra,
                   "first": first.isoformat(), "last": lastt.isoformat(),
                   "limit": {"count": spec.count, "within_seconds": spec.within, "by": list(spec.by),
                             "key": _with_vlan(key, vlan)}}
        details.pop("quarantine_seconds", None)
        if vlan:
            # the window's VLAN, named as the passive sensor names a connection's (details.vlan and
            # the message's end): the aggregate of one VLAN's source, not of its namesakes elsewhere
            details["vlan"] = list(vlan)
            message += f" ({vlan_text(vlan)})"
        event = Event(kind=last.event.kind, component="ids", severity=last.event.severity, outcome=Outcome.UNKNOWN,
                      actor=last.event.actor, target=last.event.target, patient_ids=last.event.patient_ids,
                      study_uids=last.event.study_uids, message=message, details=details, time=lastt)
        return Alert(rule_id=last.rule_id, title=last.title, severity=last.severity, action="alert",
                     quarantine_for=None, message=message, reference=last.reference, flow=last.flow, event=event)

    @staticmethod
    def _threshold(compiled: CompiledRule, fields: dict[str, Any], flow: Flow, now: float,
                   vlan: tuple[int, ...]) -> Any:
        by = compiled.by
        if len(by) == 1:  # the usual case (per client_host): no generator
            is_flow, name = by[0]
            key: Any = getattr(flow, name) if is_flow else fields.get(name)
        else:
            key = tuple(getattr(flow, name) if is_flow else fields.get(name) for is_flow, name in by)
        if vlan and compiled.threshold_vlan:
            key = (key, vlan)  # the same address on another VLAN is another source
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

    def _alert(self, compiled: CompiledRule, kind: str, protocol: str, fields: dict[str, Any], flow: Flow,
               st: FlowState | None, fired: Any) -> Alert:
        self.alerts += 1
        rule = compiled.rule
        obs = Observation(protocol, kind, fields, flow)
        vlan = self._vlan_of(flow)
        data = obs.as_dict()
        roles = compiled.roles
        # the kind's own fields first, else what the connection's state knows
        known = st.parties() if st is not None else (None, None)
        client_name = (fields.get(roles.actor) if roles.actor else None) or known[0]
        server_name = (fields.get(roles.target) if roles.target else None) or known[1]
        actor = Party(ae_title=client_name or None, host=flow.client_host, port=flow.client_port)
        target = Party(ae_title=server_name or None, host=flow.server_host, port=flow.server_port)
        pid = fields.get(roles.patient) if roles.patient else None
        patient_ids = (pid,) if pid else tuple(st.patient_ids) if st is not None else ()
        study = fields.get(roles.study) if roles.study else None
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
                "key": _with_vlan({b: obs.get(b) for b in t.by}, vlan if compiled.threshold_vlan else ()),
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
        lim = compiled.limit_spec
        if lim is not None:
            details["limit"] = {"count": lim.count, "within_seconds": lim.within, "by": list(lim.by),
                                "key": _with_vlan({b: obs.get(b) for b in lim.by}, vlan if compiled.limit_vlan else ())}
        event = Event(
            kind=f"ids.alert.{rule.id}", component="ids", severity=rule.severity, outcome=Outcome.UNKNOWN,
            actor=actor, target=target, patient_ids=patient_ids, study_uids=study_uids,
            message=message, details=details,
        )
        return Alert(rule_id=rule.id, title=rule.title, severity=rule.severity, action=compiled.action,
                     quarantine_for=compiled.quarantine_for, message=message, reference=rule.reference,
                     flow=flow, event=event)


def vlan_text(vlan: tuple[int, ...]) -> str:
    """``VLAN 100``, or ``VLAN 7, inner 100`` for 802.1ad (QinQ): as the passive sensor ends the
    message of a tagged connection's events (docs/ids.md, "Capture files")."""
    return f"VLAN {vlan[0]}" + (f", inner {vlan[1]}" if len(vlan) > 1 else "")


def _with_vlan(key: dict[str, Any], vlan: tuple[int, ...]) -> dict[str, Any]:
    """A threshold's or limit's ``key`` in alert details, with ``vlan`` when the VLAN is part of it."""
    return {**key, "vlan": list(vlan)} if vlan else key


def _show(value: Any) -> str:
    if isinstance(value, list):
        text = ",".join(str(v) for v in value[:5]) + (",..." if len(value) > 5 else "")
        return f"[{text}]"
    if isinstance(value, str):
        return repr(value) if value == "" or value != value.strip() else value
    return str(value)
