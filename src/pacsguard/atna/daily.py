"""The daily summary of the audit trail (`pacsguard audit report --day`): top users and hosts,
failed authentications, security alerts, access to patient data outside working hours and
break-glass uses (PS3.15 A.5.3.11 Security Alert, event type 110127 Emergency Override Started, or a
purpose of use of emergency treatment), as JSON and as an HTML page with bar charts (inline SVG)."""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import date
from typing import Any

from pacsguard.atna.explain import touches_patient
from pacsguard.atna.message.mapping import user_of
from pacsguard.atna.zone import SiteZone
from pacsguard.events.model import Event, Outcome
from pacsguard.hidden_characters import visible

#: Purposes of use that mean emergency access (HL7 v3 ActReason ETREAT, BTG "break the glass").
BREAK_GLASS_PURPOSES = frozenset({"ETREAT", "BTG"})
EMERGENCY_OVERRIDE = "110127"
_LISTED = 200  # at most this many events per list in the report
#: At most this many judged accesses are listed (`explain.summary`'s limit); all are counted.
EXPLANATIONS_LISTED = _LISTED * 5
#: The report's lists: each is cut at _LISTED events, its full count is in ``counts``.
LISTS = ("failed_authentications", "security_alerts", "after_hours_access", "break_glass")


def summarise(events: Iterable[Event], day: date, hours: tuple[int, int] = (7, 19),
              explain: Callable[[], dict[str, Any]] | None = None, *, zone: SiteZone | None = None) -> dict[str, Any]:
    """The day's figures; ``explain`` (called once ``events`` are read) gives the explanations of its
    accesses (atna/explain.py `summary`). ``hours`` are the working hours as [start, end) in the site's
    time zone ``zone`` (UTC without one), in which the events per hour and the listed times are told
    too; a start after the end spans midnight ((22, 6): from 22:00 to 06:00, a night shift)."""
    zone = zone or SiteZone.named("UTC")
    users: Counter[str] = Counter()
    hosts: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    per_hour = [0] * 24
    failed_auth: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    after_hours: list[dict[str, Any]] = []
    break_glass: list[dict[str, Any]] = []
    counts: Counter[str] = Counter({name: 0 for name in LISTS})
    total = 0
    for ev in events:
        total += 1
        kinds[ev.kind] += 1
        hour = zone.of(ev.time).hour
        per_hour[hour] += 1
        # The identity (UserID) in lower case, as explain and the privacy rules count users: JSMITH
        # from the EMR and jsmith from the viewer are one user (docs/audit.md, "Privacy monitoring").
        user = (user_of(ev) or "").strip().lower()
        if user:
            users[user] += 1
        if ev.actor.host:
            hosts[ev.actor.host] += 1
        d = ev.details
        if ev.kind == "atna.audit.user-authentication" and ev.outcome != Outcome.SUCCESS \
                or ev.kind == "console.login.failed":
            _add(failed_auth, ev, counts, "failed_authentications", zone)
        if ev.kind in ("atna.audit.security-alert",) or ev.kind.startswith("ids.alert."):
            _add(alerts, ev, counts, "security_alerts", zone)
        # What was done to patient data (explain.touches_patient): a Security Alert or an IDS alert
        # naming a patient, timed when it was raised, is no access at night.
        if not working(hour, hours) and touches_patient(ev):
            _add(after_hours, ev, counts, "after_hours_access", zone)
        types = {t.get("code") for t in d.get("event_types", ())}
        purposes = {p.get("code") for p in d.get("purposes", ())}
        if EMERGENCY_OVERRIDE in types or purposes & BREAK_GLASS_PURPOSES:
            _add(break_glass, ev, counts, "break_glass", zone)
    out = {
        "format": "pacsguard-daily-report/v2", "day": day.isoformat(), "time_zone": zone.label(),
        "working_hours": list(hours),
        "events": total, "kinds": dict(kinds.most_common()), "per_hour": per_hour,
        "top_users": users.most_common(10), "top_hosts": hosts.most_common(10),
        "failed_authentications": failed_auth, "security_alerts": alerts, "after_hours_access": after_hours,
        "break_glass": break_glass, "counts": dict(counts), "listed_at_most": _LISTED,
    }
    if explain is not None:
        explained = explain()
        explained["list"] = explained["list"][:EXPLANATIONS_LISTED]
        out["explanations"] = explained
    return out


def working(hour: int, hours: tuple[int, int]) -> bool:
    """Whether ``hour`` (0-23) is within the working hours [start, end), which span midnight when
    start > end."""
    start, end = hours
    return start <= hour < end if start <= end else hour >= start or hour < end


def _add(into: list[dict[str, Any]], ev: Event, counts: Counter[str], name: str, zone: SiteZone) -> None:
    """Count ``ev`` under ``name``; list it while the list holds fewer than _LISTED, its time as the
    site's clock showed it (with its offset: still one instant)."""
    counts[name] += 1
    if len(into) < _LISTED:
        into.append({"time": zone.of(ev.time).isoformat(), "kind": ev.kind, "outcome": ev.outcome,
                     "actor": ev.actor.label(), "patients": list(ev.patient_ids), "message": ev.message})


def _esc(value: object) -> str:
    """A value as the page shows it: its hidden characters made visible (hidden_characters: a user name
    or host a sender chose with U+202E in it would show reversed, "\\u202enimda" as "admin", one
    with U+200B as another user's name), then escaped. The JSON keeps them."""
    return html.escape(visible(str(value)))


def _clock(time: str) -> str:
    """A listed time as the page shows it: to the second, with its UTC offset. On the day the clocks
    go back, 02:30 happens twice (02:30+02:00 and 02:30+01:00 in Berlin): without the offset the two
    would read as one time."""
    offset = time[-6:] if len(time) > 19 and time[-6] in "+-" and time[-3] == ":" else ""
    return time[:19] + offset


def to_html(report: dict[str, Any]) -> str:
    esc = _esc

    def bars(title: str, pairs: list[tuple[str, int]]) -> str:
        top = max((n for _, n in pairs), default=0) or 1
        rows = "".join(
            f'<text x="0" y="{i * 18 + 13}" font-size="12">{esc(label)}</text>'
            f'<rect x="160" y="{i * 18 + 2}" width="{300 * n / top:.1f}" height="14" fill="#4a7bb7"/>'
            f'<text x="{165 + 300 * n / top:.1f}" y="{i * 18 + 13}" font-size="12">{n}</text>'
            for i, (label, n) in enumerate(pairs))
        return f'<h2>{esc(title)}</h2><svg width="520" height="{len(pairs) * 18 + 4}">{rows}</svg>'

    def table(title: str, name: str) -> str:
        rows: list[dict[str, Any]] = report[name]
        # The heading counts the day's events, not the listed ones (reports made before `counts`: the list).
        count = int((report.get("counts") or {}).get(name, len(rows)))
        cut = f"<p>The first {len(rows)} of {count} are listed.</p>" if count > len(rows) else ""
        body = "".join(f"<tr><td>{esc(_clock(r['time']))}</td><td>{esc(r['kind'])}</td><td>{esc(r['outcome'])}</td>"
                       f"<td>{esc(r['actor'])}</td><td>{esc(', '.join(r['patients']))}</td>"
                       f"<td>{esc(r['message'])}</td></tr>" for r in rows)
        return (f"<h2>{esc(title)} ({count})</h2>{cut}<table><tr><th>time ({esc(zone)})</th><th>kind</th>"
                f"<th>outcome</th><th>who</th><th>patients</th><th>message</th></tr>{body}</table>")

    def accesses(ex: dict[str, Any] | None) -> str:
        if not ex:
            return ""
        share = f" ({100 * ex['share']:.1f}%)" if ex["accesses"] else ""
        body = "".join(f"<tr><td>{esc(v['time'][:19])}</td><td>{esc(v['kind'])}</td><td>{esc(v['user'] or '')}</td>"
                       f"<td>{esc(v['patient'])}</td><td>{esc(v['template'] or 'UNEXPLAINED')}</td>"
                       f"<td>{'' if v['evidence'] is None else v['evidence']}</td></tr>" for v in ex["list"])
        return (f"<h2>Accesses to patient data: {ex['explained']} of {ex['accesses']} explained{share}</h2>"
                "<p>Unexplained first (docs/audit.md, explanation templates).</p><table><tr><th>time (UTC)</th>"
                "<th>kind</th><th>user</th><th>patient</th><th>explained by</th><th>evidence #</th></tr>"
                f"{body}</table>")

    # Reports made before time zones (v1) were told in UTC.
    zone = str(report.get("time_zone", "UTC"))
    hours = [(f"{h:02d}:00", n) for h, n in enumerate(report["per_hour"])]
    # No "<" at all in the data, as in the patient report: "</script>" would end the script element,
    # and "<!--" then "<script" (a user name a sender chose) would keep the page's own "</script>"
    # from ending it (HTML "script data double escaped state"), so the page's data would not parse.
    data = json.dumps(report).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Audit report "
            f"{esc(report['day'])}</title><style>body{{font-family:sans-serif}}td,th{{border:1px solid #ccc;"
            "padding:2px 6px}table{border-collapse:collapse}</style></head><body>"
            f"<h1>Audit trail, {esc(report['day'])}</h1><p>{report['events']} events.</p>"
            + accesses(report.get("explanations"))
            + bars(f"Events per hour ({zone})", hours) + bars("Top users", report["top_users"])
            + bars("Top hosts", report["top_hosts"])
            + table("Failed authentications", "failed_authentications")
            + table("Security alerts", "security_alerts")
            + table("Break-glass uses", "break_glass")
            + table("Access to patient data outside working hours", "after_hours_access")
            + '<script type="application/json" id="pacsguard-daily">' + data + "</script></body></html>\n")
