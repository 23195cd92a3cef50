"""Bounded per-key state for thresholds: an LRU of keys, and per key a sliding window.

Every structure here has a hard bound that does not depend on the traffic:

* :class:`BoundedLRU` holds at most ``cap`` keys; inserting one more evicts the least recently
  used, and keys idle for longer than ``ttl`` are dropped as new keys arrive.  A flood of
  distinct sources therefore costs at most ``cap`` entries.
* :class:`CountWindow` keeps at most ``count`` timestamps (exact sliding window) when ``count``
  is small, else a fixed ring of buckets (sliding window in 1/``BUCKETS`` steps).
* :class:`DistinctWindow` keeps at most ``count`` distinct values, each with its last time.
* :class:`SumWindow` keeps a fixed ring of buckets and, for baselines, one moving average.

Each window *fires* once when its threshold is reached, then resets and stays quiet for one
window length: one alert per window per key.  Times are seconds on any monotonic scale (the
gateway's clock, or capture timestamps for a passive sensor).
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)

#: Above this count, CountWindow switches from exact timestamps to buckets.
EXACT_COUNT_LIMIT = 32
#: Buckets per window for the bucketed counters.
BUCKETS = 12
#: Longest value kept in a DistinctWindow (longer ones are truncated: AE titles are 16
#: characters, UIDs 64, person names a few hundred at most).
MAX_VALUE_LENGTH = 256
#: Smoothing of the per-key baseline (exponentially weighted moving average of window totals).
BASELINE_ALPHA = 0.2
#: Windows a baseline must have seen before it is trusted; until then only the floor applies.
BASELINE_WARMUP = 3


class Touchable(Protocol):
    touched: float


T = TypeVar("T", bound=Touchable)


class BoundedLRU(Generic[K, T]):
    """A mapping of at most ``cap`` keys, least recently used evicted first.

    Values carry their last-use time in a ``touched`` attribute.  ``ttl`` (seconds, optional):
    entries not touched for longer are expired, oldest first, whenever a new key is inserted
    (touched entries move to the end, so the oldest are always at the front; at most a few
    are dropped per insertion, which keeps the cost of one call bounded).
    """

    __slots__ = ("_data", "cap", "evicted", "expired", "ttl")

    def __init__(self, cap: int, ttl: float | None = None) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self.ttl = ttl
        self._data: OrderedDict[K, T] = OrderedDict()
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: K, now: float) -> T | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
            value.touched = now
        return value

    def get_or_create(self, key: K, now: float, factory: Callable[[], T]) -> T:
        data = self._data
        value = data.get(key)
        if value is not None:
            data.move_to_end(key)
            value.touched = now
            return value
        if self.ttl is not None:
            self._expire(now)
        value = factory()
        value.touched = now
        data[key] = value
        if len(data) > self.cap:
            data.popitem(last=False)
            self.evicted += 1
        return value

    def pop(self, key: K) -> T | None:
        return self._data.pop(key, None)

    def _expire(self, now: float) -> None:
        limit = now - self.ttl  # type: ignore[operator]
        data = self._data
        for _ in range(8):
            if not data:
                return
            key = next(iter(data))
            if data[key].touched >= limit:
                return
            del data[key]
            self.expired += 1

    def keys(self) -> list[K]:
        return list(self._data)

    def clear(self) -> None:
        self._data.clear()


_NEVER = float("-inf")


class _Window:
    __slots__ = ("quiet_until", "touched")


class CountWindow(_Window):
    """Fires when ``count`` events fall within ``within`` seconds."""

    __slots__ = ("_buckets", "_times", "count", "within")

    def __init__(self, count: int, within: float) -> None:
        self.quiet_until = _NEVER
        self.touched = 0.0
        self.count = count
        self.within = within
        if count <= EXACT_COUNT_LIMIT:
            self._times: array[float] | None = array("d")
            self._buckets: _Buckets | None = None
        else:
            self._times = None
            self._buckets = _Buckets(within)

    def add(self, now: float) -> int | None:
        """Record one event; return the count reached when the threshold fires, else None."""
        if now < self.quiet_until:
            return None
        times = self._times
        if times is not None:
            times.append(now)
            if len(times) > self.count:
                del times[0]
            if len(times) == self.count and now - times[0] <= self.within:
                reached = len(times)
                del times[:]
                self.quiet_until = now + self.within
                return reached
            return None
        buckets = self._buckets
        assert buckets is not None
        total = buckets.add(now, 1.0)
        if total >= self.count:
            buckets.clear()
            self.quiet_until = now + self.within
            return int(total)
        return None


class DistinctWindow(_Window):
    """Fires when ``count`` distinct values are seen within ``within`` seconds."""

    __slots__ = ("_seen", "count", "within")

    def __init__(self, count: int, within: float) -> None:
        self.quiet_until = _NEVER
        self.touched = 0.0
        self.count = count
        self.within = within
        self._seen: dict[object, float] = {}

    def add(self, now: float, value: object) -> list[object] | None:
        """Record a value; return the distinct values when the threshold fires, else None."""
        if now < self.quiet_until or value is None:
            return None
        if isinstance(value, str) and len(value) > MAX_VALUE_LENGTH:
            value = value[:MAX_VALUE_LENGTH]
        seen = self._seen
        seen.pop(value, None)
        seen[value] = now  # re-insert: the dict stays ordered by last time seen
        limit = now - self.within
        while seen:
            first = next(iter(seen))
            if seen[first] >= limit:
                break
            del seen[first]
        if len(seen) >= self.count:
            values = list(seen)
            seen.clear()
            self.quiet_until = now + self.within
            return values
        return None

    def __len__(self) -> int:
        return len(self._seen)


class _Buckets:
    """A ring of BUCKETS sums covering one window (sliding in 1/BUCKETS steps)."""

    __slots__ = ("_index", "_sums", "width")

    def __init__(self, within: float) -> None:
        self.width = within / BUCKETS
        self._index: list[int] = []  # bucket numbers, oldest first (at most BUCKETS)
        self._sums: list[float] = []

    def add(self, now: float, value: float) -> float:
        number = int(now // self.width)
        index, sums = self._index, self._sums
        oldest = number - BUCKETS + 1
        while index and index[0] < oldest:
            del index[0]
            del sums[0]
        if index and index[-1] == number:
            sums[-1] += value
        elif not index or index[-1] < number:
            index.append(number)
            sums.append(value)
        else:  # out-of-order time (capture reordering): add to the newest bucket
            sums[-1] += value
        return sum(sums)

    def clear(self) -> None:
        self._index.clear()
        self._sums.clear()


class SumWindow(_Window):
    """Fires when the sum of a value within ``within`` seconds reaches ``floor`` and, with a
    ``baseline`` factor, also exceeds ``baseline`` times this key's usual total per window.

    The usual total is an exponentially weighted moving average over consecutive windows
    (windows without traffic count as zero), trusted after BASELINE_WARMUP windows.
    """

    __slots__ = ("_buckets", "_period", "_period_total", "average", "baseline", "floor", "periods", "within")

    def __init__(self, floor: float, within: float, baseline: float | None = None) -> None:
        self.quiet_until = _NEVER
        self.touched = 0.0
        self.floor = floor
        self.within = within
        self.baseline = baseline
        self._buckets = _Buckets(within)
        self._period: int | None = None
        self._period_total = 0.0
        self.average = 0.0
        self.periods = 0

    def _learn(self, now: float, value: float) -> None:
        period = int(now // self.within)
        if self._period is None:
            self._period = period
        elif period > self._period:
            elapsed = min(period - self._period, 64)
            self.average = BASELINE_ALPHA * self._period_total + (1 - BASELINE_ALPHA) * self.average
            self.average *= (1 - BASELINE_ALPHA) ** (elapsed - 1)
            self.periods += elapsed
            self._period = period
            self._period_total = 0.0
        self._period_total += value

    def add(self, now: float, value: float) -> float | None:
        """Add a value; return the window total when the threshold fires, else None."""
        if self.baseline is not None:
            self._learn(now, value)
        if now < self.quiet_until:
            return None
        total = self._buckets.add(now, value)
        if total < self.floor:
            return None
        if self.baseline is not None and self.periods >= BASELINE_WARMUP and total <= self.baseline * self.average:
            return None
        self._buckets.clear()
        self.quiet_until = now + self.within
        return total
