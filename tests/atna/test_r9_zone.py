"""The site's time zone (atna.time_zone, `audit report --time-zone`): working hours, nights and
weekends are the hospital's own and move with its daylight saving time, while everything stored
stays in UTC. A rule for "before 06:00" or a day shift of 7 to 19 written in UTC is an hour wrong
for half the year in Berlin or New York; these tests pin what the site's clock shows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pacsguard.atna.zone import SiteZone
from pacsguard.cli import main
from pacsguard.events.model import Event, Party
from pacsguard.ids.audit.adapter import AuditAdapter
from pacsguard.ids.engine import Engine
from pacsguard.ids.rules import load_rules
from pacsguard.ids.settings import IdsSettings
from store_helpers import new_store

NIGHT = """
- id: audit-night-access
  title: Access to patient data before 06:00
  severity: warning
  protocol: audit
  on: access
  match: {hour: {lt: 6}}
  action: alert
  reference: hospital privacy policy
- id: audit-weekend-access
  title: Access to patient data on a Sunday
  severity: notice
  protocol: audit
  on: access
  match: {weekday: 7}
  action: alert
  reference: hospital privacy policy
"""


def access(when: datetime, user: str = "jsmith", pid: str = "PID-1") -> Event:
    """A received patient-record access, as the ingest records one."""
    return Event(kind="atna.audit.patient-record", component="atna", time=when,
                 actor=Party("VIEWER", "10.20.0.7", user=user), patient_ids=(pid,),
                 details={"event_id": {"code": "110110"}, "action": "R", "outcome_indicator": "0",
                          "participants": [{"user_id": user, "requestor": True}]})


def utc(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=timezone.utc)


def alerts(adapter: AuditAdapter, event: Event) -> list[str]:
    return [a.rule_id for a in adapter.observe(event, event.time.timestamp())]


def test_a_night_rule_follows_the_sites_daylight_saving_time(tmp_path: Path) -> None:
    """04:30 UTC is 05:30 in Berlin in winter (CET, night) and 06:30 in summer (CEST, morning):
    the rule "hour < 6" fires in January only. Told in UTC, it fired in both."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "night.yaml").write_text(NIGHT)
    engine = Engine(load_rules([tmp_path / "rules"], builtin=False), IdsSettings(), clock=lambda: 0.0)
    berlin = AuditAdapter(engine, zone=SiteZone.named("Europe/Berlin"))
    assert alerts(berlin, access(utc(1, 14, 4, 30))) == ["audit-night-access"]
    assert alerts(berlin, access(utc(7, 15, 4, 30), user="other")) == []
    # Saturday 23:30 UTC in July is Sunday 01:30 in Berlin: a Sunday, and a night.
    assert sorted(alerts(berlin, access(utc(7, 18, 23, 30), user="third"))) == [
        "audit-night-access", "audit-weekend-access"]
    in_utc = AuditAdapter(Engine(load_rules([tmp_path / "rules"], builtin=False), IdsSettings(), clock=lambda: 0.0),
                          zone=SiteZone.named("UTC"))
    assert alerts(in_utc, access(utc(7, 18, 23, 30), user="third")) == []


def daily(target: str, *args: str) -> tuple[int, str]:
    out = CliRunner().invoke(main.app, ["audit", "report", *args, "--store", target])
    return out.exit_code, out.output


def test_the_daily_report_takes_the_sites_day_and_hours_on_the_day_the_clocks_change(tmp_path: Path) -> None:
    """New York, Sunday 2026-03-08: clocks go from 02:00 EST to 03:00 EDT, so the day lasts 23
    hours, from 05:00 UTC to 04:00 UTC the next day. Its working hours 7-19 are local: an access
    at 11:30 UTC (07:30 EDT) is within them, one at 10:30 UTC (06:30 EDT) is not, whatever the
    offset was the day before. Events outside the local day are not counted; per hour and the
    listed times are local (with their offset, still one instant)."""
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    store.append([access(utc(3, 8, 4, 59), pid="BEFORE"),   # 23:59 EST on the 7th
                  access(utc(3, 8, 5, 0), pid="MIDNIGHT"),  # 00:00 EST
                  access(utc(3, 8, 10, 30), pid="EARLY"),   # 06:30 EDT
                  access(utc(3, 8, 11, 30), pid="SHIFT"),   # 07:30 EDT
                  access(utc(3, 9, 3, 59), pid="LAST"),     # 23:59 EDT
                  access(utc(3, 9, 4, 0), pid="AFTER")])    # 00:00 EDT on the 9th
    store.close()
    code, out = daily(target, "--day", "2026-03-08", "--time-zone", "America/New_York", "--format", "json")
    assert code == 0, out
    report = json.loads(out)
    assert report["format"] == "pacsguard-daily-report/v2"
    assert (report["time_zone"], report["working_hours"], report["events"]) == ("America/New_York", [7, 19], 4)
    assert [r["patients"] for r in report["after_hours_access"]] == [["MIDNIGHT"], ["EARLY"], ["LAST"]]
    assert [r["time"] for r in report["after_hours_access"]] == [
        "2026-03-08T00:00:00-05:00", "2026-03-08T06:30:00-04:00", "2026-03-08T23:59:00-04:00"]
    assert report["per_hour"][0] == 1 and report["per_hour"][6] == 1 and report["per_hour"][7] == 1
    assert report["per_hour"][23] == 1 and sum(report["per_hour"]) == 4
    code, page = daily(target, "--day", "2026-03-08", "--time-zone", "America/New_York")
    assert code == 0 and "Events per hour (America/New_York)" in page and "<th>time (America/New_York)</th>" in page


def test_the_configurations_time_zone_is_the_reports_default(tmp_path: Path) -> None:
    """`atna.time_zone` in pacsguard.yaml is what `audit report` takes without --time-zone; the
    option wins over it."""
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    store.append([access(utc(12, 3, 23, 30))])  # 2026-12-04 08:30 in Tokyo
    store.close()
    config = tmp_path / "pacsguard.yaml"
    config.write_text(yaml.safe_dump({"store": {"url": target}, "atna": {"time_zone": "Asia/Tokyo"}}))
    out = CliRunner().invoke(main.app, ["audit", "report", "--day", "2026-12-04", "--format", "json",
                                        "--config", str(config)])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert (report["time_zone"], report["events"], report["counts"]["after_hours_access"]) == ("Asia/Tokyo", 1, 0)
    out = CliRunner().invoke(main.app, ["audit", "report", "--day", "2026-12-04", "--format", "json",
                                        "--config", str(config), "--time-zone", "UTC"])
    assert out.exit_code == 0 and json.loads(out.output)["events"] == 0, out.output


@pytest.mark.parametrize("zone", ["Mars/Olympus", "../../etc/passwd", "/usr/share/zoneinfo/UTC", "CET+1", ""])
def test_a_zone_that_is_not_one_is_refused_naming_the_option_or_key(tmp_path: Path, zone: str) -> None:
    """Exit 2 naming --time-zone and what was expected; in the configuration, ConfigError naming
    atna.time_zone (serve would not start)."""
    code, out = daily(str(tmp_path / "none.db"), "--day", "2026-12-03", "--time-zone", zone)
    assert code == 2 and out.startswith(f"error: --time-zone: {zone!r} is no time zone: an IANA time zone name"), out
    config = tmp_path / "pacsguard.yaml"
    config.write_text(yaml.safe_dump({"store": {"url": str(tmp_path / "s.db")},
                                      "atna": {"time_zone": zone}}))
    checked = CliRunner().invoke(main.app, ["config", "check", str(config)])
    assert checked.exit_code == 2 and "atna.time_zone" in checked.output and "IANA" in checked.output, checked.output


def test_local_is_the_hosts_zone_with_its_daylight_saving_time() -> None:
    """'local' (the default) follows the host's zone (TZ here), for each instant: Los Angeles is
    UTC-8 in January and UTC-7 in July, and its day 2026-03-08 (clocks change) lasts 23 hours."""
    code = ("from datetime import date, datetime, timezone\n"
            "from pacsguard.atna.zone import SiteZone\n"
            "z = SiteZone.named('local')\n"
            "print(z.of(datetime(2026, 1, 15, 12, tzinfo=timezone.utc)).hour,"
            " z.of(datetime(2026, 7, 15, 12, tzinfo=timezone.utc)).hour)\n"
            "s, e = z.day_span(date(2026, 3, 8))\n"
            "print(s.isoformat(), (e - s).total_seconds() / 3600)\n")
    env = {**os.environ, "TZ": "America/Los_Angeles"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30, check=True)
    assert out.stdout.split("\n")[:2] == ["4 5", "2026-03-08T08:00:00+00:00 23.0"], out.stdout


def test_the_first_and_last_days_there_are_keep_their_bounds() -> None:
    """East of UTC, the site's 0001-01-01 starts before the first UTC instant a datetime holds: it
    starts at that instant. West of UTC, 9999-12-31 has no next midnight: no end."""
    start, end = SiteZone.named("Asia/Tokyo").day_span(date(1, 1, 1))
    assert start == datetime.min.replace(tzinfo=timezone.utc)
    assert end is not None and end.date() == date(1, 1, 1) and end.hour == 14  # Tokyo's mean time then, +09:18:59
    start, end = SiteZone.named("America/New_York").day_span(date.max)
    assert end is None and start.year == 9999


def test_a_message_dated_at_the_end_of_time_east_of_utc_is_counted_not_a_crash(tmp_path: Path) -> None:
    """9999-12-31T23:59Z is in the year 10000 on Tokyo's clocks, which a datetime cannot hold: the
    daily report counts it (its time shown in UTC) and the rules take its hour as UTC, instead of
    failing on the one message a sender dated there."""
    last = utc(12, 31, 23, 59).replace(year=9999)
    target = str(tmp_path / "store.db")
    store, _ = new_store(target, tmp_path)
    store.append([access(last)])
    store.close()
    code, out = daily(target, "--day", "9999-12-31", "--time-zone", "Asia/Tokyo", "--format", "json")
    assert code == 0, out
    report = json.loads(out)
    assert report["events"] == 1 and report["after_hours_access"][0]["time"] == last.isoformat()
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "night.yaml").write_text(NIGHT)
    tokyo = AuditAdapter(Engine(load_rules([tmp_path / "rules"], builtin=False), IdsSettings(), clock=lambda: 0.0),
                         zone=SiteZone.named("Asia/Tokyo"))
    assert alerts(tokyo, access(last)) == []  # 23:59, a Friday, in UTC
