"""The receiver's collector settings (pacsguard.atna.collector): start-up objects frozen, young
collections every YOUNG_THRESHOLD allocations, the older generations left as they were."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from pacsguard.atna.collector import YOUNG_THRESHOLD, tune_for_ingest


@pytest.fixture
def collector_restored() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    yield before
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tuning_freezes_start_up_and_raises_only_the_young_threshold(
        collector_restored: tuple[int, int, int]) -> None:
    _, middle, old = collector_restored
    tune_for_ingest()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)
    assert YOUNG_THRESHOLD > 700
    assert gc.get_freeze_count() > 0
    assert gc.isenabled()  # cyclic garbage is still collected, only less often
