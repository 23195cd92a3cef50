"""pacsguard.deid.encode writes de-identified objects as pydicom's general writer would: read
back, every element (inside sequences too) and the file meta are the same, for every one of
pydicom's test files the engine writes (big endian ones too); deflated files go through pydicom."""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Any

import pytest
from deid_helpers import engine, pydicom_files
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from pacsguard.deid import encode
from pacsguard.deid.engine import Withheld
from pacsguard.deid.files import read_whole


def _flat(ds: Dataset, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for elem in ds:
        key = f"{prefix}{int(elem.tag):08X}"
        if elem.VR == "SQ":
            out[key] = len(elem.value)
            for i, item in enumerate(elem.value):
                out.update(_flat(item, f"{key}[{i}]."))
        else:
            out[key] = (elem.VR, elem.value)
    return out


def _deidentified() -> list[tuple[str, Dataset]]:
    e = engine()
    done = []
    for path in pydicom_files():
        try:
            ds = read_whole(path)
            e.deidentify(ds)
        except (Withheld, Exception):  # what the engine withholds is not written at all
            continue
        done.append((path.name, ds))
    return done


def test_the_fast_path_writes_what_pydicom_writes() -> None:
    fast = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, ds in _deidentified():
            theirs = io.BytesIO()
            dcmwrite(theirs, copy.deepcopy(ds), enforce_file_format=True)
            fast += encode._fast_syntax(ds) is not None
            ours = dcmread(io.BytesIO(encode.encode_file(ds)))
            expected = dcmread(io.BytesIO(theirs.getvalue()))
            assert _flat(ours) == _flat(expected), name
            assert ours.file_meta == expected.file_meta, name
            assert ours.preamble == expected.preamble, name
    assert fast >= 40  # the fast path is the common one, not the exception


def _deflated(tmp: Path) -> Path:
    ds = read_whole(next(p for p in pydicom_files() if p.name == "CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp / "deflated.dcm", enforce_file_format=True)
    return tmp / "deflated.dcm"


@pytest.mark.parametrize("syntax", [DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_deflated_and_big_endian_come_out_whole(syntax: str, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = _deflated(tmp_path) if syntax == DeflatedExplicitVRLittleEndian else next(
            p for p in pydicom_files() if p.name == "MR_small_bigendian.dcm")
        ds = read_whole(source)
        assert ds.file_meta.TransferSyntaxUID == syntax
        engine().deidentify(ds)
        # deflate goes through pydicom; big endian is copied as read like the little endian syntaxes
        assert (encode._fast_syntax(ds) is None) == (syntax == DeflatedExplicitVRLittleEndian)
        out = dcmread(io.BytesIO(encode.encode_file(ds)))
    assert out.file_meta.TransferSyntaxUID == syntax
    assert out.SOPInstanceUID == ds.SOPInstanceUID
    assert out.PatientID == ds.PatientID
