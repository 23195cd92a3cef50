"""Fixtures of the scanner tests: one Scanner with the built-in YARA rules for the session."""

from __future__ import annotations

import warnings

import pytest
from scan_samples import SAMPLES, ct

from pacsguard.scan.scanner import Scanner
from pacsguard.scan.yara_engine import YaraEngine


@pytest.fixture(scope="session")
def scanner() -> Scanner:
    return Scanner(yara=YaraEngine.compile())


@pytest.fixture(scope="session")
def built() -> dict[str, bytes]:
    """Every hostile sample, built once (some carry fresh UIDs, so a rebuild differs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values the samples are made of
        return {name: build() for name, (build, _) in SAMPLES.items()}


@pytest.fixture(scope="session")
def clean_ct() -> bytes:
    """pydicom's CT_small.dcm as scan_samples.ct writes it: a clean Part-10 file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct()
