"""Benchmark de-identification: files/s for pacsguard, dicognito and deid (PyPI) on the same corpus
in the same run, one core, one process, with ratios.

    .venv/bin/python bench/deid.py [--copies 20]

The corpus is pydicom's uncompressed test files that every tool can de-identify (CT, MR, RT,
SR ...), each repeated ``--copies`` times. Every tool reads the file with pydicom, de-identifies
the data set and writes it to memory, so the figures compare the work, not the disk:

  (a) pacsguard: the full basic profile (Table E.1-1 over every attribute and sequence item, keyed
      pseudonyms, method attributes), OCR off, written by its own writer (pacsguard.deid.encode,
      what ``pacsguard deid`` and the route write with: kept elements copied as read);
  (b) dicognito: ``Anonymizer().anonymize(ds)`` with its defaults;
  (c) deid: ``replace_identifiers`` with its default recipe;
  (b) and (c) written by pydicom's ``dcmwrite``, as those tools do;
  (d) pacsguard with clean-pixel-data (OCR) on one secondary capture, separately: OCR is per image.

Figures under load are noisy; re-measure on a quiet machine (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

# This file is named like the deid package it measures: import that, not this file.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import pydicom.data  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.filewriter import dcmwrite  # noqa: E402

from pacsguard.deid.build import make_engine  # noqa: E402
from pacsguard.deid.encode import encode_file  # noqa: E402
from pacsguard.deid.engine import Withheld  # noqa: E402
from pacsguard.deid.keys import DeidKey  # noqa: E402
from pacsguard.deid.profile import Option  # noqa: E402

CORPUS = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm", "test-SR.dcm",
          "MR_small_implicit.dcm", "MR_small_bigendian.dcm")


def _corpus(copies: int) -> list[bytes]:
    root = Path(os.path.dirname(pydicom.data.__file__)) / "test_files"
    return [(root / name).read_bytes() for name in CORPUS] * copies


def _pydicom_write(ds: Dataset) -> None:
    dcmwrite(io.BytesIO(), ds)  # deid drops file meta elements: no tool is held to PS3.10 here


def _run(label: str, corpus: list[bytes], work: Callable[[Dataset], None],
         write: Callable[[Dataset], object] = _pydicom_write) -> float:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for data in corpus:
            ds = dcmread(io.BytesIO(data))
            work(ds)
            write(ds)
    rate = len(corpus) / (time.perf_counter() - start)
    print(f"{label:<34} {rate:9.1f} files/s")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=20)
    args = parser.parse_args()
    corpus = _corpus(args.copies)
    engine = make_engine(DeidKey(os.urandom(32)), [])
    ours = _run("pacsguard (basic profile)", corpus, lambda ds: engine.deidentify(ds), encode_file)

    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer()
    theirs = _run("dicognito", corpus, anonymizer.anonymize)

    from deid.config import DeidRecipe
    from deid.dicom.parser import DicomParser

    recipe = DeidRecipe()

    def with_deid(ds: Dataset) -> None:
        parser = DicomParser(ds, recipe=recipe)
        parser.parse(strip_sequences=False, remove_private=True)

    deid_rate = _run("deid (default recipe)", corpus, with_deid)
    print(f"pacsguard / dicognito: {ours / theirs:.2f}x   pacsguard / deid: {ours / deid_rate:.2f}x")

    ocr = make_engine(DeidKey(os.urandom(32)), [Option.CLEAN_PIXEL_DATA])
    sc = Path(os.path.dirname(pydicom.data.__file__)) / "test_files" / "SC_rgb_small_odd.dcm"

    def with_ocr(ds: Dataset) -> None:
        try:
            ocr.deidentify(ds)
        except Withheld:
            pass

    _run("pacsguard clean-pixel-data (OCR)", [sc.read_bytes()] * 5, with_ocr)


if __name__ == "__main__":
    main()
