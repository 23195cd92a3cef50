"""Fixtures of the scanner tests: one Scanner with the built-in YARA rules for the session."""

from __future__ import annotations

import pytest

from pacsguard.scan.scanner import Scanner
from pacsguard.scan.yara_engine import YaraEngine


@pytest.fixture(scope="session")
def scanner() -> Scanner:
    return Scanner(yara=YaraEngine.compile())
