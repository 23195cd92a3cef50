"""Which event loop a pacsguard process runs its coroutines on.

uvloop (libuv) cuts the gateway relay's per-read cost by a third against asyncio's own loop
(bench/gateway.py, docs/PERFORMANCE.md); PACSGUARD_EVENT_LOOP=asyncio chooses asyncio's loop
always, and a caller whose work needs it asks for it with ``plain``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any


def run_event_loop(main: Coroutine[Any, Any, None], *, plain: bool = False) -> None:
    """Run ``main`` to its end on uvloop, or on asyncio's loop when ``plain`` or the environment says so."""
    if os.environ.get("PACSGUARD_EVENT_LOOP", "uvloop") == "uvloop" and not plain:
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)
