"""The site's time zone (``atna.time_zone``): the one people's hours and days are told in.

Everything stored stays in UTC (events/model.py). Working hours, nights and weekends are the
hospital's own, though, and move with its daylight saving time: a rule for "before 06:00" written in
UTC is an hour wrong for half the year. So the privacy rules' ``hour`` and ``weekday`` and
`audit report`'s day and working hours are taken in this zone: an IANA name (``Europe/Berlin``), or
``local``, the host's own zone (TZ, else /etc/localtime), looked up for each instant so that its
daylight saving time holds too."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo

#: The host's own time zone.
LOCAL = "local"
EXPECTED = "an IANA time zone name (Europe/Berlin, America/New_York, UTC) or 'local' (this host's zone)"


@dataclass(frozen=True)
class SiteZone:
    """A time zone by its name; ``zone`` None is the host's own (``datetime.astimezone()``)."""

    name: str
    zone: tzinfo | None

    @classmethod
    def named(cls, name: str) -> SiteZone:
        """The zone ``name`` names; ValueError saying what was expected."""
        if name == LOCAL:
            return cls(name, None)
        try:
            return cls(name, zoneinfo.ZoneInfo(name))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):  # unknown, or a path (../, absolute)
            raise ValueError(f"{name!r} is no time zone: {EXPECTED}") from None

    def of(self, when: datetime) -> datetime:
        """``when`` (aware) as the site's clock shows it; as it is (UTC) where that clock would show a
        year past 9999 or before 1, which a datetime cannot hold (a sender's 9999-12-31T23:59Z east
        of UTC): a message dated there is still counted, not a crash of the report or the rules."""
        try:
            return when.astimezone(self.zone)
        except (OverflowError, OSError):
            return when

    def label(self) -> str:
        """The name to show: an IANA name, or 'local' with the host's abbreviation now (CET)."""
        if self.zone is not None:
            return self.name
        return f"{LOCAL} ({datetime.now().astimezone().tzname()})"

    def day_span(self, day: date) -> tuple[datetime, datetime | None]:
        """The site's day as [start, end) in UTC: from its midnight to the next (23 or 25 hours on a
        day the clocks change). A start before what a datetime holds in UTC (0001-01-01 east of UTC)
        is the first instant there is; the last day (9999-12-31) has no next midnight: end None."""
        start = self._midnight(day) or datetime.min.replace(tzinfo=timezone.utc)
        end = self._midnight(day + timedelta(days=1)) if day < date.max else None
        return start, end

    def _midnight(self, day: date) -> datetime | None:
        """The site's midnight starting ``day``, in UTC; None outside the years 1-9999 in UTC."""
        try:
            local = datetime(day.year, day.month, day.day, tzinfo=self.zone) if self.zone is not None \
                else datetime(day.year, day.month, day.day).astimezone()  # naive: the host's time
            return local.astimezone(timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
