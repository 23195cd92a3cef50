"""Fuzz the relay longer than the suite does: seeded PDU-level mutations of real associations through
the relay in memory, each input judged as tests/gateway/fuzz_relay.py describes (no exception, every
violation ends in an abort, every requested association in a recorded outcome, nothing malformed
forwarded either way).

    .venv/bin/python bench/fuzz.py [--count 1000000] [--seed 16] [--duration SECONDS] [--ids-every 5]

Stops after --count inputs or --duration seconds, whichever comes first; prints inputs run, wall and
CPU time, inputs per CPU second, how the inputs ended, and every finding (input index and mutations:
``make_input(seed, index, seeds())`` replays one). Exit 1 if anything was found.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests" / "gateway"), str(HERE.parent / "tests")]

from fuzz_relay import run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="inputs to run at most")
    parser.add_argument("--seed", type=int, default=16, help="seed of the run (inputs are a function of it)")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--ids-every", type=int, default=5, help="every N-th input with the IDS rules inline (0: none)")
    args = parser.parse_args()
    logging.getLogger("pacsguard").setLevel(logging.ERROR)  # each refusal logs a warning
    started = time.monotonic()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    deadline = started + args.duration if args.duration else None

    def stop() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    report = asyncio.run(run(args.seed, args.count, ids_every=args.ids_every, stop=stop, max_findings=100))
    wall = time.monotonic() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(f"seed {args.seed}: {report.ran:,} inputs in {wall:,.1f} s wall, {cpu:,.1f} s CPU "
          f"({report.ran / cpu:,.0f} inputs per CPU second); max RSS {cpu1.ru_maxrss / 1024:,.0f} MiB")
    print("outcomes: " + ", ".join(f"{k} {v:,}" for k, v in report.outcomes.most_common()))
    print(f"findings: {len(report.findings)}")
    for finding in report.findings:
        print(f"  {finding}")
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
