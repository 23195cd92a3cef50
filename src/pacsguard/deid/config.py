"""The ``deid:`` section of pacsguard.yaml: the profile and options (PS3.15 E.3), where the key
is, the safe private attributes (E.3.10), and the pixel checks (E.3.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from pacsguard.config.strict import Strict
from pacsguard.deid.profile import EXCLUSIVE, Option


class SafePrivateEntry(Strict):
    """A private attribute kept under retain-safe-private: creator, group (odd), element byte."""

    creator: str = Field(min_length=1, max_length=64)
    group: int = Field(ge=0x0009, le=0xFFFF)
    element: int = Field(ge=0x00, le=0xFF)

    @field_validator("group")
    @classmethod
    def _odd(cls, value: int) -> int:
        if not value % 2:
            raise ValueError("a private group is odd (PS3.5 7.8.1)")
        return value


class RegionMask(Strict):
    """Boxes always blanked in the images of one kind of device (as CTP's pixel anonymizer),
    matched on Manufacturer, Manufacturer's Model Name and image size; empty fields match any."""

    manufacturer: str = ""
    model: str = ""
    rows: int | None = Field(None, ge=1)
    columns: int | None = Field(None, ge=1)
    boxes: list[tuple[int, int, int, int]] = Field(min_length=1)  # x, y, width, height in pixels


class PixelSettings(Strict):
    ocr: bool = True  # look for text with tesseract (Debian tesseract-ocr) under clean-pixel-data
    language: str = "eng"
    min_confidence: float = Field(40.0, ge=0, le=100)
    region_masks: list[RegionMask] = Field(default_factory=list)
    # compressed images are decoded to be checked: at most this many MiB of decoded frames each
    max_decoded_mib: int = Field(512, ge=1, le=65536)


class DeidConfig(Strict):
    profile: Literal["basic"] = "basic"
    options: list[Option] = Field(default_factory=list)
    key_file: Path | None = None
    key_env: str = "PACSGUARD_DEID_KEY"
    safe_private: list[SafePrivateEntry] = Field(default_factory=list)
    pixels: PixelSettings = Field(default_factory=PixelSettings)

    @field_validator("options")
    @classmethod
    def _exclusive(cls, value: list[Option]) -> list[Option]:
        if Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES in value:
            raise ValueError("clean-recognizable-visual-features is not offered: pacsguard does not detect faces")
        for exclusive in EXCLUSIVE:
            if len(exclusive & set(value)) > 1:
                raise ValueError(" and ".join(sorted(o.value for o in exclusive)) + " cannot be chosen together")
        return value
