"""``pacsguard deid explain``: the what-if. For one file, attribute by attribute (inside sequences
too), what the profile would do and which Table E.1-1 row and option (PS3.15 E.1, E.3) or which
project rule decided it; and what would happen to the pixels. Nothing is written."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from pydicom.dataset import Dataset

from pacsguard.deid.engine import Change, Engine, Report, Withheld
from pacsguard.deid.ocr import PixelCleaner
from pacsguard.deid.pixels import pixel_verdict, remove_embedded_overlays
from pacsguard.deid.profile import Option


@dataclass(frozen=True, slots=True)
class Explanation:
    changes: tuple[Change, ...]
    pixels: str
    withheld: str  # empty when the object would be written


def explain(engine: Engine, ds: Dataset) -> Explanation:
    work = copy.deepcopy(ds)
    verdict = pixel_verdict(work, Option.CLEAN_PIXEL_DATA in engine.settings.options)
    withheld = verdict.reason if verdict.withhold else ""
    try:
        # As files.deidentify_file does first: overlay groups without Overlay Data, and the bit
        # planes of embedded overlays, go before the attributes are decided.
        overlays = remove_embedded_overlays(work)
    except Withheld as exc:
        overlays, withheld = [], withheld or str(exc)
    report = Report(detailed=True)
    engine.apply_attributes(work, report)
    pixels = "the pixels would be checked for text (OCR, region masks)" if verdict.check else verdict.reason
    unchecked = engine.pixel_cleaner.unchecked(ds) if isinstance(engine.pixel_cleaner, PixelCleaner) else ""
    if verdict.check and unchecked:
        pixels, withheld = unchecked, withheld or unchecked
    if overlays:
        pixels += "; overlay group " + ", ".join(f"{g:04X}" for g in overlays) + " without Overlay Data removed"
    return Explanation(tuple(report.changes), pixels, withheld)
