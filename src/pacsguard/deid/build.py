"""An Engine from the ``deid:`` section (or the command line's equivalents) and a key."""

from __future__ import annotations

from collections.abc import Iterable

from pacsguard.deid.config import DeidConfig, PixelSettings
from pacsguard.deid.engine import Engine, SafePrivate, Settings
from pacsguard.deid.keys import DeidKey
from pacsguard.deid.profile import Option
from pacsguard.deid.pseudonym import Pseudonyms


def make_engine(key: DeidKey, options: Iterable[Option], config: DeidConfig | None = None) -> Engine:
    config = config or DeidConfig()
    chosen = frozenset(options)
    settings = Settings(chosen, frozenset(SafePrivate(e.creator, e.group, e.element) for e in config.safe_private))
    cleaner = None
    if Option.CLEAN_PIXEL_DATA in chosen:
        from pacsguard.deid.ocr import PixelCleaner

        cleaner = PixelCleaner(config.pixels or PixelSettings())
    return Engine(settings, Pseudonyms(key.secret), pixel_cleaner=cleaner)
