"""DemoPACS, the embedded demo upstream, driven by dcmtk (the real modality/workstation peer).

Every DICOM exchange below is dcmtk's echoscu/storescu/findscu/movescu/getscu talking to the
DemoPACS; C-MOVE sub-operations go to a dcmtk storescp. Objects are pydicom's own test files,
and what comes back must be the same dataset that went in.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file

from dicom_corpus import TEST_FILES, UNCOMPRESSED, read_dataset, send_in_own_syntax
from pacsguard.demo import DemoPACS
from peers.dcmtk import Dcmtk, StoreSCP

pytestmark = [
    pytest.mark.peers,
    pytest.mark.storescp_sink(write=True),
    # pydicom's own test files (and the crafted one below) hold UIDs pydicom's validator dislikes.
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI"),
]

AET = "DEMOPACS"
CALLING = "DEMOTEST"

@pytest.fixture(scope="module")
def sources() -> dict[str, Path]:
    """SOP Instance UID -> pydicom test file."""
    files = {}
    for name in TEST_FILES:
        path = Path(get_testdata_file(name))
        files[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    assert len(files) == len(TEST_FILES), "test files must have distinct SOP Instance UIDs"
    return files


@pytest.fixture
def pacs(tmp_path: Path, storescp_sink: StoreSCP) -> Iterator[DemoPACS]:
    """A DemoPACS on a free loopback port whose one move destination is the storescp sink."""
    server = DemoPACS(AET, "127.0.0.1", 0, tmp_path / "demo-storage", {storescp_sink.aet: storescp_sink[:2]})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def target(pacs: DemoPACS) -> list[str]:
    """dcmtk arguments that address the DemoPACS."""
    host, port = pacs.address
    return ["-aet", CALLING, "-aec", AET, host, str(port)]


def ok(result: object) -> None:
    """Assert a dcmtk run succeeded, showing its output if not."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"  # type: ignore[attr-defined]


@pytest.fixture
def stored(dcmtk: Dcmtk, pacs: DemoPACS, sources: dict[str, Path]) -> dict[str, Path]:
    """The DemoPACS after storescu sent it every test file, each in its own transfer syntax.

    ``-R`` proposes only the SOP classes of the files given (storescu's default list lacks some,
    e.g. Segmentation Storage). storescu proposes uncompressed syntaxes unless told which
    compressed one to offer, so the uncompressed files go in one association and each
    compressed file in its own, with the matching ``--propose-*`` option.
    """
    send_in_own_syntax(dcmtk, target(pacs), sources.values())
    assert pacs.instance_count == len(sources)
    return sources


def study_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def find(dcmtk: Dcmtk, pacs: DemoPACS, out: Path, *keys: str, model: str = "-S") -> list[Dataset]:
    """findscu with ``-X``: the responses as datasets, in arrival order."""
    out.mkdir()
    args = [model, *(a for k in keys for a in ("-k", k)), "-X", "-od", str(out)]
    ok(dcmtk.run("findscu", *args, *target(pacs), timeout=30))
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_echo(dcmtk: Dcmtk, pacs: DemoPACS) -> None:
    ok(dcmtk.run("echoscu", *target(pacs), timeout=30))


def test_wrong_called_aet_is_rejected(dcmtk: Dcmtk, pacs: DemoPACS) -> None:
    host, port = pacs.address
    result = dcmtk.run("echoscu", "-aet", CALLING, "-aec", "NOTDEMO", host, str(port), timeout=30)
    assert result.returncode != 0


def test_store_writes_part10_files_by_study(stored: dict[str, Path], pacs: DemoPACS) -> None:
    """Each object lands in <storage>/<StudyInstanceUID>/<SOPInstanceUID>.dcm, same dataset."""
    for sop_uid, source in stored.items():
        path = pacs.storage_dir / study_of(source) / f"{sop_uid}.dcm"
        assert path.is_file(), path
        assert read_dataset(path) == read_dataset(source)
        # Kept in the transfer syntax it was sent in: the demo never transcodes.
        assert dcmread(path).file_meta.TransferSyntaxUID == dcmread(source).file_meta.TransferSyntaxUID


def test_index_is_rebuilt_from_storage_at_start(stored: dict[str, Path], pacs: DemoPACS) -> None:
    again = DemoPACS("AGAIN", "127.0.0.1", 0, pacs.storage_dir, {})
    again.start()
    try:
        assert again.instance_count == len(stored)
    finally:
        again.stop()


def test_find_study_level(dcmtk: Dcmtk, pacs: DemoPACS, stored: dict[str, Path], tmp_path: Path) -> None:
    """Universal matching returns every study once, with the computed attributes filled in."""
    responses = find(
        dcmtk, pacs, tmp_path / "find",
        "QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID", "PatientName",
        "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
    )
    by_study = {str(r.StudyInstanceUID): r for r in responses}
    assert len(by_study) == len(responses)
    studies: dict[str, list[Path]] = {}
    for source in stored.values():
        studies.setdefault(study_of(source), []).append(source)
    assert set(by_study) == set(studies)
    for uid, files in studies.items():
        rsp = by_study[uid]
        first = dcmread(files[0], stop_before_pixels=True)
        assert rsp.QueryRetrieveLevel == "STUDY"
        assert rsp.PatientID == first.get("PatientID", "")
        assert int(rsp.NumberOfStudyRelatedInstances) == len(files)
        assert rsp.RetrieveAETitle == AET


def test_find_matching_rules(dcmtk: Dcmtk, pacs: DemoPACS, stored: dict[str, Path], tmp_path: Path) -> None:
    """Wildcards, exact UID match, UID lists, date ranges, and lower levels under a study."""
    ct = dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    mr = dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True)

    wild = find(dcmtk, pacs, tmp_path / "w", "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                f"PatientName={str(ct.PatientName)[:-2]}*")
    assert [str(r.StudyInstanceUID) for r in wild] == [ct.StudyInstanceUID]

    question = find(dcmtk, pacs, tmp_path / "q", "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                    f"PatientID={ct.PatientID[:-1]}?")
    assert [str(r.StudyInstanceUID) for r in question] == [ct.StudyInstanceUID]

    uids = find(dcmtk, pacs, tmp_path / "u", "QueryRetrieveLevel=STUDY",
                f"StudyInstanceUID={ct.StudyInstanceUID}\\{mr.StudyInstanceUID}")
    assert sorted(str(r.StudyInstanceUID) for r in uids) == sorted([ct.StudyInstanceUID, mr.StudyInstanceUID])

    prefix = find(dcmtk, pacs, tmp_path / "p", "QueryRetrieveLevel=STUDY",
                  f"StudyInstanceUID={ct.StudyInstanceUID[:-1]}")
    assert prefix == [], "UIDs match exactly, never by prefix"

    dated = find(dcmtk, pacs, tmp_path / "d", "QueryRetrieveLevel=STUDY", "StudyInstanceUID",
                 f"StudyDate={ct.StudyDate}-{ct.StudyDate}")
    assert ct.StudyInstanceUID in {str(r.StudyInstanceUID) for r in dated}
    assert {r.StudyDate for r in dated} == {ct.StudyDate}

    series = find(dcmtk, pacs, tmp_path / "s", "QueryRetrieveLevel=SERIES",
                  f"StudyInstanceUID={ct.StudyInstanceUID}", "SeriesInstanceUID", "Modality")
    assert [(str(r.SeriesInstanceUID), r.Modality) for r in series] == [(ct.SeriesInstanceUID, "CT")]

    images = find(dcmtk, pacs, tmp_path / "i", "QueryRetrieveLevel=IMAGE",
                  f"StudyInstanceUID={ct.StudyInstanceUID}", f"SeriesInstanceUID={ct.SeriesInstanceUID}",
                  "SOPInstanceUID")
    assert [str(r.SOPInstanceUID) for r in images] == [ct.SOPInstanceUID]

    patients = find(dcmtk, pacs, tmp_path / "pt", "QueryRetrieveLevel=PATIENT", f"PatientID={ct.PatientID}",
                    "PatientName", "NumberOfPatientRelatedStudies", model="-P")
    assert [(r.PatientID, str(r.PatientName)) for r in patients] == [(ct.PatientID, str(ct.PatientName))]
    assert int(patients[0].NumberOfPatientRelatedStudies) == 1


def test_find_study_root_refuses_patient_level(dcmtk: Dcmtk, pacs: DemoPACS, stored: dict[str, Path]) -> None:
    result = dcmtk.run("findscu", "-v", "-S", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID",
                       *target(pacs), timeout=30)
    # 0xA900, which dcmtk names "DataSetDoesNotMatchSOPClass".
    assert "DataSetDoesNotMatchSOPClass" in result.stdout + result.stderr, result.stdout + result.stderr


def test_move_sends_identical_objects_to_the_destination(
    dcmtk: Dcmtk, pacs: DemoPACS, stored: dict[str, Path], storescp_sink: StoreSCP
) -> None:
    """One C-MOVE naming every study (list-of-UID) delivers every object, unchanged, to storescp."""
    studies = sorted({study_of(p) for p in stored.values()})
    result = dcmtk.run(
        "movescu", "-v", "-S", "-aem", storescp_sink.aet,
        "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=" + "\\".join(studies),
        *target(pacs), timeout=60,
    )
    ok(result)
    received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in storescp_sink.output_dir.iterdir()}
    assert set(received) == set(stored), result.stdout
    for sop_uid, source in stored.items():
        assert read_dataset(received[sop_uid]) == read_dataset(source), source.name


def test_move_to_unknown_destination_fails(dcmtk: Dcmtk, pacs: DemoPACS, stored: dict[str, Path],
                                           storescp_sink: StoreSCP) -> None:
    ct_study = study_of(stored[next(iter(stored))])
    result = dcmtk.run("movescu", "-v", "-S", "-aem", "NOBODY", "-k", "QueryRetrieveLevel=STUDY",
                       "-k", f"StudyInstanceUID={ct_study}", *target(pacs), timeout=30)
    text = result.stdout + result.stderr
    assert "MoveDestinationUnknown" in text, text  # 0xA801
    assert list(storescp_sink.output_dir.iterdir()) == []


def test_move_refuses_a_wildcard_unique_key(dcmtk: Dcmtk, pacs: DemoPACS, stored: dict[str, Path],
                                            storescp_sink: StoreSCP) -> None:
    """StudyInstanceUID=* in a C-MOVE would mean "everything": refused (0xA900), nothing sent."""
    result = dcmtk.run("movescu", "-v", "-S", "-aem", storescp_sink.aet, "-k", "QueryRetrieveLevel=STUDY",
                       "-k", "StudyInstanceUID=*", *target(pacs), timeout=30)
    text = result.stdout + result.stderr
    assert "DataSetDoesNotMatchSOPClass" in text, text
    assert list(storescp_sink.output_dir.iterdir()) == []


def test_get_returns_identical_objects(dcmtk: Dcmtk, pacs: DemoPACS, stored: dict[str, Path], tmp_path: Path) -> None:
    """C-GET of the uncompressed studies (getscu proposes uncompressed storage contexts only)."""
    wanted = {
        uid: p for uid, p in stored.items()
        if dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID in UNCOMPRESSED
    }
    studies = sorted({study_of(p) for p in wanted.values()})
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk.run(
        "getscu", "-v", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=" + "\\".join(studies),
        "-od", str(out), *target(pacs), timeout=60,
    )
    ok(result)
    received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in out.iterdir()}
    assert set(received) == set(wanted), result.stdout
    for sop_uid, source in wanted.items():
        assert read_dataset(received[sop_uid]) == read_dataset(source), source.name


def test_store_refuses_uids_that_would_escape_storage(dcmtk: Dcmtk, pacs: DemoPACS, tmp_path: Path) -> None:
    """A StudyInstanceUID such as '../..' never becomes a path: the C-STORE fails, nothing is written."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = "../../escaped"
    evil = tmp_path / "evil.dcm"
    ds.save_as(evil)
    result = dcmtk.run("storescu", "-v", *target(pacs), evil, timeout=30)
    assert result.returncode != 0
    assert "CannotUnderstand" in result.stdout + result.stderr, result.stdout + result.stderr  # 0xC000
    assert pacs.instance_count == 0
    assert not (tmp_path / "escaped").exists()
    assert [p for p in pacs.storage_dir.rglob("*") if p.is_file()] == []


def test_seeded_storage_answers_queries_for_the_demo_patients(tmp_path: Path) -> None:
    from pacsguard.demo.seed import SEEDS, seed_storage

    written = seed_storage(tmp_path / "demo-pacs")
    assert len(written) == len(SEEDS) and all(p.is_file() for p in written)
    pacs = DemoPACS("DEMOPACS", "127.0.0.1", 0, tmp_path / "demo-pacs")
    pacs.start()
    try:
        assert pacs.instance_count == len(SEEDS)
        query = Dataset()
        query.PatientID = "DEMO001"
        query.StudyDescription = ""
        found = list(pacs.find(query, "STUDY"))
        assert [(str(d.PatientID), str(d.StudyDescription)) for d in found] == [("DEMO001", "Demo CT")]
    finally:
        pacs.stop()
    # Fresh UIDs: the seeded CT never collides with pydicom's CT_small.dcm stored through the gateway.
    assert dcmread(get_testdata_file("CT_small.dcm")).SOPInstanceUID not in {p.stem for p in written}
