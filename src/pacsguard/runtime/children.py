"""How a child process of pacsguard ended, in the words an administrator reads in an Event."""

from __future__ import annotations

import signal


def how_it_ended(exit_code: int | None) -> tuple[str | None, str]:
    """The signal that ended a child (``exit_code`` as subprocess reports it: negative for a
    signal), and a phrase for the message: "killed by SIGKILL" or "exit code 1"."""
    sig = None
    if exit_code is not None and exit_code < 0:
        try:
            sig = signal.Signals(-exit_code).name
        except ValueError:
            sig = f"signal {-exit_code}"
    return sig, (f"killed by {sig}" if sig else f"exit code {exit_code}")
