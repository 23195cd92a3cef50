"""Engines and corpora the de-identification tests share."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom.data

from pacsguard.deid.build import make_engine
from pacsguard.deid.engine import Engine
from pacsguard.deid.keys import DeidKey
from pacsguard.deid.profile import Option

KEY = DeidKey(bytes(range(32)))
OTHER_KEY = DeidKey(bytes(range(1, 33)))


def engine(*options: str, key: DeidKey = KEY) -> Engine:
    return make_engine(key, [Option(o) for o in options])


def pydicom_files() -> list[Path]:
    """Every local file of pydicom's test data (never the downloadable ones)."""
    root = Path(os.path.dirname(pydicom.data.__file__)) / "test_files"
    return sorted(p for p in root.rglob("*") if p.is_file())
