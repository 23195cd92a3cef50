"""A small archive built on odil's SCP classes (Debian's python3-odil), run by /usr/bin/python3.

    /usr/bin/python3 -P odil_scp.py PORT FOLDER [--move AET=HOST:PORT ...]

It serves one association after another on PORT (odil's ``Association.receive_association``
accepts one connection per call; tests/peers/odil.py makes it listen on one loopback address
only), with odil's own service providers: C-ECHO (EchoSCP, PS3.4 A), C-STORE (StoreSCP, PS3.4 B:
each object written to FOLDER as ``<SOP Instance UID>.dcm``), C-FIND at the STUDY level (FindSCP,
PS3.4 C.6.2: one match per study of FOLDER, with SOP Classes in Study and this archive as Retrieve
AE Title), C-GET (GetSCP, PS3.4 C.4.3: the objects of FOLDER matching the identifier's Patient ID,
Study, Series and SOP Instance UIDs, sent back as C-STORE sub-operations on the same association)
and C-MOVE (MoveSCP, PS3.4 C.4.2: the same objects on a new association to the Move Destination
that ``--move`` places). Each association and request is printed on stdout, one line each, for
the test to read.

Not a pytest module: python3-odil is importable by Debian's Python only, not by the venv.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys

import odil

AET = "ODILARCH"
KEYS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def say(*words: object) -> None:
    print(*words, flush=True)


def first(data_set: odil.DataSet, keyword: str) -> str:
    if keyword in data_set and data_set.as_string(keyword):
        value = data_set.as_string(keyword)[0]
        return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def load(folder: str) -> list[odil.DataSet]:
    objects = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".dcm"):
            _meta, data_set = odil.Reader.read_file(os.path.join(folder, name))
            objects.append(data_set)
    return objects


def matches(data_set: odil.DataSet, identifier: odil.DataSet) -> bool:
    """Single value matching on the identifier's non-empty keys (PS3.4 C.2.2.2.1); "*" matches all."""
    for keyword in KEYS:
        wanted = first(identifier, keyword)
        if wanted and wanted != "*" and wanted != first(data_set, keyword):
            return False
    return True


class Studies(odil.FindSCP.DataSetGenerator):
    """C-FIND: one STUDY-level match per study in the folder (PS3.4 C.6.2.1.2)."""

    def __init__(self, folder: str) -> None:
        odil.FindSCP.DataSetGenerator.__init__(self)
        self.folder = folder
        self.answers: list[odil.DataSet] = []
        self.index = 0

    def initialize(self, message: odil.messages.Request) -> None:
        query = message.get_data_set()
        say("C-FIND", first(query, "PatientID"), first(query, "StudyInstanceUID"))
        studies: dict[str, list[odil.DataSet]] = {}
        for data_set in load(self.folder):
            if matches(data_set, query):
                studies.setdefault(first(data_set, "StudyInstanceUID"), []).append(data_set)
        self.answers = []
        for uid, members in studies.items():
            answer = odil.DataSet()
            answer.add("QueryRetrieveLevel", ["STUDY"])
            answer.add("RetrieveAETitle", [AET])
            answer.add("PatientID", [first(members[0], "PatientID")])
            answer.add("StudyInstanceUID", [uid])
            answer.add("SOPClassesInStudy", sorted({first(m, "SOPClassUID") for m in members}))
            self.answers.append(answer)
        self.index = 0

    def done(self) -> bool:
        return self.index >= len(self.answers)

    def next(self) -> None:
        self.index += 1

    def get(self) -> odil.DataSet:
        return self.answers[self.index]


class Matching:
    """The objects of the folder an identifier matches, handed to odil one by one (its
    DataSetGenerator protocol: initialize, done, next, get, count)."""

    folder: str
    service = ""

    def initialize(self, message: odil.messages.Request) -> None:
        identifier = message.get_data_set()
        self.found = [d for d in load(self.folder) if matches(d, identifier)]
        self.index = 0
        say(self.service, first(identifier, "PatientID"), first(identifier, "StudyInstanceUID"), len(self.found))

    def done(self) -> bool:
        return self.index >= len(self.found)

    def next(self) -> None:
        self.index += 1

    def get(self) -> odil.DataSet:
        return self.found[self.index]

    def count(self) -> int:
        return len(self.found)


class Objects(Matching, odil.GetSCP.DataSetGenerator):
    """C-GET: the matching objects, each a C-STORE sub-operation (PS3.4 C.4.3.3)."""

    service = "C-GET"

    def __init__(self, folder: str) -> None:
        odil.GetSCP.DataSetGenerator.__init__(self)
        self.folder = folder
        self.found: list[odil.DataSet] = []
        self.index = 0


class Mover(Matching, odil.MoveSCP.DataSetGenerator):
    """C-MOVE: the matching objects, sent on a new association to the Move Destination, which
    ``--move AET=HOST:PORT`` places (PS3.4 C.4.2.2); an unknown one makes odil answer 0xA801."""

    service = "C-MOVE"

    def __init__(self, folder: str, destinations: dict[str, tuple[str, int]]) -> None:
        odil.MoveSCP.DataSetGenerator.__init__(self)
        self.folder = folder
        self.destinations = destinations
        self.found: list[odil.DataSet] = []
        self.index = 0

    def get_association(self, request: odil.messages.CMoveRequest) -> odil.Association:
        destination = first_text(request.get_move_destination()).strip()
        if destination not in self.destinations:
            raise odil.Exception(f"unknown move destination {destination}")
        host, port = self.destinations[destination]
        syntaxes = [odil.registry.ExplicitVRLittleEndian, odil.registry.ImplicitVRLittleEndian]
        classes = sorted({first(d, "SOPClassUID") for d in load(self.folder)}) or [odil.registry.CTImageStorage]
        contexts = [odil.AssociationParameters.PresentationContext(
            2 * i + 1, uid, syntaxes, odil.AssociationParameters.PresentationContext.Role.SCU)
            for i, uid in enumerate(classes)]
        association = odil.Association()
        association.set_peer_host(host)
        association.set_peer_port(port)
        association.update_parameters().set_calling_ae_title(AET).set_called_ae_title(destination) \
            .set_presentation_contexts(contexts)
        say("SUB-ASSOCIATION", destination, host, port)
        return association


def accepting(on: bool) -> None:
    """Tell the bind shim of tests/peers/odil.py (LD_PRELOAD) that the sockets made now are the
    acceptor's; without the shim (run by hand) there is nothing to tell."""
    try:
        flag = ctypes.c_int.in_dll(ctypes.CDLL(None), "odil_bind_accepting")
    except ValueError:
        return
    flag.value = 1 if on else 0


def serve_one(port: int, folder: str, destinations: dict[str, tuple[str, int]]) -> None:
    association = odil.Association()
    association.set_tcp_timeout(30)
    accepting(True)
    try:
        association.receive_association("v4", port)
    finally:
        accepting(False)
    params = association.get_negotiated_parameters()
    say("ASSOCIATION", first_text(params.get_calling_ae_title()), len(params.get_presentation_contexts()))

    def on_echo(message: object) -> int:
        say("C-ECHO")
        return 0

    def on_store(message: odil.messages.CStoreRequest) -> int:
        data_set = message.get_data_set()
        uid = first(data_set, "SOPInstanceUID")
        odil.Writer.write_file(data_set, os.path.join(folder, f"{uid}.dcm"))
        say("C-STORE", first(data_set, "PatientID"), uid)
        return 0

    echo = odil.EchoSCP(association)
    echo.set_callback(on_echo)
    store = odil.StoreSCP(association)
    store.set_callback(on_store)
    find = odil.FindSCP(association)
    studies = Studies(folder)
    find.set_generator(studies)
    get = odil.GetSCP(association)
    objects = Objects(folder)
    get.set_generator(objects)
    move = odil.MoveSCP(association)
    mover = Mover(folder, destinations)
    move.set_generator(mover)
    # SCPDispatcher.set_scp of this binding takes no FindSCP or GetSCP: dispatch here instead.
    command = odil.messages.Message.Command
    providers = {int(command.C_ECHO_RQ): echo, int(command.C_STORE_RQ): store,
                 int(command.C_FIND_RQ): find, int(command.C_GET_RQ): get, int(command.C_MOVE_RQ): move}
    try:
        while True:
            message = association.receive_message()
            providers[int(message.get_command_field())](message)
    except odil.AssociationReleased:
        say("RELEASED")
    except odil.AssociationAborted:
        say("ABORTED")


def first_text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("folder")
    parser.add_argument("--move", action="append", default=[], metavar="AET=HOST:PORT")
    args = parser.parse_args()
    destinations = {}
    for entry in args.move:
        aet, _, where = entry.partition("=")
        host, _, port = where.rpartition(":")
        destinations[aet] = (host, int(port))
    while True:
        try:
            serve_one(args.port, args.folder, destinations)
        except Exception as exc:  # noqa: BLE001 - a broken association must not end the archive
            say("ERROR", type(exc).__name__, exc)


if __name__ == "__main__":
    sys.exit(main())
