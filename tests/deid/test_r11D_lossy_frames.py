"""Round 11 (D): the Lossy Image Compression marking (PS3.3 C.7.6.1.1.5) of a masked multi-frame
image is read from every frame's codestream, not the first frame's only. Frames of one object
may come from different encoders or settings: a JPEG-LS image whose first frame was coded with
NEAR 0 and its second with NEAR 3 (ITU-T T.87 C.2.3), or a JPEG 2000 image whose first frame is
reversible and its second irreversible (T.800 A.6), went out masked and uncompressed as if it
had never lost a bit. Frames made by dcmtk (dcmcjpls) and GDCM (gdcmconv), one file per setting,
then put together as the fragments of one object with pydicom's encapsulate."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian
from test_r10H_lossy_marking import LOSSY_KEYWORDS
from test_r10H_lossy_marking import _masked as masked

from pacsguard.deid.files import read_whole
from pacsguard.deid.lossy import codestream_loss

US_MULTI = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage


def _tool(name: str) -> str:
    path = shutil.which(name, path="/usr/bin")
    assert path, f"{name} is missing (Debian dcmtk / libgdcm-tools: make peers)"
    return path


def _native(path: Path, seed: int) -> Path:
    """A small 8-bit frame (64 x 48): a disc on a ramp that differs with ``seed``."""
    y, x = np.mgrid[0:48, 0:64]
    pixels = np.where((y - 24) ** 2 + (x - 32) ** 2 < 300, 140, 20) + (x * seed % 9)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(US_MULTI)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.99.11.41")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.99.11.42", "1.2.826.0.1.3680043.99.11.43"
    ds.Modality, ds.PatientID, ds.PatientName = "US", "PID5150", "VARGA^ILONA"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 48, 64, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def _two_frames(tmp_path: Path, first: list[str], second: list[str], syntax: str) -> Path:
    """Frame 1 compressed by ``first``, frame 2 by ``second`` (each a command given the source
    and output), put together as one two-frame object under ``syntax`` with no Lossy Image
    Compression attributes of its own (as an encoder that leaves them out writes it)."""
    frames = []
    for index, command in enumerate((first, second), start=1):
        source, out = _native(tmp_path / f"native{index}.dcm", index), tmp_path / f"frame{index}.dcm"
        subprocess.run([*command, str(source), str(out)], check=True, capture_output=True, timeout=60)
        frames.append(next(generate_frames(dcmread(out).PixelData, number_of_frames=1)))
    ds = read_whole(tmp_path / "frame1.dcm")
    ds.PixelData = encapsulate(frames, has_bot=True)
    ds["PixelData"].is_undefined_length = True
    ds.NumberOfFrames = 2
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    for keyword in LOSSY_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    path = tmp_path / "two_frames.dcm"
    ds.save_as(path)
    return path


def _masked(tmp_path: Path, source: Path) -> Dataset:
    """``source`` de-identified with a region mask over its corner (both frames kept)."""
    out = masked(tmp_path, source, corner=6)
    assert out.NumberOfFrames == 2
    return out


def _frames(path: Path) -> list[bytes]:
    return [bytes(f) for f in generate_frames(dcmread(path).PixelData, number_of_frames=2)]


def test_jpeg_ls_whose_second_frame_has_near_3_is_marked_lossy(tmp_path: Path) -> None:
    near_lossless = "1.2.840.10008.1.2.4.81"
    source = _two_frames(tmp_path, [_tool("dcmcjpls"), "--encode-lossless"],
                         [_tool("dcmcjpls"), "--encode-nearlossless", "--max-deviation", "3"], near_lossless)
    first, second = _frames(source)
    assert codestream_loss(near_lossless, first) is False  # NEAR 0: the first frame alone says lossless
    assert codestream_loss(near_lossless, second) is True  # NEAR 3
    out = _masked(tmp_path, source)
    assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == "ISO_14495_1"
    assert float(out.LossyImageCompressionRatio) > 1


def test_jpeg_2000_whose_second_frame_is_irreversible_is_marked_lossy(tmp_path: Path) -> None:
    # the object says "00" (never lossy), as its first frame's encoder would; the first frame's
    # 5-3 wavelet cannot tell, so the first frame alone let that stand
    j2k = "1.2.840.10008.1.2.4.91"
    source = _two_frames(tmp_path, [_tool("gdcmconv"), "--j2k"],
                         [_tool("gdcmconv"), "--j2k", "--lossy", "--irreversible", "-q", "30"], j2k)
    first, second = _frames(source)
    assert codestream_loss(j2k, first) is None and codestream_loss(j2k, second) is True
    ds = read_whole(source)
    ds.LossyImageCompression = "00"
    ds.save_as(source)
    out = _masked(tmp_path, source)
    assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == "ISO_15444_1"
