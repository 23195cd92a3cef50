"""Where the relay's time goes per read and per PDU, measured inside a running gateway.

A launcher for ``bench/gateway.py --gateway-launcher bench/relay_timing.py`` (what-if tooling,
never used for the reference figures): it wraps the relay's entry points with
``time.perf_counter_ns`` and, when the gateway stops, writes to its log (stderr) how many calls
each had and their mean time:

- ``read``: one read from a leg, all that follows from it (``Side.buffer_updated``);
- ``bulk``: the data set fast path within it (``_stream_dataset``, forwarding included);
- ``write``: writing to the other leg (``_forward``: the send system call, which a relay that
  only copies pays as well);
- ``pdu TYPE DIR SIZE``: one whole PDU through the normal path (``_on_pdu``), by PDU type,
  direction (rq = from the requestor) and size in 4 KiB steps.

The wrappers cost ~0.2 us per call, which the means include. Comparing ``read`` minus ``write``
with a relay that only copies (``bench/python_relay.py``) gives the inspection's cost per read.
"""

from __future__ import annotations

import atexit
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from pacsguard.gateway import relay


def _timed(cls: type, name: str, key: Callable[..., str], totals: Counter[str], calls: Counter[str]) -> None:
    inner = getattr(cls, name)
    clock = time.perf_counter_ns

    def wrapper(*args: Any) -> Any:
        start = clock()
        result = inner(*args)
        label = key(*args)
        totals[label] += clock() - start
        calls[label] += 1
        return result

    setattr(cls, name, wrapper)


def _report(totals: Counter[str], calls: Counter[str]) -> None:
    print("relay timing (calls, total ms, mean us):", file=sys.stderr)
    for label in sorted(calls):
        print(f"  {label:<24} {calls[label]:>8} {totals[label] / 1e6:>9.1f} {totals[label] / calls[label] / 1e3:>9.1f}",
              file=sys.stderr)


def install() -> None:
    totals: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    _timed(relay.Side, "buffer_updated", lambda *_: "read", totals, calls)
    _timed(relay.AssociationRelay, "_stream_dataset", lambda *_: "bulk", totals, calls)
    _timed(relay.AssociationRelay, "_forward", lambda *_: "write", totals, calls)
    _timed(relay.AssociationRelay, "_on_pdu",
           lambda _self, from_client, pdu: f"pdu {pdu.pdu_type} {'rq' if from_client else 'ac'} "
                                           f"{len(pdu.raw) // 4096 * 4}K+", totals, calls)
    atexit.register(_report, totals, calls)


if __name__ == "__main__":
    install()
    from pacsguard.cli.main import main

    sys.exit(main())
