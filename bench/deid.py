"""Benchmark de-identification: files/s for pacsguard, dicognito and deid (PyPI) on the same corpus
in the same run, one core, one process, with ratios.

    .venv/bin/python bench/deid.py [--copies 20] [--rounds 3]

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

Each tool is warmed on one pass over the distinct files, then timed in ``--rounds`` rounds in which
the tools take turns; its best round is reported. Figures under load are noisy; re-measure on a
quiet machine (docs/PERFORMANCE.md).
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


Tool = tuple[str, Callable[[Dataset], None], Callable[[Dataset], object]]


def _warm(corpus: list[bytes], tool: Tool) -> None:
    """One untimed pass over each distinct file, for every tool alike: imports, caches and lazily
    built tables are not per-file costs."""
    for data in dict.fromkeys(corpus):
        _one(data, tool[1], tool[2])


def _rate(corpus: list[bytes], tool: Tool) -> float:
    start = time.perf_counter()
    for data in corpus:
        _one(data, tool[1], tool[2])
    return len(corpus) / (time.perf_counter() - start)


def _compare(corpus: list[bytes], tools: list[Tool], rounds: int) -> dict[str, float]:
    """Each tool's best rate over ``rounds`` rounds; within a round the tools take turns, so a
    change in the machine's load falls on all of them rather than on whichever ran then."""
    best = {name: 0.0 for name, _, _ in tools}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tool in tools:
            _warm(corpus, tool)
        for _ in range(rounds):
            for tool in tools:
                best[tool[0]] = max(best[tool[0]], _rate(corpus, tool))
    for name, rate in best.items():
        print(f"{name:<34} {rate:9.1f} files/s")
    return best


def _one(data: bytes, work: Callable[[Dataset], None], write: Callable[[Dataset], object]) -> None:
    ds = dcmread(io.BytesIO(data))
    work(ds)
    write(ds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the tools taking turns; best of each")
    args = parser.parse_args()
    corpus = _corpus(args.copies)
    engine = make_engine(DeidKey(os.urandom(32)), [])

    from deid.config import DeidRecipe
    from deid.dicom.parser import DicomParser
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer()
    recipe = DeidRecipe()

    def with_deid(ds: Dataset) -> None:
        parser = DicomParser(ds, recipe=recipe)
        parser.parse(strip_sequences=False, remove_private=True)

    ours, theirs, deid_name = "pacsguard (basic profile)", "dicognito", "deid (default recipe)"
    best = _compare(corpus, [(ours, engine.deidentify, encode_file), (theirs, anonymizer.anonymize, _pydicom_write),
                             (deid_name, with_deid, _pydicom_write)], args.rounds)
    print(f"pacsguard / dicognito: {best[ours] / best[theirs]:.2f}x   "
          f"pacsguard / deid: {best[ours] / best[deid_name]:.2f}x")

    ocr = make_engine(DeidKey(os.urandom(32)), [Option.CLEAN_PIXEL_DATA])
    sc = Path(os.path.dirname(pydicom.data.__file__)) / "test_files" / "SC_rgb_small_odd.dcm"

    def with_ocr(ds: Dataset) -> None:
        try:
            ocr.deidentify(ds)
        except Withheld:
            pass

    _compare([sc.read_bytes()] * 5, [("pacsguard clean-pixel-data (OCR)", with_ocr, encode_file)], 1)


if __name__ == "__main__":
    main()
