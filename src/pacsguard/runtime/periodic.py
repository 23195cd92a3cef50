"""A service's timer: a step run every few seconds for as long as the service runs.

A timer's task that ended on an exception ended for good, with nothing said until the task was
collected, while `serve` stayed ready and systemd's watchdog kept being fed (the event loop still
answers): the gateway's quarantine poll, its IDS alert windows, the audit endpoint's summaries
would all have stopped in silence. Here a failing step is logged on one line (once when it starts
failing, then once a minute, with the traceback at debug level) and tried again at the next tick,
and the step's recovery is said.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

#: Seconds between log lines while a step keeps failing.
FAILURE_REPEAT = 60.0


async def every(interval: float | Callable[[], float], step: Callable[[], Awaitable[None] | None], what: str,
                log: logging.Logger) -> None:
    """Run ``step`` every ``interval`` seconds until cancelled; ``what`` names it in the log."""
    failing_since: float | None = None  # monotonic time of the first failure in a row
    said = 0.0  # when the failure was last logged
    while True:
        await asyncio.sleep(interval() if callable(interval) else interval)
        try:
            done = step()
            if done is not None:
                await done
        except Exception as exc:  # noqa: BLE001 - a timer must outlive any one failure
            now = time.monotonic()
            if failing_since is None or now - said >= FAILURE_REPEAT:
                lasting = "" if failing_since is None else f" (failing for {now - failing_since:.0f} s)"
                log.error("%s failed%s: %s", what, lasting, one_line(exc))
                log.debug("%s failed", what, exc_info=True)
                said = now
            if failing_since is None:
                failing_since = now
        else:
            if failing_since is not None:
                log.warning("%s works again after %.0f s", what, time.monotonic() - failing_since)
            failing_since = None


def one_line(exc: BaseException) -> str:
    """A failure for one log line: a driver's own first line (SQLAlchemy wraps it with the SQL and
    a link), else the exception's text, else its class."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
