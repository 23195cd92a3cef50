"""Store-and-forward without peers: the route's configuration, and the spool's crash consistency
(what a rescan after SIGKILL finds in each state a crash can leave)."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pacsguard.config.loader import ConfigError, parse_config
from pacsguard.gateway.objects import ReceivedObject
from pacsguard.gateway.store_forward.spool import Spool, SpooledMeta, SpoolFull

HERE = Path(__file__).parent

SF = """
gateway:
  routes:
  - name: sf
    mode: store-and-forward
    listen: {port: 11200, ae_title: GW}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return [str(p) for p in info.value.problems]


def test_destinations_default_to_the_upstream_and_the_upstream_to_the_first_destination() -> None:
    one = parse_config(SF + "    upstream: {host: 10.0.0.5, port: 104, ae_title: PACS}\n").gateway.routes[0]
    assert [(d.host, d.port, d.ae_title, d.key) for d in one.destinations] == [("10.0.0.5", 104, "PACS",
                                                                                 "PACS-10.0.0.5-104")]
    two = parse_config(SF + "    destinations:\n    - {name: main, host: 10.0.0.5, port: 104, ae_title: PACS}\n"
                            "    - {name: vna, host: 10.0.0.6, port: 11112, ae_title: VNA}\n").gateway.routes[0]
    assert (two.upstream.host, two.upstream.ae_title) == ("10.0.0.5", "PACS")
    assert [d.key for d in two.destinations] == ["main", "vna"]
    assert two.spool.min_free_mib == 512 and two.retry.initial_delay == 1.0


def test_the_first_destination_may_have_every_destination_key() -> None:
    """verify_resend and name on the first destination (which also makes the upstream) were
    refused as "gateway.routes.0.upstream.verify_resend: unknown key"."""
    route = parse_config(SF + "    destinations: [{name: pacs, host: 10.0.0.5, port: 104, ae_title: PACS, "
                              "verify_resend: never}]\n").gateway.routes[0]
    assert route.destinations[0].verify_resend == "never" and route.destinations[0].key == "pacs"
    assert (route.upstream.host, route.upstream.port, route.upstream.ae_title) == ("10.0.0.5", 104, "PACS")


def test_route_mode_errors_name_their_key() -> None:
    unknown = problems(SF + "    upstream: {host: h, port: 104, ae_title: P}\n    object_checks: [antivirus]\n")
    assert unknown[0].startswith("gateway.routes.0.object_checks:") and "'antivirus'" in unknown[0]
    relay = problems(SF.replace("mode: store-and-forward", "mode: relay")
                     + "    upstream: {host: h, port: 104, ae_title: P}\n"
                       "    destinations: [{host: h, port: 104, ae_title: P}]\n")
    assert "destinations is for store-and-forward routes" in relay[0]
    sender = problems(SF.replace("mode: store-and-forward", "mode: relay")
                      + "    upstream: {host: h, port: 104, ae_title: P}\n    quarantine_sender: true\n")
    assert "quarantine_sender is for store-and-forward routes" in sender[0]
    twice = problems(SF + "    destinations: [{host: h, port: 104, ae_title: P}, {host: h, port: 104, ae_title: P}]\n")
    assert "destinations[1]" in twice[0]
    # A store-and-forward route terminates TLS itself, as a relayed route does (issue #19).
    tls = parse_config(SF.replace("ae_title: GW}", "ae_title: GW, tls: {cert_file: c.pem, key_file: k.pem}}")
                       + "    upstream: {host: h, port: 104, ae_title: P}\n").gateway.routes[0]
    assert tls.listen.tls is not None and tls.listen.tls.cert_file.name == "c.pem"
    mode = problems(SF.replace("store-and-forward", "store-forward")
                    + "    upstream: {host: h, port: 104, ae_title: P}\n")
    assert mode[0].startswith("gateway.routes.0.mode:")


def test_a_check_a_registered_part_offers_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    from pacsguard.runtime import registry

    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setattr(registry, "PART_MODULES", (*registry.PART_MODULES, "saf_test_part"))
    route = parse_config(SF + "    upstream: {host: h, port: 104, ae_title: P}\n"
                              "    object_checks: [patient-gate]\n").gateway.routes[0]
    assert route.object_checks == ["patient-gate"]
    twice = problems(SF + "    upstream: {host: h, port: 104, ae_title: P}\n"
                          "    object_checks: [patient-gate, patient-gate]\n")
    assert "listed twice" in twice[0]
    sys.modules.pop("saf_test_part", None)


def meta(spool: Spool, destinations: list[str] | None = None) -> SpooledMeta:
    object_id = spool.new_id()
    obj = ReceivedObject(path=spool.object_path(object_id), sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                         sop_instance_uid="1.2.3.4", transfer_syntax_uid="1.2.840.10008.1.2.1", calling_ae="MOD",
                         called_ae="GW", peer_host="127.0.0.1", route="sf")
    return SpooledMeta(id=object_id, object=obj, received=0.0, bytes=4, destinations=destinations or ["a", "b"])


def test_a_committed_object_survives_a_rescan_and_a_half_received_one_does_not(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert spool.open() == []
    kept = meta(spool)
    spool.commit(spool.receive(kept.id, b"DICM"), kept)
    spool.receive("half", b"partial")  # killed before the checks finished: never acknowledged
    (spool.objects / "orphan.dcm").write_bytes(b"x")  # killed between the two renames of a commit
    (spool.objects / "orphan.a.sent").write_bytes(b"")
    spool.close()  # the process ends (a crash drops the lock too)
    again = Spool(tmp_path)
    assert again.open() == [kept]
    assert sorted(p.name for p in again.objects.iterdir()) == [f"{kept.id}.dcm", f"{kept.id}.json"]
    assert list(again.tmp.iterdir()) == []


def test_each_destination_is_marked_once_and_the_object_goes_when_all_have_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    m = meta(spool)
    spool.commit(spool.receive(m.id, b"DICM"), m)
    assert spool.mark_failed(m.id, "a", "status 0xA700") == 1
    assert spool.mark_failed(m.id, "a", "status 0xA700") == 2
    spool.mark_sent(m.id, "a")
    assert spool.sent_to(m.id) == ["a"] and not spool.finish_if_done(m)
    spool.close()
    restarted = Spool(tmp_path)
    assert restarted.open() == [m]  # after a restart only b is owed
    restarted.close()
    spool.open()
    entry = spool.find(m.id)
    assert entry is not None and entry.pending == ["b"] and entry.failures == {}
    spool.mark_sent(m.id, "b")
    assert spool.finish_if_done(m)
    assert list(spool.objects.iterdir()) == [] and spool.find(m.id) is None


def test_an_object_every_destination_has_is_finished_when_the_forwarding_process_restarts(
        tmp_path: Path) -> None:
    """A forwarding process killed between an object's last sent marker and its removal, and one
    killed after handing the file on but before removing the .json: the restart's reading of the
    spool finishes both, and leaves an object still owed alone."""
    spool = Spool(tmp_path)
    spool.open()
    done, half, owed = meta(spool), meta(spool), meta(spool)
    for m in (done, half, owed):
        spool.commit(spool.receive(m.id, b"DICM"), m)
        spool.mark_sent(m.id, "a")
    spool.mark_sent(done.id, "b")
    spool.mark_sent(half.id, "b")
    spool.object_path(half.id).unlink()  # its file already went to the pool
    assert spool.waiting() == [owed]
    assert sorted(p.name for p in spool.objects.iterdir()) == sorted(
        [f"{owed.id}.dcm", f"{owed.id}.json", f"{owed.id}.a.sent"])
    spool.close()


def test_a_crash_while_an_object_is_finished_never_leaves_a_file_no_one_owns(tmp_path: Path) -> None:
    """The .dcm goes before the .json: a crash between the two leaves the .json and its markers,
    which a restart finishes, never a .dcm that no .json accounts for."""
    spool = Spool(tmp_path)
    spool.open()
    m = meta(spool, ["a"])
    spool.commit(spool.receive(m.id, b"DICM"), m)
    spool.mark_sent(m.id, "a")
    order: list[str] = []

    def spend_then_crash(path: Path) -> bool:
        order.append(path.suffix)
        assert (spool.objects / f"{m.id}.json").exists()
        path.unlink()
        raise KeyboardInterrupt  # stands for the process dying here

    spool.spend = spend_then_crash
    with pytest.raises(KeyboardInterrupt):
        spool.finish_if_done(m)
    assert order == [".dcm"]
    spool.close()
    again = Spool(tmp_path)
    assert again.open() == [] and list(again.objects.iterdir()) == []
    again.close()


def test_retention_keep_moves_what_was_sent(tmp_path: Path) -> None:
    spool = Spool(tmp_path, retention="keep")
    spool.open()
    m = meta(spool, ["a"])
    spool.commit(spool.receive(m.id, b"DICM"), m)
    spool.mark_sent(m.id, "a")
    assert spool.finish_if_done(m)
    entry = spool.find(m.id)
    assert entry is not None and entry.state == "sent" and entry.path.read_bytes() == b"DICM"
    spool.purge(entry)
    assert spool.find(m.id) is None


def test_quarantine_keeps_the_object_with_its_manifest(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    m = meta(spool)
    where = spool.quarantine(spool.receive(m.id, b"EVIL"), m.id, {"object": m.to_json(), "reason": "test"})
    assert where.read_bytes() == b"EVIL"
    entry = spool.find(m.id)
    assert entry is not None and entry.state == "quarantined" and entry.manifest is not None
    assert entry.manifest["reason"] == "test" and entry.meta == replace(m, object=replace(m.object, path=where))
    spool.close()
    assert Spool(tmp_path).open() == []  # nothing of it is forwarded


def test_the_free_space_floor_refuses_before_writing(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    free_mib = st.f_bavail * st.f_frsize / 2**20
    spool = Spool(tmp_path, min_free_mib=free_mib - 1)
    spool.open()
    spool.reserve(1024)
    with pytest.raises(SpoolFull, match="spool.min_free_mib"):
        spool.reserve(2 * 2**20)
    spool.reserve(2**19)  # objects still arriving count against the floor
    with pytest.raises(SpoolFull):
        spool.reserve(2**19)
    spool.release(2**19)
    spool.reserve(2**19)


def test_one_gateway_per_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.open()
    with pytest.raises(OSError, match="in use by another gateway"):
        Spool(tmp_path).open()  # flock is per open file description: a second one in this process is refused too
    first.close()
    Spool(tmp_path).open()


def test_an_attempt_without_an_answer_leaves_the_object_in_doubt_until_an_answer(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    m = meta(spool)
    spool.commit(spool.receive(m.id, b"DICM"), m)
    assert spool.in_doubt(m.id, ["a", "b"]) == []
    spool.mark_sending(m.id, "a")
    spool.mark_sending(m.id, "b")
    spool.close()  # a crash before either answer was written
    again = Spool(tmp_path)
    assert again.open() == [m]
    assert again.in_doubt(m.id, ["a", "b"]) == ["a", "b"]
    (entry,) = again.entries()  # what `pacsguard gateway spool list` shows
    assert entry.in_doubt == ["a", "b"] and entry.as_dict()["in_doubt"] == ["a", "b"]
    from pacsguard.cli.spool import _waiting

    assert [_waiting(entry, d) for d in entry.pending] == ["a (in doubt)", "b (in doubt)"]
    again.mark_sent(m.id, "a")  # Success, or a C-FIND found it
    again.mark_failed(m.id, "b", "status 0xA700")  # a failure status: the destination did not store it
    assert again.in_doubt(m.id, ["a", "b"]) == [] and not list(again.objects.glob("*.sending"))
    again.mark_sending(m.id, "b")
    again.mark_sent(m.id, "b")
    assert again.finish_if_done(m) and list(again.objects.iterdir()) == []


def test_a_batch_is_marked_with_one_folder_fsync_and_what_was_not_sent_is_unmarked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pacsguard.gateway.store_forward import syncing

    spool = Spool(tmp_path)
    spool.open()
    batch = [meta(spool) for _ in range(5)]
    for m in batch:
        spool.commit(spool.receive(m.id, b"DICM"), m)
    calls: list[Path] = []
    real = syncing.fsync_dir
    monkeypatch.setattr(syncing, "fsync_dir", lambda folder: (calls.append(folder), real(folder))[1])
    spool.mark_sending([m.id for m in batch], "a")
    assert calls == [spool.objects]  # five markers, one fsync
    assert all(spool.in_doubt(m.id, ["a"]) == ["a"] for m in batch)
    spool.mark_sent(batch[0].id, "a")
    spool.unmark_sending([m.id for m in batch[2:]], "a")  # the association ended at batch[1]
    assert [spool.in_doubt(m.id, ["a"]) for m in batch] == [[], ["a"], [], [], []]
    assert len(calls) == 2  # the sent marker: one more


def test_the_c_find_keys_are_those_of_the_file_that_was_sent(tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from pacsguard.gateway.store_forward.verify import identifier

    source = Path(get_testdata_file("CT_small.dcm"))
    ds = dcmread(source, stop_before_pixels=True)
    spool = Spool(tmp_path)
    spool.open()
    m = replace(meta(spool), study_uid="1.2.999")  # as received; a replacement file has its own UIDs
    spool.commit(spool.receive(m.id, source.read_bytes()), m)
    query = identifier(m)
    assert query.QueryRetrieveLevel == "IMAGE" and query.SOPInstanceUID == "1.2.3.4"
    assert (query.StudyInstanceUID, query.SeriesInstanceUID) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
    spool.object_path(m.id).unlink()  # unreadable: the metadata's keys
    query = identifier(m)
    assert query.StudyInstanceUID == "1.2.999" and "SeriesInstanceUID" not in query


def test_the_group_fsync_serves_concurrent_commits_with_fewer_syncs_and_never_before_their_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    from pacsguard.gateway.store_forward import syncing

    started: list[float] = []

    def slow_fsync(path: Path) -> None:
        started.append(time.monotonic())
        time.sleep(0.05)

    monkeypatch.setattr(syncing, "fsync_dir", slow_fsync)
    group = syncing.FolderSync(tmp_path)
    called: dict[int, float] = {}
    returned: dict[int, float] = {}

    def commit(i: int) -> None:
        called[i] = time.monotonic()
        group.sync()
        returned[i] = time.monotonic()

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(returned) == 8
    assert len(started) < 8  # shared: one sync for the callers that came while another ran
    # Each caller returned only after a sync that began after it called.
    assert all(any(called[i] <= s <= returned[i] for s in started) for i in called)


# --- spent files reused (reuse.py) -----------------------------------------------------------------


def spend(spool: Spool, content: bytes) -> SpooledMeta:
    """An object received, committed and sent to its one destination: its file goes to the pool."""
    m = replace(meta(spool, ["a"]), bytes=len(content))
    spool.commit(spool.receive(m.id, content), m)
    spool.mark_sent(m.id, "a")
    assert spool.finish_if_done(m)
    return m


def test_a_spent_file_is_overwritten_and_cut_to_the_new_objects_length(tmp_path: Path) -> None:
    from pacsguard.gateway.store_forward.spool import sync_object

    spool = Spool(tmp_path, reuse_mib=1)
    spool.open()
    spend(spool, b"A" * 5000)
    assert len(spool.pool) == 1 and spool.pool.bytes == 5000 and not list(spool.objects.iterdir())
    fd, path = spool.create(spool.new_id())
    assert len(spool.pool) == 0 and path.stat().st_size == 5000  # the spent file, not a new one
    os.write(fd, b"new object")
    sync_object(fd, 10)
    os.close(fd)
    assert path.read_bytes() == b"new object"  # nothing of the previous object is left behind
    fd, other = spool.create(spool.new_id())  # the pool is empty: a new file
    os.close(fd)
    assert other.stat().st_size == 0


def test_the_pool_keeps_to_its_limit_and_survives_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, reuse_mib=0.01)  # 10,485 bytes
    spool.open()
    for _ in range(3):
        spend(spool, b"B" * 4000)
    assert len(spool.pool) == 2 and spool.pool.bytes == 8000  # the third did not fit: deleted
    assert len(list((tmp_path / "free").iterdir())) == 2
    spool.close()
    smaller = Spool(tmp_path, reuse_mib=0.005)  # a lower limit at the next start: the oldest go
    smaller.open()
    assert len(smaller.pool) == 1 and len(list((tmp_path / "free").iterdir())) == 1
    smaller.close()
    off = Spool(tmp_path, reuse_mib=0)
    off.open()
    assert len(off.pool) == 0 and list((tmp_path / "free").iterdir()) == []
    spend(off, b"C" * 100)
    assert list((tmp_path / "free").iterdir()) == [] and list(off.objects.iterdir()) == []


def test_the_pool_gives_its_space_back_before_an_object_is_refused(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from pacsguard.gateway.store_forward import spool as spool_module

    spool = Spool(tmp_path, reuse_mib=64, min_free_mib=1)
    spool.open()
    spend(spool, b"D" * 100_000)
    # A file system with 1 MiB + 50 KB free (the pool's 100 KB counted as used, as statvfs does).
    monkeypatch.setattr(spool_module.os, "statvfs", lambda _: SimpleNamespace(f_bavail=2**20 + 50_000, f_frsize=1))
    spool.reserve(40_000)  # fits without the pool
    assert len(spool.pool) == 1
    spool.reserve(60_000)  # fits only once the pool's file is deleted
    assert len(spool.pool) == 0 and list((tmp_path / "free").iterdir()) == []
    with pytest.raises(SpoolFull):
        spool.reserve(60_000)


def test_write_many_resumes_after_a_short_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pacsguard.gateway.store_forward import receiver

    real = os.writev
    monkeypatch.setattr(receiver.os, "writev", lambda fd, bufs: real(fd, [bytes(b)[:3] for b in bufs[:1]]))
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    receiver._write_all(fd, [memoryview(b"abcdefg"), memoryview(b""), memoryview(b"hij"), memoryview(b"k")])
    os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"abcdefghijk"


@pytest.mark.parametrize("shut_down", [False, True])
def test_an_object_and_its_metadata_are_synced_together_or_the_error_is_raised(tmp_path: Path,
                                                                                 shut_down: bool) -> None:
    """The metadata threads write ID.json while the object is fsync'd; a route being stopped has
    none left, and the metadata is then written in the calling thread. A metadata write that fails
    is raised to the caller (the object is then refused, never acknowledged), its file closed."""
    from concurrent.futures import ThreadPoolExecutor

    from pacsguard.gateway.store_forward import receiver

    spool = Spool(tmp_path, reuse_mib=1)
    spool.open()
    writers = ThreadPoolExecutor(1)
    if shut_down:
        writers.shutdown()
    try:
        for fails in (False, True):
            m = meta(spool)
            fd, path = spool.create(m.id)
            os.write(fd, b"DICM")
            if fails:
                (spool.tmp / f"{m.id}.json").mkdir()  # ID.json cannot be written
                with pytest.raises(IsADirectoryError):
                    receiver._sync_with_meta(spool, writers, m, fd)
            else:
                receiver._sync_with_meta(spool, writers, m, fd)
                assert path.read_bytes() == b"DICM"
                assert (spool.tmp / f"{m.id}.json").is_file()
            with pytest.raises(OSError):
                os.fstat(fd)  # closed either way
    finally:
        writers.shutdown()


def test_each_mib_received_is_handed_to_the_kernels_write_out_as_it_arrives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """So that the fsync before the answer has only the tail left (receiver.WRITEBACK_STEP): the
    ranges asked for follow each other from the file's start, each at least a step, and only the
    tail under a step is left to the fsync."""
    from pacsguard.gateway.store_forward import receiver

    asked: list[tuple[int, int]] = []
    monkeypatch.setattr(receiver, "start_writeback", lambda fd, offset, length: asked.append((offset, length)))
    spool = Spool(tmp_path, reuse_mib=0)
    spool.open()
    incoming = receiver.Incoming(command=None, pending=None)  # type: ignore[arg-type]  # only the file is used
    incoming.fd, incoming.path = spool.create(spool.new_id())
    piece = memoryview(os.urandom(16_000))
    total = 0
    while total < 3 * receiver.WRITEBACK_STEP + 12_345:
        assert incoming.write_many(spool, [piece, piece[:5_000]]) is None
        total += 21_000
    os.close(incoming.fd)
    assert incoming.written == total == incoming.path.stat().st_size
    assert [offset for offset, _ in asked] == [0] + [sum(n for _, n in asked[:i + 1]) for i in range(len(asked) - 1)]
    assert len(asked) == 3 and all(n >= receiver.WRITEBACK_STEP for _, n in asked)
    assert 0 <= total - sum(n for _, n in asked) < receiver.WRITEBACK_STEP


def test_the_write_out_call_is_found_and_never_raises(tmp_path: Path) -> None:
    """On Linux the call is libc's sync_file_range(2); on a descriptor it cannot serve (a pipe:
    ESPIPE) or a closed one it fails quietly, leaving everything to the fsync that follows."""
    from pacsguard.gateway.store_forward import syncing

    if sys.platform.startswith("linux"):
        assert syncing._SYNC_FILE_RANGE is not None
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"x" * 100_000)
    syncing.start_writeback(fd, 0, 100_000)
    os.close(fd)
    read, write = os.pipe()
    syncing.start_writeback(write, 0, 10)
    os.close(read)
    os.close(write)
    syncing.start_writeback(write, 0, 10)  # closed: EBADF, quietly
    assert (tmp_path / "f").stat().st_size == 100_000
