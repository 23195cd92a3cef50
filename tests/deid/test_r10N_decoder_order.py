"""Round 10 (N): which decoder reads a hostile image. With python-gdcm installed (for 12-bit JPEG
Extended), pydicom 3 tries its GDCM plugin first for every JPEG, JPEG-LS and JPEG 2000 frame,
before pylibjpeg and Pillow: one more C++ decoder in front of every image a sender crafted, and
not the one the other tests meant to exercise. deid's decode() now names the plugins itself:
pylibjpeg, then Pillow, then pydicom's own RLE, GDCM last (decoded.PLUGIN_ORDER). Images made
by dcmtk (dcmcjpeg) and GDCM (gdcmconv --j2k) with text drawn in them; every plugin is wrapped
so the test sees which ones pydicom called, and GDCM's is made to fail."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from deid_helpers import engine
from pydicom.data import get_testdata_file
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import ExplicitVRLittleEndian
from test_r10C_compressed_pixels import WORDS, _compressed, _frame, _ocr

import pacsguard.deid.decoded as decoded
from pacsguard.deid.files import deidentify_file, read_whole

JPEG_BASELINE, JPEG_EXTENDED = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def _watch(monkeypatch: pytest.MonkeyPatch, syntax: str, refuse: set[str]) -> list[str]:
    """Wrap every installed plugin of ``syntax``'s decoder: each call is listed, the ``refuse``d
    ones raise instead of decoding."""
    decoder = get_decoder(syntax)
    assert "gdcm" in decoder.available_plugins, "python-gdcm is missing (pip install pacsguard[deid])"
    assert "pylibjpeg" in decoder.available_plugins, "pylibjpeg is missing (pip install pacsguard[deid])"
    calls: list[str] = []

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def decode(src: bytes, runner: Any) -> Any:
            calls.append(name)
            if name in refuse:
                raise RuntimeError(f"{name} was refused by the test")
            return real(src, runner)
        return decode

    for name in decoder.available_plugins:
        monkeypatch.setitem(decoder._available, name, spy(name, decoder._available[name]))
    return calls


@pytest.mark.parametrize(("how", "syntax"), [("jpeg-baseline", JPEG_BASELINE), ("j2k", J2K_LOSSLESS)])
def test_jpeg_and_jpeg_2000_frames_are_decoded_without_gdcm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            how: str, syntax: str) -> None:
    source = _compressed(tmp_path, how, [_frame(text=True, colour=False)])
    assert read_whole(source).file_meta.TransferSyntaxUID == syntax
    calls = _watch(monkeypatch, syntax, refuse={"gdcm"})
    result = deidentify_file(engine("clean-pixel-data"), source, tmp_path / "out.dcm")
    assert calls and set(calls) == {"pylibjpeg"}, calls  # GDCM never sees the frame
    assert result.output is not None, result.withheld
    assert result.report.pixels.startswith("masked"), result.report.pixels
    out = read_whole(result.output)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    seen = _ocr(out.pixel_array)
    assert not [w for w in WORDS if w in seen], seen


def test_gdcm_is_the_last_resort_after_pylibjpeg_and_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _compressed(tmp_path, "jpeg-baseline", [_frame(text=True, colour=False)])
    calls = _watch(monkeypatch, JPEG_BASELINE, refuse={"pylibjpeg", "pillow"})
    result = deidentify_file(engine("clean-pixel-data"), source, tmp_path / "out.dcm")
    assert calls == ["pylibjpeg", "pillow", "gdcm"], calls
    assert result.output is not None, result.withheld
    assert result.report.pixels.startswith("masked"), result.report.pixels


def test_a_frame_no_decoder_reads_is_withheld_naming_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _compressed(tmp_path, "jpeg-baseline", [_frame(text=True, colour=False)])
    _watch(monkeypatch, JPEG_BASELINE, refuse={"pylibjpeg", "pillow", "gdcm"})
    result = deidentify_file(engine("clean-pixel-data"), source, tmp_path / "out.dcm")
    assert result.output is None
    for name in ("pylibjpeg", "pillow", "gdcm"):
        assert f"{name}: RuntimeError: {name} was refused by the test" in result.withheld, result.withheld
    assert JPEG_BASELINE in result.withheld and "Traceback" not in result.withheld


def test_a_12_bit_jpeg_still_reaches_gdcm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _watch(monkeypatch, JPEG_EXTENDED, refuse=set())
    direct: list[int] = []
    real = decoded._gdcm_frame

    def gdcm_frame(*args: Any) -> bytes:
        direct.append(1)
        return real(*args)

    monkeypatch.setattr(decoded, "_gdcm_frame", gdcm_frame)
    source = Path(str(get_testdata_file("JPEG-lossy.dcm")))
    result = deidentify_file(engine("clean-pixel-data"), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    assert result.report.pixels.startswith(("clean", "masked")), result.report.pixels
    assert calls == ["pylibjpeg", "pillow", "gdcm"], calls  # each refuses 12 bits with Se 0
    assert direct == [1]  # then GDCM itself decodes the one frame
