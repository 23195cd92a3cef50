"""Round 5 (issue 20 tester's report) fixes in the file and route side of de-identification:

- the route's Event holds no re-identification table in clear: the link is sealed under the
  key, opened by `pacsguard deid reidentify` with the key only;
- clean-pixel-data with ``pixels.ocr: false`` and no region mask for the device withholds;
- an overlay embedded in Pixel Data's unused high bits (PS3.5 8.1.2) is removed, bits and group;
- two inputs with one SOP Instance UID never overwrite each other in the output folder;
- masking a single-bit image (Bits Allocated 1) writes packed bits of the right length;
- `pacsguard deid` takes the ``deid:`` section of pacsguard.yaml (key, options, region masks);
- HL7 PV1-5 and PV1-50 are keyed like PV1-19;
- a deid key that cannot be loaded is a configuration error for ``serve``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from deid_helpers import KEY, OTHER_KEY, engine, image, pydicom_files
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

from pacsguard.deid import object_check
from pacsguard.deid.build import make_engine
from pacsguard.deid.config import DeidConfig
from pacsguard.deid.files import deidentify_file, read_whole
from pacsguard.deid.keys import KeyProblem
from pacsguard.deid.object_check import DeidentifyCheck, make_check
from pacsguard.deid.profile import Option
from pacsguard.deid.pseudonym import Pseudonyms
from pacsguard.gateway.objects import ObjectAction, ReceivedObject

US = "1.2.840.10008.5.1.4.1.1.6.1"
SINGLE_BIT_SC = "1.2.840.10008.5.1.4.1.1.7.1"


def _pacsguard(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
               stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsguard.cli", *args], capture_output=True, text=True,
                          timeout=240, cwd=cwd, env={**os.environ, "COLUMNS": "200", **(env or {})}, input=stdin)


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


# -- 1. the route's Event: no re-identification table in clear --------------------------------


def _inspect(path: Path, check: DeidentifyCheck) -> object:
    ds = read_whole(path)
    return check.inspect(ReceivedObject(path, ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID,
                                        "MODALITY", "GATEWAY", "127.0.0.1", "research"))


def _routed_event(tmp_path: Path, patient_id: str = "MRN-0047731") -> tuple[Dataset, object]:
    source = tmp_path / "spooled.dcm"
    ds = read_whole(next(p for p in pydicom_files() if p.name == "CT_small.dcm"))
    ds.PatientID, ds.PatientName = patient_id, "Doe^Jane"
    ds.SOPInstanceUID = generate_uid()
    _save(ds, source)
    verdict = _inspect(source, DeidentifyCheck(engine(), KEY))
    assert verdict.action is ObjectAction.FORWARD  # type: ignore[attr-defined]
    (event,) = verdict.events  # type: ignore[attr-defined]
    return ds, event


def test_the_deidentified_event_links_nothing_in_clear(tmp_path: Path) -> None:
    original, event = _routed_event(tmp_path)
    text = event.to_json()  # type: ignore[attr-defined]
    for value in (original.PatientID, original.StudyInstanceUID, original.SeriesInstanceUID,
                  original.SOPInstanceUID, "Doe"):
        assert value not in text
    new = read_whole(tmp_path / "spooled.dcm.deid")
    for value in (new.PatientID, new.StudyInstanceUID, new.SeriesInstanceUID, new.SOPInstanceUID):
        assert value not in text  # the gateway's Events name the original patient: a pseudonym here would link
    assert event.patient_ids == () and event.study_uids == ()  # type: ignore[attr-defined]
    assert event.details["key_fingerprint"] == KEY.fingerprint  # type: ignore[attr-defined]
    assert KEY.secret.hex() not in text


def test_the_key_and_only_the_key_opens_the_link(tmp_path: Path) -> None:
    original, event = _routed_event(tmp_path)
    details = dict(event.details)  # type: ignore[attr-defined]
    new = read_whole(tmp_path / "spooled.dcm.deid")
    opened, pseudonyms = object_check.open_link(KEY, details)
    assert opened == {"patient_id": original.PatientID, "study_uid": original.StudyInstanceUID,
                      "series_uid": original.SeriesInstanceUID, "sop_instance_uid": original.SOPInstanceUID}
    assert pseudonyms == {"patient_id": new.PatientID, "study_uid": new.StudyInstanceUID,
                          "series_uid": new.SeriesInstanceUID, "sop_instance_uid": new.SOPInstanceUID}
    with pytest.raises(KeyProblem):
        object_check.open_link(OTHER_KEY, details)
    forged_original, forged_new = object_check.seal_link(OTHER_KEY, "research", {"patient_id": "X"}, {})
    with pytest.raises(KeyProblem):  # our fingerprint claimed, sealed under another key
        object_check.open_link(KEY, {**details, "original": forged_original, "new": forged_new})
    (tmp_path / "second").mkdir()
    _, other_event = _routed_event(tmp_path / "second", "MRN-OTHER")
    with pytest.raises(KeyProblem):  # an original moved onto another object's record
        object_check.open_link(KEY, {**details, "new": other_event.details["new"]})  # type: ignore[attr-defined]
    with pytest.raises(KeyProblem):  # another route's record
        object_check.open_link(KEY, {**details, "route": "elsewhere"})


def test_reidentify_opens_exported_events_with_the_key(tmp_path: Path) -> None:
    original, event = _routed_event(tmp_path)
    (tmp_path / "second").mkdir()
    _, other = _routed_event(tmp_path / "second", "MRN-OTHER")
    events = tmp_path / "events.jsonl"
    events.write_text(event.to_json() + "\n" + other.to_json() + "\n")  # type: ignore[attr-defined]
    (tmp_path / "deid.key").write_text(KEY.secret.hex() + "\n")
    new_uid = read_whole(tmp_path / "spooled.dcm.deid").SOPInstanceUID
    found = _pacsguard("deid", "reidentify", str(events), "--key-file", str(tmp_path / "deid.key"),
                       "--find", new_uid, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    (line,) = found.stdout.splitlines()
    record = json.loads(line)
    assert record["original"]["patient_id"] == original.PatientID
    assert record["new"]["sop_instance_uid"] == new_uid
    by_original = _pacsguard("deid", "reidentify", "-", "--key-file", str(tmp_path / "deid.key"),
                             "--find", "MRN-OTHER", cwd=tmp_path, stdin=events.read_text())
    assert by_original.returncode == 0 and json.loads(by_original.stdout)["original"]["patient_id"] == "MRN-OTHER"
    (tmp_path / "other.key").write_text(OTHER_KEY.secret.hex() + "\n")
    refused = _pacsguard("deid", "reidentify", str(events), "--key-file", str(tmp_path / "other.key"), cwd=tmp_path)
    assert refused.returncode == 0 and refused.stdout == "" and "another key" in refused.stderr
    assert original.PatientID not in refused.stdout + refused.stderr


# -- 2. OCR off: nothing checked, nothing forwarded ---------------------------------------------


def _text_ultrasound() -> Dataset:
    pixels = np.full((64, 128), 40, np.uint8)
    pixels[2:14, 2:60] = 200  # stands for burned-in text
    return image(US, pixels, modality="US", BurnedInAnnotation="YES", Manufacturer="ACME")


def test_ocr_off_without_a_region_mask_withholds(tmp_path: Path) -> None:
    config = DeidConfig(options=[Option.CLEAN_PIXEL_DATA], pixels={"ocr": False})
    eng = make_engine(KEY, config.options, config)
    result = deidentify_file(eng, _save(_text_ultrasound(), tmp_path / "in.dcm"), tmp_path / "out.dcm")
    assert result.output is None and "pixels.ocr is off" in result.withheld
    assert not (tmp_path / "out.dcm").exists()


def test_ocr_off_with_the_devices_region_mask_masks_it(tmp_path: Path) -> None:
    config = DeidConfig(options=[Option.CLEAN_PIXEL_DATA],
                        pixels={"ocr": False, "region_masks": [{"manufacturer": "ACME", "boxes": [[0, 0, 64, 16]]}]})
    eng = make_engine(KEY, config.options, config)
    result = deidentify_file(eng, _save(_text_ultrasound(), tmp_path / "in.dcm"), tmp_path / "out.dcm")
    assert result.output is not None and result.report.pixels.startswith("masked")
    out = dcmread(result.output)
    assert out.pixel_array[0:16, 0:64].max() == 40 and out.BurnedInAnnotation == "NO"


# -- 3. overlays embedded in the pixel data ----------------------------------------------------


def _embedded_overlay_ct(position: int = 12, syntax: str = ExplicitVRLittleEndian) -> tuple[Dataset, np.ndarray]:
    rng = np.random.default_rng(1)
    stored = rng.integers(900, 1100, (32, 48)).astype(np.uint16)
    plane = np.zeros((32, 48), np.uint16)
    plane[4:12, 4:40] = 1  # stands for the patient's name drawn in the overlay plane
    ds = image(CTImageStorage, stored | (plane << position), modality="CT", bits=16, stored=12, syntax=syntax,
                BurnedInAnnotation="NO")
    for element, vr, value in ((0x0010, "US", 32), (0x0011, "US", 48), (0x0040, "CS", "G"),
                               (0x0050, "SS", [1, 1]), (0x0100, "US", 16), (0x0102, "US", position),
                               (0x0022, "LO", "Quixote name plate")):
        ds.add_new(0x60000000 | element, vr, value)
    return ds, stored


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize("options", [(), ("clean-graphics",)])
def test_an_embedded_overlay_goes_with_its_bit_plane(options: tuple[str, ...], syntax: str, tmp_path: Path) -> None:
    ds, stored = _embedded_overlay_ct(syntax=syntax)
    result = deidentify_file(engine(*options), _save(ds, tmp_path / "in.dcm"), tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    out = dcmread(result.output)
    assert not any(t.group == 0x6000 for t in out.keys())
    raw = np.frombuffer(out.PixelData, ">u2" if syntax == ExplicitVRBigEndian else "<u2").reshape(32, 48)
    assert np.array_equal(raw, stored)  # the overlay bit is gone, every stored bit is as it was
    assert "overlay group 6000" in result.report.pixels


def test_an_overlay_in_the_stored_bits_is_withheld(tmp_path: Path) -> None:
    ds, _ = _embedded_overlay_ct(position=12)
    ds.BitsStored, ds.HighBit = 16, 15  # bit 12 now carries the image itself
    result = deidentify_file(engine(), _save(ds, tmp_path / "in.dcm"), tmp_path / "out.dcm")
    assert result.output is None and "stored bits" in result.withheld


# -- 4. one SOP Instance UID, two inputs --------------------------------------------------------


def test_an_output_never_overwrites_another_objects_file(tmp_path: Path) -> None:
    ct = next(p for p in pydicom_files() if p.name == "CT_small.dcm")
    inputs = []
    for i, (name, pid) in enumerate((("Alpha^Ann", "P1"), ("Beta^Bob", "P2"))):
        ds = read_whole(ct)  # the same SOP Instance UID in both
        ds.PatientName, ds.PatientID = name, pid
        inputs.append(_save(ds, tmp_path / f"{i}.dcm"))
    out = tmp_path / "out"
    first = deidentify_file(engine(), inputs[0], out, into_folder=True)
    second = deidentify_file(engine(), inputs[1], out, into_folder=True)
    assert first.output is not None and second.output is None
    assert "already holds another object" in second.withheld
    assert dcmread(first.output).PatientID == Pseudonyms(KEY.secret).patient_id("P1")  # still the first's
    assert [p.name for p in out.iterdir()] == [first.output.name]  # no temporary file left
    again = deidentify_file(engine(), inputs[0], out, into_folder=True)
    assert again.output == first.output  # the same object again (a re-run) is no collision


def test_the_cli_reports_the_collision_and_exits_1(tmp_path: Path) -> None:
    ct = next(p for p in pydicom_files() if p.name == "CT_small.dcm")
    (tmp_path / "in").mkdir()
    for i in range(2):
        ds = read_whole(ct)
        ds.PatientID = f"P{i}"
        _save(ds, tmp_path / "in" / f"{i}.dcm")
    (tmp_path / "deid.key").write_text(KEY.secret.hex() + "\n")
    run = _pacsguard("deid", "in", "--out", "out", "--key-file", "deid.key", cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    records = json.loads((tmp_path / "out.manifest.json").read_text())  # beside out/, not in it
    assert sorted(r["status"] for r in records) == ["withheld", "written"]
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 1 and not (tmp_path / "out" / "manifest.json").exists()


# -- 5. single-bit images -----------------------------------------------------------------------


def test_masking_a_single_bit_image_keeps_it_packed(tmp_path: Path) -> None:
    frame = np.zeros((40, 80), np.uint8)
    frame[2:12, 2:30] = 1  # masked by the region mask
    frame[30:38, 60:78] = 1  # outside it: must survive
    ds = image(SINGLE_BIT_SC, np.stack([frame, frame]), modality="OT", bits=1, NumberOfFrames=2,
                Manufacturer="ACME")
    config = DeidConfig(options=[Option.CLEAN_PIXEL_DATA],
                        pixels={"ocr": False, "region_masks": [{"manufacturer": "ACME", "boxes": [[0, 0, 40, 16]]}]})
    result = deidentify_file(make_engine(KEY, config.options, config), _save(ds, tmp_path / "in.dcm"),
                             tmp_path / "out.dcm")
    assert result.output is not None, result.withheld
    out = dcmread(result.output)
    assert len(out.PixelData) == (40 * 80 * 2 + 7) // 8
    frames = out.pixel_array
    assert frames.shape == (2, 40, 80)
    assert frames[:, 0:16, 0:40].max() == 0 and np.array_equal(frames[:, 30:38, 60:78], frame[None, 30:38, 60:78]
                                                               .repeat(2, axis=0))


# -- 6. the CLI takes the deid: section ---------------------------------------------------------


def test_the_cli_uses_the_deid_section_of_pacsguard_yaml(tmp_path: Path) -> None:
    (tmp_path / "deid.key").write_text(KEY.secret.hex() + "\n")
    (tmp_path / "pacsguard.yaml").write_text(
        "deid:\n  key_file: deid.key\n  options: [clean-pixel-data]\n  pixels:\n    ocr: false\n"
        "    region_masks:\n    - {manufacturer: ACME, boxes: [[0, 0, 64, 16]]}\n")
    _save(_text_ultrasound(), tmp_path / "in.dcm")
    run = _pacsguard("deid", "in.dcm", "--out", "out", cwd=tmp_path)  # no --key-file, no --option
    assert run.returncode == 0, run.stderr
    assert KEY.fingerprint in run.stderr
    (written,) = (tmp_path / "out").glob("*.dcm")
    assert dcmread(written).pixel_array[0:16, 0:64].max() == 40
    record = json.loads((tmp_path / "out.manifest.json").read_text())[0]
    assert record["options"] == "clean-pixel-data" and record["pixels"].startswith("masked")
    # --option takes the place of the section's options: without clean-pixel-data an US is withheld.
    run = _pacsguard("deid", "in.dcm", "--out", "o2", "--option", "retain-uids", cwd=tmp_path)
    assert run.returncode == 1 and "clean-pixel-data" in run.stderr
    explained = _pacsguard("deid", "explain", "in.dcm", cwd=tmp_path)
    assert explained.returncode == 0 and "would be checked" in explained.stdout


def test_a_broken_config_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "pacsguard.yaml").write_text("deid:\n  options: [no-such-option]\n")
    run = _pacsguard("deid", "x.dcm", "--out", "out", cwd=tmp_path, env={"PACSGUARD_DEID_KEY": KEY.secret.hex()})
    assert run.returncode == 2 and "deid.options" in run.stderr


# -- 7. HL7 PV1 visit identifiers ---------------------------------------------------------------


def test_pv1_preadmit_and_alternate_visit_ids_are_keyed() -> None:
    from pacsguard.deid.hl7 import deidentify_message

    pv1 = ["PV1", "1", "I", "W^389^1", "", "PREADM5551^^^HOSP^PRE"] + [""] * 13 + ["VISIT7788^^^HOSP^VN"]
    pv1 += [""] * 30 + ["VISIT7788^^^HOSP^VN"]
    message = "\r".join(["MSH|^~\\&|ADT1|HOSP|LAB|HOSP|202003151200||ADT^A01|MSG1|P|2.5.1",
                         "PID|1||PID77341^^^HOSP^MR||Quixote^Zebulon", "|".join(pv1)]) + "\r"
    out = deidentify_message(message, Pseudonyms(KEY.secret))
    fields = next(s for s in out.split("\r") if s.startswith("PV1")).split("|")
    assert "PREADM5551" not in out and "VISIT7788" not in out
    assert fields[5] and fields[19] == fields[50]  # one visit identifier, one pseudonym, in any field


# -- 8. a deid key that cannot be loaded, at serve's start ----------------------------------------


@pytest.mark.parametrize("content", [None, "not hex\n"])
def test_a_bad_key_file_is_a_configuration_error(content: str | None, tmp_path: Path) -> None:
    from pacsguard.config.loader import ConfigError

    if content is not None:
        (tmp_path / "deid.key").write_text(content)
    ctx = SimpleNamespace(section=DeidConfig(key_file=Path("deid.key")), resolve=lambda p: tmp_path / p,
                          loaded=SimpleNamespace(path=tmp_path / "pacsguard.yaml"))
    with pytest.raises(ConfigError) as caught:
        make_check(ctx)  # type: ignore[arg-type]
    assert caught.value.source == str(tmp_path / "pacsguard.yaml")
    assert [p.key for p in caught.value.problems] == ["deid.key_file"]


def test_serve_exits_2_naming_the_key_file(tmp_path: Path) -> None:
    (tmp_path / "pacsguard.yaml").write_text(
        "store: {url: var/pacsguard.db}\ngateway:\n  routes:\n  - name: sf\n"
        "    listen: {host: 127.0.54.19, port: 11139, ae_title: PACSGUARD}\n"
        "    policy: {calling_ae_titles: [STORESCU], hosts: [127.0.0.0/8]}\n    mode: store-and-forward\n"
        "    destinations: [{name: d0, host: 127.0.54.20, port: 11140, ae_title: RECV}]\n"
        "    object_checks: [deidentify]\ndeid: {key_file: missing.key}\n")
    env = {"PACSGUARD_KEY_DIR": str(tmp_path / "keys")}
    assert _pacsguard("init", "--no-demo", cwd=tmp_path, env=env).returncode == 0
    served = _pacsguard("serve", cwd=tmp_path, env=env)
    assert served.returncode == 2, served.stderr
    assert "deid.key_file" in served.stderr and "missing.key" in served.stderr
    assert "internal error" not in served.stderr


# -- the what-if says the same ------------------------------------------------------------------


def test_explain_names_the_unchecked_pixels_and_the_embedded_overlay() -> None:
    from pacsguard.deid.explain import explain

    config = DeidConfig(options=[Option.CLEAN_PIXEL_DATA], pixels={"ocr": False})
    result = explain(make_engine(KEY, config.options, config), _text_ultrasound())
    assert "pixels.ocr is off" in result.withheld
    overlay, _ = _embedded_overlay_ct()
    result = explain(engine(), overlay)
    assert "overlay group 6000" in result.pixels and not result.withheld
    assert any(t.group == 0x6000 for t in overlay.keys())  # the what-if changes nothing
