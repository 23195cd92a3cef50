"""Round 11 (D): 12-bit JPEG Extended frames (ITU-T T.81 Process 4, PS3.5 A.4.1) only GDCM
decodes (a scan headed with Se 0, as older encoders wrote it: pylibjpeg's libjpeg refuses it).

1. GDCM's JPEG codec keeps IJG libjpeg's standard error manager, which printed "Unsupported JPEG
   data precision 12" and "Invalid SOS parameters for sequential JPEG" on the terminal of
   `pacsguard deid` (and in a gateway's log): lines that look like errors of the tool. gdcm.Trace
   does not reach them (they are libjpeg's, not GDCM's trace). GDCM now decodes in a child
   process whose standard error is read; the warning that says something about the image goes
   to the manifest's pixels column in the tool's words.
2. Signed 12-bit JPEG (Pixel Representation 1) was withheld ("GDCM is used for unsigned pixels
   only"). dcmcjpeg +ee turns a signed image into an unsigned one (Pixel Representation 0, with
   a Rescale Intercept of -2048 for a CT) and gdcmconv --jpeg --lossy refuses a sign-extended
   image ("DCT coefficient out of range") or writes a 16-bit precision DCT frame dcmdjpeg
   refuses; GDCM's 12-bit IJG encoder, chosen through python-gdcm, writes a conforming one
   (SOF1, precision 12, two's complement samples), which dcmdjpeg decodes to negative values.
   It is now decoded and de-identified; the values are those dcmdjpeg gives."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from deid_helpers import KEY
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacsguard.deid.build import make_engine
from pacsguard.deid.config import DeidConfig, PixelSettings, RegionMask
from pacsguard.deid.files import deidentify_file, read_whole
from pacsguard.deid.profile import Option

CT = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
MASK = (0, 0, 20, 8)  # x, y, width, height: over the bright band at the top


def _tool(name: str) -> str:
    path = shutil.which(name, path="/usr/bin")
    assert path, f"{name} is missing (Debian dcmtk: make peers)"
    return path


def _object(signed: bool) -> Dataset:
    """A 64 x 48 CT, 16 bits allocated, 12 stored, without rescale: a band of 1500 at the top,
    a disc of 600, a background of -1000 (signed) or 200 (unsigned), and a ramp."""
    y, x = np.mgrid[0:48, 0:64]
    background = -1000 if signed else 200
    pixels = np.where((y - 26) ** 2 + (x - 32) ** 2 < 150, 600, background) + (x * 7 % 13)
    pixels[1:6, 2:18] = 1500
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(CT)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.99.11.51")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.99.11.52", "1.2.826.0.1.3680043.99.11.53"
    ds.Modality, ds.PatientID, ds.PatientName = "CT", "PID6021", "HALVORSEN^BRIT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 48, 64, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, int(signed)
    ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def _se_zero(frame: bytes) -> bytes:
    """``frame`` with its Start of Scan saying Se 0 where the encoder wrote 63 (T.81 B.2.3), as
    the encoder of pydicom's JPEG-lossy.dcm did: IJG libjpeg warns and decodes it, pylibjpeg's
    libjpeg refuses it."""
    sos = frame.index(b"\xff\xda")
    at = sos + 5 + 2 * frame[sos + 4] + 1  # Ls, Ns, Ns x (Cs, Td|Ta), Ss, then Se
    assert frame[at] == 63
    return frame[:at] + b"\x00" + frame[at + 1:]


def _with_se_zero(path: Path) -> None:
    ds = read_whole(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([_se_zero(bytes(frame))])
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path)


def _dcmtk_unsigned(tmp_path: Path) -> Path:
    """The unsigned image compressed by dcmcjpeg +ee (12 bits, chosen from Bits Stored)."""
    native, out = tmp_path / "native.dcm", tmp_path / "jpeg12.dcm"
    dcmwrite(native, _object(signed=False), enforce_file_format=True)
    subprocess.run([_tool("dcmcjpeg"), "+ee", "+un", str(native), str(out)], check=True, capture_output=True,
                   timeout=60)
    _with_se_zero(out)
    return out


def _gdcm_signed(tmp_path: Path) -> Path:
    """The signed image compressed by GDCM's 12-bit IJG encoder (python-gdcm): a Pixel Format of
    12 bits allocated selects it (gdcmconv goes by Bits Allocated 16 and writes precision 16).
    The samples go in as their 12 stored bits, two's complement (PS3.5 8.2.1), not sign-extended:
    GDCM's encoder refuses those ("DCT coefficient out of range")."""
    import gdcm

    ds = _object(signed=True)
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((64, 48, 1))
    image.SetPixelFormat(gdcm.PixelFormat(1, 12, 12, 11, 1))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.MONOCHROME2))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.ExplicitVRLittleEndian))
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetByteStringValue((np.frombuffer(ds.PixelData, "<u2") & 0x0FFF).astype("<u2").tobytes())
    image.SetDataElement(element)
    codec = gdcm.JPEGCodec()
    codec.SetLossless(False)
    codec.SetQuality(90)
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    change.SetUserCodec(codec)
    change.SetInput(image)
    image.thisown = False
    assert change.Change()
    fragments = change.GetOutput().GetDataElement().GetSequenceOfFragments()
    frame = fragments.GetFragment(0).GetByteValue().GetBuffer().encode("utf-8", "surrogateescape")
    # the change holds the image by a GDCM smart pointer, which frees it with the change, and the
    # codec by a bare pointer: the change must go first, and the image must not be freed by
    # Python too, or GDCM aborts ("ReferenceCount > 0") or frees it twice
    del fragments, change
    del codec
    sof = frame.index(b"\xff\xc1")  # SOF1, extended sequential
    assert frame[sof + 4] == 12  # sample precision 12
    ds.PixelData = encapsulate([_se_zero(frame)])
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID(JPEG_EXTENDED)
    path = tmp_path / "signed12.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _dcmdjpeg(tmp_path: Path, source: Path) -> np.ndarray:
    """What dcmtk's decoder makes of ``source``: the reference values."""
    out = tmp_path / "dcmdjpeg.dcm"
    subprocess.run([_tool("dcmdjpeg"), str(source), str(out)], check=True, capture_output=True, timeout=60)
    return np.asarray(dcmread(out).pixel_array)


def test_cli_on_a_12_bit_jpeg_gdcm_decodes_prints_no_decoder_lines(tmp_path: Path) -> None:
    source = _dcmtk_unsigned(tmp_path)
    with pytest.raises(RuntimeError, match="Unable to decode"):  # GDCM is the only way
        read_whole(source).pixel_array  # noqa: B018
    (tmp_path / "pacsguard.yaml").write_text(
        "deid:\n  options: [clean-pixel-data]\n  pixels:\n    ocr: false\n"
        f"    region_masks:\n      - boxes: [[{', '.join(map(str, MASK))}]]\n")
    run = subprocess.run([sys.executable, "-m", "pacsguard.cli", "deid", "run", str(source), "--out",
                          str(tmp_path / "out"), "-c", str(tmp_path / "pacsguard.yaml")],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PACSGUARD_DEID_KEY": KEY.secret.hex(), "COLUMNS": "200"})
    assert run.returncode == 0, run.stderr
    told = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(told) == 1 and told[0].startswith("1 written, 0 withheld"), run.stderr  # nothing from libjpeg
    record = json.loads((tmp_path / "out.manifest.json").read_text())[0]
    assert record["pixels"].startswith("masked"), record
    assert "decoded by GDCM" in record["pixels"] and "Invalid SOS parameters" in record["pixels"], record
    assert "precision" not in record["pixels"]  # GDCM finding its 12-bit codec is no news


def test_signed_12_bit_jpeg_is_decoded_as_dcmtk_decodes_it_and_masked(tmp_path: Path) -> None:
    source = _gdcm_signed(tmp_path)
    before = read_whole(source)
    assert before.PixelRepresentation == 1 and before.BitsStored == 12
    with pytest.raises(RuntimeError, match="Unable to decode"):
        before.pixel_array  # noqa: B018
    reference = _dcmdjpeg(tmp_path, source)
    assert reference.min() < -900 and reference.max() > 1400  # dcmtk reads negative values
    config = DeidConfig(pixels=PixelSettings(ocr=False, region_masks=[RegionMask(boxes=[MASK])]))
    result = deidentify_file(make_engine(KEY, [Option.CLEAN_PIXEL_DATA], config), source, tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    assert result.report.pixels.startswith("masked 1"), result.report.pixels
    out = read_whole(result.output)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and out.PixelRepresentation == 1
    after = np.asarray(out.pixel_array)
    x, y, width, height = MASK
    blanked = np.zeros(after.shape, dtype=bool)
    blanked[:y + height + 2, :x + width + 2] = True  # the box with the cleaner's margin of 2
    assert (after[~blanked] == reference[~blanked]).all()  # every other value as dcmtk decodes it
    assert (after[blanked] == reference.min()).all() and after[blanked].max() < 0  # the band is gone
    assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == "ISO_10918_1"


def test_a_12_bit_frame_gdcm_cannot_decode_is_withheld_naming_it_and_nothing_is_printed(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    source = _dcmtk_unsigned(tmp_path)
    ds = read_whole(source)
    frame = bytes(next(generate_frames(ds.PixelData, number_of_frames=1)))
    ds.PixelData = encapsulate([frame[:len(frame) // 2]])  # cut off in its coded data
    ds["PixelData"].is_undefined_length = True
    ds.save_as(source)
    capfd.readouterr()
    result = deidentify_file(make_engine(KEY, [Option.CLEAN_PIXEL_DATA], DeidConfig()), source, tmp_path / "out.dcm")
    assert capfd.readouterr().err == ""  # on the descriptor itself: nothing from libjpeg or GDCM
    assert result.output is None
    assert "GDCM could not decode frame 1" in result.withheld, result.withheld
    assert "Invalid SOS parameters for sequential JPEG" in result.withheld  # libjpeg's words, named
