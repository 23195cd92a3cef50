"""Each user's distinct patients per hour against their own baseline, for the ``audit`` adapter's
fields ``hour_patients``, ``baseline_patients``, ``baseline_hours`` and ``above_baseline``.

Hours are clock hours (UTC) of the access time. A user's baseline is the median of their distinct
patient counts over their last ``history_hours`` *active* hours (hours with at least one patient):
nights and days off are not hours of zero, so a morning's usual work is not far above a baseline
dragged down by the night. ``above_baseline`` is true on the one access per user and hour that
first takes the count above ``factor`` times the baseline (and to at least ``min_patients``), once
``min_hours`` active hours are known.

Memory is bounded: at most ``max_users`` users with a baseline (``min_hours`` active hours known)
and as many still learning theirs, each group evicting its least recently active first (a user
evicted and seen again learns anew). The two are apart because any sender can name users: a flood of
made-up user names pushes out only other users still learning, never a real user's baseline (which
would blind the rule for that user's next ``min_hours`` active hours). Per user at most
``history_hours`` counts and, for the current hour, at most ``max_patients_per_hour`` patient IDs
(beyond that the count stays there).
An access older than the user's current hour (a sender's backlog) changes no count. One dated more
than ``AHEAD`` seconds after it was received (a sender's wrong clock, a local time sent without its
zone east of UTC, or a forged message) counts in the hour it was received: dated as sent, one
message dated years ahead would make every later access "older" and silence the user's alert until
then.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from statistics import median

from pacsguard.ids.state import BoundedLRU

#: Longest patient ID kept (a CX-free patient ID is at most 64 characters in HL7 and DICOM).
_MAX_ID = 64
#: How far after its receipt an access may be dated and still count (senders' clocks drift).
AHEAD = 300.0


@dataclass(frozen=True, slots=True)
class BaselineSettings:
    factor: float = 5.0
    min_patients: int = 10
    min_hours: int = 8
    history_hours: int = 168
    max_users: int = 10_000
    max_patients_per_hour: int = 256


@dataclass(frozen=True, slots=True)
class HourFigures:
    """What the adapter adds to an access observation."""

    hour_patients: int
    baseline_patients: float
    baseline_hours: int
    above_baseline: bool


class _User:
    __slots__ = ("baseline", "fired", "history", "hour", "patients", "touched")

    def __init__(self, history_hours: int) -> None:
        self.touched = 0.0
        self.hour = -1
        self.patients: set[str] = set()
        self.history: deque[int] = deque(maxlen=history_hours)
        self.baseline = 0.0  # median of history, recomputed when an hour closes
        self.fired = False


class PatientsPerHour:
    def __init__(self, settings: BaselineSettings | None = None) -> None:
        self.settings = s = settings or BaselineSettings()
        self.users: BoundedLRU[str, _User] = BoundedLRU(s.max_users)  # with a baseline
        self.learning: BoundedLRU[str, _User] = BoundedLRU(s.max_users)  # fewer than min_hours known

    def add(self, user: str, patients: list[str], when: float, received: float | None = None) -> HourFigures:
        """Count ``user``'s access to ``patients`` at ``when`` (seconds since the epoch, UTC), received
        at ``received`` (None: not known, ``when`` is trusted)."""
        s = self.settings
        if received is not None and when > received + AHEAD:
            # Dated in the future: counted when it arrived. Dated as sent, it would move the user's
            # hour ahead and make every later access "older"; left out, a site whose senders give
            # local time without its zone east of UTC (read as UTC, PS3.15 A.5.1 asks for a zone)
            # would never be counted at all.
            when = received
        state = self.users.get(user, when) or self.learning.get_or_create(user, when, lambda: _User(s.history_hours))
        hour = int(when // 3600)
        if hour > state.hour:
            if state.patients:
                state.history.append(len(state.patients))
                state.baseline = float(median(state.history))
                if len(state.history) == s.min_hours and self.learning.pop(user) is not None:
                    self.users.get_or_create(user, when, lambda: state)  # it has a baseline now
            state.hour, state.patients, state.fired = hour, set(), False
        if hour == state.hour:
            for patient in patients:
                if len(state.patients) >= s.max_patients_per_hour:
                    break
                state.patients.add(patient[:_MAX_ID])
        count, known = len(state.patients), len(state.history)
        above = (not state.fired and hour == state.hour and known >= s.min_hours and count >= s.min_patients
                 and count > s.factor * state.baseline)
        if above:
            state.fired = True
        return HourFigures(count, state.baseline if known else 0.0, known, above)
