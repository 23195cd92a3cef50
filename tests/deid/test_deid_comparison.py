"""pacsguard, dicognito and deid (PyPI) on the same data set holding every Table E.1-1 attribute
(top level and nested), in the same session, judged row by row against the reference table
(basic profile). The counts are the table "what each tool leaves behind" in docs/deid.md."""

from __future__ import annotations

import copy
from collections.abc import Callable

from annex_e_oracle import every_attribute, exact_tag, expected, reference_rows, satisfied, walk
from deid_helpers import engine
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

_BY_TAG = {t: r for r in reference_rows() if (t := exact_tag(r)) is not None}


def _unsatisfied(work: Callable[[Dataset], Dataset]) -> set[str]:
    before = every_attribute(nested=True)
    before.file_meta = FileMetaDataset()  # the tools expect a Part-10 file's meta information
    before.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    before.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    before.file_meta.MediaStorageSOPInstanceUID = before.SOPInstanceUID
    after = work(copy.deepcopy(before))
    got = dict(walk(after))
    items = {p.rsplit(".", 1)[0] for p in got if "." in p}
    missed = set()
    for path, elem in walk(before):
        row = _BY_TAG.get(int(elem.tag))
        if row is None or ("." in path and path.rsplit(".", 1)[0] not in items):
            continue
        if not satisfied(expected(row, None), elem, got.get(path)):
            missed.add(("nested " if "." in path else "") + row["tag"])
    return missed


def _pacsguard(ds: Dataset) -> Dataset:
    engine().deidentify(ds)
    return ds


def _dicognito(ds: Dataset) -> Dataset:
    from dicognito.anonymizer import Anonymizer

    Anonymizer().anonymize(ds)
    return ds


def _deid(ds: Dataset) -> Dataset:
    from deid.config import DeidRecipe
    from deid.dicom.parser import DicomParser

    fds = FileDataset("in.dcm", ds, file_meta=ds.file_meta, preamble=b"\0" * 128)  # deid wants a file's data set
    parser = DicomParser(fds, recipe=DeidRecipe())
    parser.parse(strip_sequences=False, remove_private=True)
    return parser.dicom


def test_what_each_tool_leaves_behind() -> None:
    counts = {name: len(_unsatisfied(fn)) for name, fn in
              (("pacsguard", _pacsguard), ("dicognito", _dicognito), ("deid", _deid))}
    print("rows (top level + nested) not satisfied:", counts)
    assert counts["pacsguard"] == 0
    assert counts["pacsguard"] < counts["dicognito"]
    assert counts["pacsguard"] < counts["deid"]
