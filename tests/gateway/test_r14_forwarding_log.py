"""pynetdicom's own ERROR lines (a destination refusing or not reachable) are kept out of serve's log
unless it runs at debug: they named neither route nor destination and looked like failures to
anyone reading the log (an outside probe); the route's events say it with both."""

from __future__ import annotations

import subprocess
import sys

import pytest

ASSOCIATE = """
import logging, sys
from pacsguard.cli.common import quiet_libraries
from pacsguard.cli.jsonlog import configure_logging
configure_logging(sys.argv[1], "text")
quiet_libraries()  # as serve sets its logging up
from pynetdicom import AE
ae = AE()
ae.add_requested_context("1.2.840.10008.1.1")
assoc = ae.associate("127.0.0.1", 9)  # nothing listens on port 9
print("established" if assoc.is_established else "refused")
"""


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("warning", False), ("debug", True)])
def test_pynetdicom_errors_are_shown_at_debug_only(level: str, shown: bool) -> None:
    done = subprocess.run([sys.executable, "-c", ASSOCIATE, level], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "refused", done.stderr
    assert ("ERROR pynetdicom" in done.stderr) is shown, done.stderr
