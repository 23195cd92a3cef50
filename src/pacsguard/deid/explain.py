"""``pacsguard deid explain``: the what-if. For one file, attribute by attribute (inside sequences
too), what the profile would do and which Table E.1-1 row and option (PS3.15 E.1, E.3) or which
project rule decided it; and what would happen to the pixels. Nothing is written."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from pydicom.dataset import Dataset

from pacsguard.deid.engine import Change, Engine, Report
from pacsguard.deid.pixels import pixel_verdict
from pacsguard.deid.profile import Option


@dataclass(frozen=True, slots=True)
class Explanation:
    changes: tuple[Change, ...]
    pixels: str
    withheld: str  # empty when the object would be written


def explain(engine: Engine, ds: Dataset) -> Explanation:
    verdict = pixel_verdict(ds, Option.CLEAN_PIXEL_DATA in engine.settings.options)
    report = Report(detailed=True)
    engine.apply_attributes(copy.deepcopy(ds), report)
    pixels = "the pixels would be checked for text (OCR, region masks)" if verdict.check else verdict.reason
    return Explanation(tuple(report.changes), pixels, verdict.reason if verdict.withhold else "")
