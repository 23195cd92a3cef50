"""Alert limiting: at most N alert events per rule and key per window, then one aggregate.

Suricata's ``threshold: type limit`` and Zeek's notice suppression: a rule that matches a hundred
times for one attack writes its first ``count`` alerts per key (e.g. per client host) within
``within`` seconds; the matches beyond that are only counted, and when the window closes one
aggregate alert says how many there were, with the first and last time.  Limiting decides which
matches are *written*; the engine still returns every match, so inline actions act on all of them.

Windows start at a key's first match and are kept in start order, so the next to close is always
the first one: closing is O(1) per window, and at most ``cap`` keys are tracked (the oldest window
is closed early, with its aggregate, when a new key would exceed it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

__all__ = ["AlertLimit", "LimitWindow"]


class LimitWindow:
    """One key's window: alerts written, matches held back (``extra``) and their first/last time."""

    __slots__ = ("extra", "first", "key", "last", "last_alert", "start", "written")

    def __init__(self, key: Hashable, start: float) -> None:
        self.key = key
        self.start = start
        self.written = 0
        self.extra = 0
        self.first = 0.0
        self.last = 0.0
        #: the last match held back: the aggregate alert is made from it
        self.last_alert: Any = None


class AlertLimit:
    """The windows of one rule's limit (``count`` alerts per key per ``within`` seconds)."""

    __slots__ = ("_closed", "_windows", "cap", "count", "within")

    def __init__(self, count: int, within: float, cap: int) -> None:
        self.count = count
        self.within = within
        self.cap = cap
        self._windows: OrderedDict[Hashable, LimitWindow] = OrderedDict()
        #: windows closed early by the key bound, waiting for :meth:`due`
        self._closed: list[LimitWindow] = []

    def __len__(self) -> int:
        return len(self._windows)

    def admit(self, key: Hashable, now: float, alert: Any) -> bool:
        """A match for ``key`` at ``now``: True when its alert is written, False when it is held back."""
        windows = self._windows
        window = windows.get(key)
        if window is None:
            window = windows[key] = LimitWindow(key, now)
            if len(windows) > self.cap:
                _, oldest = windows.popitem(last=False)
                if oldest.extra:
                    self._closed.append(oldest)
        if window.written < self.count:
            window.written += 1
            return True
        if not window.extra:
            window.first = now
        window.extra += 1
        window.last = max(window.last, now)
        window.last_alert = alert
        return False

    def next_due(self) -> float:
        """When the next window closes (-inf: one is already waiting, inf: none is open)."""
        if self._closed:
            return float("-inf")
        for window in self._windows.values():
            return window.start + self.within
        return float("inf")

    def due(self, now: float) -> list[LimitWindow]:
        """Close the windows that ended by ``now``; returns those that held matches back."""
        out, self._closed = self._closed, []
        windows = self._windows
        while windows:
            window = next(iter(windows.values()))
            if window.start + self.within > now:
                break
            windows.popitem(last=False)
            if window.extra:
                out.append(window)
        return out

    def drain(self) -> list[LimitWindow]:
        """Close every window (end of a capture, engine shutdown)."""
        out, self._closed = self._closed, []
        out.extend(w for w in self._windows.values() if w.extra)
        self._windows.clear()
        return out
