"""The demo PACS's first objects, so that C-FIND, C-MOVE and C-GET through the demo gateway return
something before anything was stored (README, quick start).

Each seed is one of pydicom's bundled test images re-labelled as a documented demo patient, with
new UIDs derived from its name (PS3.5 9: org root 2.25 from pydicom), so that they never collide
with the same test image stored through the gateway. Files are written as the storage SCP writes
them: PS3.10 files at ``<storage>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pacsguard.owner_only import make_private_dir

__all__ = ["SEEDS", "Seed", "seed_storage"]


@dataclass(frozen=True, slots=True)
class Seed:
    """One demo object: the pydicom test file it is made from and the patient it is filed under."""

    source: str
    patient_id: str
    patient_name: str
    study_description: str


#: The demo patients (documented in the README's quick start).
SEEDS: tuple[Seed, ...] = (
    Seed("CT_small.dcm", "DEMO001", "DEMO^ONE", "Demo CT"),
    Seed("MR_small.dcm", "DEMO002", "DEMO^TWO", "Demo MR"),
)


def seed_storage(storage: Path, seeds: tuple[Seed, ...] = SEEDS) -> list[Path]:
    """Write the seed objects into ``storage`` and return their paths; the caller decides when (the
    demo service does it only when the storage folder does not exist yet: the first start)."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    written: list[Path] = []
    for seed in seeds:
        source = get_testdata_file(seed.source)
        if source is None:
            raise LookupError(f"pydicom's test file {seed.source} is not installed")
        ds = dcmread(source)
        ds.PatientID, ds.PatientName, ds.StudyDescription = seed.patient_id, seed.patient_name, seed.study_description
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, keyword, generate_uid(entropy_srcs=["pacsguard demo", seed.patient_id, keyword]))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = storage / str(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
        make_private_dir(path.parent)  # 0700 and the objects 0600 (docs/store.md), whatever the umask
        ds.save_as(path, enforce_file_format=True)
        os.chmod(path, 0o600)
        written.append(path)
    return written
