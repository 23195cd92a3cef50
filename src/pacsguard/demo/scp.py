"""A small DICOM archive stand-in so that ``make run`` needs no external PACS.

:class:`DemoPACS` is the *upstream* the demo gateway forwards to. It is a demo, not an archive:
it keeps its index in memory (rebuilt from the storage directory at start-up), holds no
database, performs no transcoding, no authentication beyond the called AE title, and makes no
promise of durability or performance. Use Orthanc or a real PACS for anything else.

What it does, on pynetdicom:

* Verification SCP (C-ECHO).
* Storage SCP for every storage SOP class pynetdicom knows, in any transfer syntax; each object
  is written exactly as received (PS3.10 file: preamble, file meta, then the dataset bytes the
  peer sent) to ``<storage>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``.
* Query/Retrieve SCP (PS3.4 Annex C) for the Patient Root and Study Root information models:
  C-FIND at PATIENT, STUDY, SERIES and IMAGE level, C-MOVE to the move destinations it was
  given, and C-GET.

C-FIND matching (PS3.4 C.2.2.2) is implemented for what clients commonly send: universal
matching (empty key), single value matching, wildcards ``*`` and ``?`` on string VRs,
list-of-UID matching on UI keys, and range matching (``from-to``) on DA, TM and DT. Sequence
keys are returned empty and never restrict the match. It matches relationally (any key at any
level is accepted), which is more lenient than the hierarchical search the standard asks of a
strict SCP.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_context, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from pacsguard.owner_only import make_private_dir, write_private_file

__all__ = ["DemoPACS", "LEVELS"]

LOG = logging.getLogger(__name__)

#: Query/Retrieve levels, highest first (PS3.4 C.3).
LEVELS: tuple[str, ...] = ("PATIENT", "STUDY", "SERIES", "IMAGE")
#: The unique key of each level (PS3.4 C.3.2–C.3.4 and Table C.6-1/C.6-5).
UNIQUE_KEY: dict[str, str] = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

_STUDY_ROOT = {
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
}
_QR_CONTEXTS = (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
)
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
# Accepted for storage, in order of preference: pynetdicom picks, in each proposed context, the
# first of these the requestor offers. Explicit VR Little Endian first, because implicit VR
# loses the VR of private and unknown elements (they come back as UN); then everything else,
# since the demo stores what it is sent and never transcodes.
_STORAGE_SYNTAXES = [ExplicitVRLittleEndian, *(ts for ts in ALL_TRANSFER_SYNTAXES if ts != ExplicitVRLittleEndian)]

# A UID is digits and dots, at most 64 characters (PS3.5 9.1). Checked before a UID becomes a
# path component, so a crafted StudyInstanceUID such as "../../etc" cannot escape the storage.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

# Keys the SCP does not match on: the level itself, the character set, and the AE that holds
# the data (which the SCP fills in).
_NOT_MATCHED = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "TimezoneOffsetFromUTC"}
_WILDCARD_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
_RANGE_VRS = {"DA", "TM", "DT"}

# C-FIND/C-MOVE/C-GET statuses used here (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
_PENDING = 0xFF00
_CANCEL = 0xFE00
_IDENTIFIER_DOES_NOT_MATCH = 0xA900
# C-STORE statuses (PS3.4 B.2.3).
_STORE_SUCCESS = 0x0000
_STORE_OUT_OF_RESOURCES = 0xA700
_STORE_CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class _Instance:
    """One stored object: where its file is, and its attributes without pixel data (for matching)."""

    path: Path
    header: Dataset
    transfer_syntax: str

    @property
    def sop_class(self) -> str:
        return str(self.header.SOPClassUID)

    def level_value(self, level: str) -> str:
        """The value of ``level``'s unique key in this object ("" if it has none)."""
        return str(self.header.get(UNIQUE_KEY[level], "") or "")


class _BadIdentifier(ValueError):
    """The request's identifier cannot be answered under its information model."""


def _is_valid_uid(value: object) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and _UID.match(text) is not None


def _element_values(elem: DataElement) -> list[str]:
    """An element's values as strings (several for a multi-valued element, none if empty)."""
    value = elem.value
    if value is None or value == "" or value == b"":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return [str(v).strip() for v in value]
    return [str(value).strip()]


def _wildcard_regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """``*`` matches any run of characters and ``?`` any single one (PS3.4 C.2.2.2.4)."""
    parts = [".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern]
    flags = (re.IGNORECASE | re.DOTALL) if ignore_case else re.DOTALL
    return re.compile("".join(parts), flags)


def _value_matches(key: str, value: str, vr: str) -> bool:
    """Match one key value against one stored value, by the rules for ``vr``."""
    # Person names may be matched case-insensitively (PS3.4 C.2.2.2.1); everything else is exact.
    ignore_case = vr == "PN"
    # One hyphen makes a range (a DT with a negative UTC offset inside a range is not supported).
    if vr in _RANGE_VRS and key.count("-") == 1:
        low, high = (part.strip() for part in key.split("-", 1))
        # Dates and times in DICOM's fixed formats compare correctly as strings.
        return (not low or value >= low) and (not high or value[: len(high)] <= high)
    if vr in _WILDCARD_VRS and ("*" in key or "?" in key):
        return _wildcard_regex(key, ignore_case).fullmatch(value) is not None
    if ignore_case:
        return key.casefold() == value.casefold()
    return key == value


def _key_matches(key: DataElement, stored: list[str]) -> bool:
    """True if any stored value matches any of the key's values (list-of-UID matching for UI)."""
    wanted = _element_values(key)
    if not wanted:
        return True  # universal matching
    return any(_value_matches(w, s, key.VR) for w in wanted for s in stored)


def _matching_keys(identifier: Dataset) -> list[DataElement]:
    """The identifier's elements that restrict the match (non-empty, not a sequence, not meta)."""
    keys = []
    for elem in identifier:
        if elem.keyword in _NOT_MATCHED or elem.VR == "SQ" or elem.tag.group == 0x0002:
            continue
        values = _element_values(elem)
        # A key of only "*" is universal matching too (PS3.4 C.2.2.2.4): it must not exclude
        # objects that lack the attribute.
        if values and any(v.strip("*") for v in values):
            keys.append(elem)
    return keys


def _instance_matches(keys: list[DataElement], inst: _Instance, computed: dict[str, list[str]]) -> bool:
    for key in keys:
        if key.keyword in computed:
            stored = computed[key.keyword]
        elif key.tag in inst.header:
            stored = _element_values(inst.header[key.tag])
        else:
            return False  # a non-empty key never matches an attribute the object lacks
        if not _key_matches(key, stored):
            return False
    return True


def _computed_values(level: str, group: list[_Instance]) -> dict[str, list[str]]:
    """Values of the attributes the SCP computes from the stored objects rather than reads from
    one of them (PS3.4 C.3.4, "Additional Query/Retrieve Attributes"), for one entity."""
    if level not in ("PATIENT", "STUDY", "SERIES"):
        return {}
    studies = {i.level_value("STUDY") for i in group}
    series = {i.level_value("SERIES") for i in group}
    if level == "PATIENT":
        return {
            "NumberOfPatientRelatedStudies": [str(len(studies))],
            "NumberOfPatientRelatedSeries": [str(len(series))],
            "NumberOfPatientRelatedInstances": [str(len(group))],
        }
    if level == "STUDY":
        return {
            "ModalitiesInStudy": sorted({str(i.header.get("Modality", "")) for i in group} - {""}),
            "SOPClassesInStudy": sorted({i.sop_class for i in group}),
            "NumberOfStudyRelatedSeries": [str(len(series))],
            "NumberOfStudyRelatedInstances": [str(len(group))],
        }
    return {"NumberOfSeriesRelatedInstances": [str(len(group))]}


def _check_level(identifier: Dataset, model: str, *, retrieve: bool) -> str:
    """Return the request's Query/Retrieve Level, or raise if the model cannot answer it."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS:
        raise _BadIdentifier(f"unknown QueryRetrieveLevel {level!r}")
    if level == "PATIENT" and model in _STUDY_ROOT:
        raise _BadIdentifier("the Study Root model has no PATIENT level")
    unique = UNIQUE_KEY[level]
    values = _element_values(identifier[unique]) if unique in identifier else []
    if retrieve and (not values or any("*" in v or "?" in v for v in values)):
        # A retrieve names what it wants by unique key (PS3.4 C.4.2.2.1), without wildcards;
        # an empty or wildcard key would mean "send everything", which no client should get
        # by omission.
        raise _BadIdentifier(f"C-MOVE/C-GET at {level} level needs a {unique} without wildcards")
    return level


class DemoPACS:
    """An in-process DICOM storage + query/retrieve SCP for demos and the demo upstream.

    Example::

        pacs = DemoPACS("DEMOPACS", "127.0.0.1", 11112, Path("var/demo-pacs"),
                        {"WORKSTATION": ("127.0.0.1", 11113)})
        pacs.start()          # returns at once; serves from background threads
        ...
        pacs.stop()

    ``port=0`` lets the OS pick a free port; :attr:`address` tells which after :meth:`start`.
    """

    def __init__(
        self,
        ae_title: str,
        host: str = "127.0.0.1",
        port: int = 11112,
        storage_dir: Path = Path("var/demo-pacs"),
        move_destinations: dict[str, tuple[str, int]] | None = None,
        *,
        require_called_aet: bool = True,
    ) -> None:
        """Configure the SCP; nothing listens until :meth:`start`.

        ``require_called_aet``: reject associations not addressed to ``ae_title`` (what a PACS
        does; a gateway that forwards with the wrong called AE title should notice).
        """
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.storage_dir = Path(storage_dir)
        self.move_destinations: dict[str, tuple[str, int]] = dict(move_destinations or {})
        self._index: dict[str, _Instance] = {}
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None
        self._ae = self._make_ae(require_called_aet)

    # -- life cycle ---------------------------------------------------------------------------

    def _make_ae(self, require_called_aet: bool) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = require_called_aet
        # Bounded waits, so that a silent peer cannot hold an association thread forever.
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.network_timeout = 60
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None  # pynetdicom's storage contexts each name their SOP class
            # Both roles accepted: a C-GET requestor proposes to be the storage SCP (PS3.7 D.3.3.4).
            ae.add_supported_context(cx.abstract_syntax, _STORAGE_SYNTAXES, scu_role=True, scp_role=True)
        for sop_class in _QR_CONTEXTS:
            ae.add_supported_context(sop_class, _UNCOMPRESSED)
        return ae

    def start(self) -> None:
        """Index the storage directory and start serving in background threads (non-blocking)."""
        if self._server is not None:
            raise RuntimeError("DemoPACS is already running")
        # Received objects hold patient data: the folder is the owner's alone (0700).
        make_private_dir(self.storage_dir)
        self._load_index()
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
        ]
        self._server = self._ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        LOG.info("DemoPACS %s listening on %s:%d, storage %s", self.ae_title, *self.address, self.storage_dir)

    def stop(self) -> None:
        """Abort open associations and stop listening. Stored files stay on disk."""
        if self._server is None:
            return
        self._ae.shutdown()
        self._server = None

    def __enter__(self) -> DemoPACS:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the SCP listens on (the real port when constructed with port 0)."""
        if self._server is not None:
            host, port = self._server.server_address[:2]
            return str(host), int(port)
        return self.host, self.port

    @property
    def instance_count(self) -> int:
        """Number of stored objects."""
        with self._lock:
            return len(self._index)

    # -- storage --------------------------------------------------------------------------------

    def _load_index(self) -> None:
        """Rebuild the in-memory index from ``<storage>/<study>/<sop>.dcm``; skip unreadable files."""
        index: dict[str, _Instance] = {}
        for stale in self.storage_dir.glob(".incoming-*.part"):
            stale.unlink(missing_ok=True)  # left by a C-STORE interrupted by a crash
        for path in sorted(self.storage_dir.glob("*/*.dcm")):
            try:
                inst = self._read_instance(path)
            except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError) as exc:
                LOG.warning("DemoPACS: skipping unreadable %s: %s", path, exc)
                continue
            index[str(inst.header.SOPInstanceUID)] = inst
        with self._lock:
            self._index = index
        LOG.info("DemoPACS: indexed %d objects from %s", len(index), self.storage_dir)

    @staticmethod
    def _read_instance(path: Path) -> _Instance:
        header = dcmread(path, stop_before_pixels=True)
        for keyword in ("SOPClassUID", "SOPInstanceUID"):
            if not _is_valid_uid(header.get(keyword)):
                raise ValueError(f"no valid {keyword}")
        return _Instance(path=path, header=header, transfer_syntax=str(header.file_meta.TransferSyntaxUID))

    def _on_store(self, event: Event) -> int:
        """C-STORE: write the object exactly as received, then index it."""
        request = event.request
        assert isinstance(request, C_STORE)  # bound to EVT_C_STORE only
        sop_uid = str(request.AffectedSOPInstanceUID or "")
        # The study directory is known only once the dataset is parsed: land the bytes in the
        # storage root first, parse them from there (once, without pixel data), then rename.
        tmp = self.storage_dir / f".incoming-{uuid.uuid4().hex}.part"
        try:
            write_private_file(tmp, event.encoded_dataset(include_meta=True))
        except OSError as exc:
            LOG.error("DemoPACS: cannot write %s: %s", tmp, exc)
            tmp.unlink(missing_ok=True)
            return _STORE_OUT_OF_RESOURCES
        try:
            inst = self._read_instance(tmp)
            study_uid = str(inst.header.get("StudyInstanceUID", "") or "")
            # UIDs become path components: only well-formed ones, and the dataset must be the
            # instance the command announced.
            if not _is_valid_uid(study_uid) or str(inst.header.SOPInstanceUID) != sop_uid:
                raise ValueError(f"invalid or inconsistent UIDs (study {study_uid!r}, command {sop_uid!r})")
            path = self.storage_dir / study_uid / f"{sop_uid}.dcm"
            make_private_dir(path.parent)
            os.replace(tmp, path)  # atomic: a reader never sees half a file
        except OSError as exc:
            LOG.error("DemoPACS: cannot store %s: %s", sop_uid, exc)
            tmp.unlink(missing_ok=True)
            return _STORE_OUT_OF_RESOURCES
        except Exception as exc:  # whatever the peer sent, answer it and keep serving
            LOG.warning("DemoPACS: refusing C-STORE of %r: %s", sop_uid, exc)
            tmp.unlink(missing_ok=True)
            return _STORE_CANNOT_UNDERSTAND

        inst = replace(inst, path=path)
        with self._lock:
            previous = self._index.get(sop_uid)
            self._index[sop_uid] = inst
        if previous is not None and previous.path != path:
            # The same SOP instance re-sent under another study: keep only the newest copy.
            previous.path.unlink(missing_ok=True)
        return _STORE_SUCCESS

    # -- query ----------------------------------------------------------------------------------

    def _snapshot(self) -> list[_Instance]:
        with self._lock:
            return list(self._index.values())

    def _groups(self, level: str) -> dict[str, list[_Instance]]:
        """Stored objects grouped by the unique key of ``level`` (one group per entity)."""
        groups: dict[str, list[_Instance]] = {}
        for inst in self._snapshot():
            value = inst.level_value(level)
            if value:
                groups.setdefault(value, []).append(inst)
        return groups

    def find(self, identifier: Dataset, level: str) -> Iterator[Dataset]:
        """Yield one response identifier per entity at ``level`` that matches ``identifier``."""
        keys = _matching_keys(identifier)
        for group in self._groups(level).values():
            computed = _computed_values(level, group)
            match = next((i for i in group if _instance_matches(keys, i, computed)), None)
            if match is not None:
                yield self._response(identifier, level, match, computed)

    def _response(self, identifier: Dataset, level: str, inst: _Instance, computed: dict[str, list[str]]) -> Dataset:
        """The requested attributes of one matched entity (PS3.4 C.4.1.1.3.2)."""
        rsp = Dataset()
        for elem in identifier:
            if elem.tag.group == 0x0002 or elem.keyword in _NOT_MATCHED:
                continue
            if elem.keyword in computed:
                values = computed[elem.keyword]
                rsp.add_new(elem.tag, elem.VR, values if len(values) != 1 else values[0])
            elif elem.tag in inst.header:
                rsp.add(deepcopy(inst.header[elem.tag]))
            else:
                rsp.add_new(elem.tag, elem.VR, [] if elem.VR == "SQ" else None)
        # The level's unique key is always returned, so the client can retrieve what it found.
        unique = UNIQUE_KEY[level]
        if unique not in rsp:
            rsp.add(deepcopy(inst.header[unique]))
        if "SpecificCharacterSet" in inst.header:
            rsp.SpecificCharacterSet = inst.header.SpecificCharacterSet
        rsp.QueryRetrieveLevel = level
        rsp.RetrieveAETitle = self.ae_title
        return rsp

    def _on_find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        """C-FIND over the Patient Root and Study Root models."""
        identifier = event.identifier
        try:
            level = _check_level(identifier, str(event.request.AffectedSOPClassUID), retrieve=False)
        except _BadIdentifier as exc:
            LOG.info("DemoPACS: C-FIND refused: %s", exc)
            yield _IDENTIFIER_DOES_NOT_MATCH, None
            return
        for rsp in self.find(identifier, level):
            if event.is_cancelled:
                yield _CANCEL, None
                return
            yield _PENDING, rsp

    # -- retrieve -------------------------------------------------------------------------------

    def _retrieve_matches(self, identifier: Dataset) -> list[_Instance]:
        """Every stored object the retrieve identifier designates (all below the matched entities)."""
        keys = _matching_keys(identifier)
        return [inst for inst in self._snapshot() if _instance_matches(keys, inst, {})]

    @staticmethod
    def _load(inst: _Instance) -> Dataset:
        """Read an object for a C-STORE sub-operation (pixel data included)."""
        return dcmread(inst.path)

    @staticmethod
    def _contexts_for(instances: list[_Instance]) -> list[PresentationContext]:
        """Presentation contexts for sending ``instances`` to a move destination.

        One context per SOP class offers the uncompressed syntaxes (pynetdicom converts
        between them); each compressed syntax in use gets its own context, because this demo
        never decompresses. At most 128 contexts fit in one association (PS3.8 9.3.2.2).
        """
        contexts: dict[tuple[str, str], PresentationContext] = {}
        for inst in instances:
            ts = inst.transfer_syntax
            key = (inst.sop_class, "uncompressed" if ts in _UNCOMPRESSED else ts)
            if key not in contexts:
                syntaxes: list[str | UID] = list(_UNCOMPRESSED) if ts in _UNCOMPRESSED else [ts]
                contexts[key] = build_context(inst.sop_class, syntaxes)
        if len(contexts) > 128:
            LOG.warning("DemoPACS: C-MOVE needs %d presentation contexts, sending with the first 128", len(contexts))
        return list(contexts.values())[:128]

    def _on_move(self, event: Event) -> Iterator[Any]:
        """C-MOVE: send the designated objects to a configured move destination."""
        destination = self.move_destinations.get((event.move_destination or "").strip())
        if destination is None:
            LOG.warning("DemoPACS: unknown move destination %r", event.move_destination)
            yield None, None  # pynetdicom answers 0xA801 "Move Destination unknown"
            return
        identifier = event.identifier
        try:
            _check_level(identifier, str(event.request.AffectedSOPClassUID), retrieve=True)
        except _BadIdentifier as exc:
            LOG.info("DemoPACS: C-MOVE refused: %s", exc)
            # pynetdicom takes a destination and a count before it accepts a failure status, and
            # opens (then releases) an association with the destination in between: give it a
            # context it can propose. Nothing is sent on it.
            yield destination[0], destination[1], {"contexts": [build_context(Verification)]}
            yield 1
            yield _IDENTIFIER_DOES_NOT_MATCH, None
            return
        matches = self._retrieve_matches(identifier)
        yield destination[0], destination[1], {"contexts": self._contexts_for(matches) or None}
        yield len(matches)
        for inst in matches:
            if event.is_cancelled:
                yield _CANCEL, None
                return
            yield _PENDING, self._load(inst)

    def _on_get(self, event: Event) -> Iterator[Any]:
        """C-GET: send the designated objects back over the requestor's own association."""
        identifier = event.identifier
        try:
            _check_level(identifier, str(event.request.AffectedSOPClassUID), retrieve=True)
        except _BadIdentifier as exc:
            LOG.info("DemoPACS: C-GET refused: %s", exc)
            yield 1
            yield _IDENTIFIER_DOES_NOT_MATCH, None
            return
        matches = self._retrieve_matches(identifier)
        yield len(matches)
        for inst in matches:
            if event.is_cancelled:
                yield _CANCEL, None
                return
            yield _PENDING, self._load(inst)
