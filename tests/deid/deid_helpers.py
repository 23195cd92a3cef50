"""Engines and corpora the de-identification tests share."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom.data
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.utils import pack_bits
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

from pacsguard.deid.build import make_engine
from pacsguard.deid.engine import Engine
from pacsguard.deid.keys import DeidKey
from pacsguard.deid.profile import Option

CT = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
KEY = DeidKey(bytes(range(32)))
OTHER_KEY = DeidKey(bytes(range(1, 33)))


def engine(*options: str, key: DeidKey = KEY) -> Engine:
    return make_engine(key, [Option(o) for o in options])


def pydicom_files() -> list[Path]:
    """Every local file of pydicom's test data (never the downloadable ones)."""
    root = Path(os.path.dirname(pydicom.data.__file__)) / "test_files"
    return sorted(p for p in root.rglob("*") if p.is_file())


def patient_object(sop_class: str, *, modality: str = "CT", syntax: str = ExplicitVRLittleEndian,
                   name: str = "Quixote^Zebulon", patient_id: str = "PID77341") -> Dataset:
    """An object of ``sop_class`` with its file meta (``syntax``), fresh UIDs and a patient (the
    name and ID the tests search every output byte for); no pixels."""
    fm = FileMetaDataset()
    fm.TransferSyntaxUID, fm.MediaStorageSOPClassUID = UID(syntax), UID(sop_class)
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = name, patient_id, modality
    return ds


def image(sop_class: str, pixels: np.ndarray, *, modality: str, bits: int = 8, stored: int | None = None,
          syntax: str = ExplicitVRLittleEndian, **attrs: object) -> Dataset:
    """A one-frame MONOCHROME2 image of ``sop_class`` holding ``pixels`` (Bits Allocated ``bits``,
    1 packed), patient Quixote^Zebulon PID77341, fresh UIDs; ``attrs`` set as given."""
    ds = patient_object(sop_class, modality=modality, syntax=syntax)
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.BitsAllocated, ds.BitsStored = bits, stored or bits
    ds.HighBit = ds.BitsStored - 1
    for name, value in attrs.items():
        setattr(ds, name, value)
    if bits == 1:
        ds.PixelData = pack_bits(pixels)
    else:
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">" if syntax == ExplicitVRBigEndian else "<")).tobytes()
    return ds


def encapsulated_ct(path: Path, frames: list[bytes], syntax: str, *, bot: bool = True) -> None:
    """A 64 x 64 8-bit CT of compressed ``frames`` (PS3.5 A.4, a Basic Offset Table with ``bot``)
    in ``syntax``, patient Quixote^Zebulon, written to ``path``."""
    ds = patient_object(CT, syntax=syntax)
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames, has_bot=bot)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
