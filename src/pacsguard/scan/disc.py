"""Optical disc images (a patient CD or DVD as a file: ISO 9660, ECMA-119; with Joliet or Rock
Ridge names; UDF, ECMA-167, as pycdlib reads it) opened as containers, as zip and tar are: every
file of the image is an archive member, its names judged as member names are.

An image is first surveyed by its own directory records, without pycdlib and bounded by the
archive limits, so that a hostile image costs no more than its bytes: the volume descriptors
(ECMA-119 8), each directory tree they name (9.1: a directory record's extent, length, flags and
name), and the path table (9.4). What cannot be read (an extent past the image's end, a record
that overruns its directory, a loop of directories, a tree deeper than DEPTH) is a finding naming
where; so are file extents that overlap without being the same, names holding "/" or NUL, and a
path table that names other directories than the records. An image whose records break the
member limit is not handed to pycdlib at all. pycdlib then opens it; what it cannot open stays
the file it is (structure.unopened-archive: its members were not scanned), with pycdlib's
reason noted."""

from __future__ import annotations

import io
import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pacsguard.scan.model import Finding, Level
from pacsguard.scan.report import display_path

REF = "ECMA-119 (ISO 9660) 8, 9; ECMA-167 (UDF); PS3.12"
#: The system area (ECMA-119 6.2.1): 16 sectors of 2,048 bytes before the volume descriptors.
SECTOR, FIRST_DESCRIPTOR = 2048, 16 * 2048
#: Volume descriptors looked at (ECMA-119 8.1: up to the set terminator, type 255).
MAX_DESCRIPTORS = 64
#: Directories nested deeper than this are not read: ECMA-119 6.8.2.1 allows 8 levels, Rock
#: Ridge relocates deeper ones; a deeper tree is a crafted one.
DEPTH = 64
#: Findings of one kind listed per image; past this only their number (100,000 crafted records
#: must not make 100,000 findings).
MAX_LISTED = 10
#: Joliet's escape sequences in a supplementary volume descriptor (Joliet specification: UCS-2
#: levels 1, 2, 3) at bytes 88-120.
JOLIET_ESCAPES = (b"%/@", b"%/C", b"%/E")
#: A directory record's fixed part (ECMA-119 9.1): length, extent, data length, flags, name length.
RECORD = 33


def is_disc(descriptors: bytes) -> bool:
    """Whether ``descriptors`` (the image's bytes from FIRST_DESCRIPTOR, a few sectors) start an
    ISO 9660 volume descriptor set ("CD001") or a UDF volume recognition sequence (ECMA-167
    2/8.3: "BEA01", "NSR02", "NSR03")."""
    for at in range(0, min(len(descriptors), 8 * SECTOR), SECTOR):
        if descriptors[at + 1:at + 6] in (b"CD001", b"BEA01", b"NSR02", b"NSR03"):
            return True
    return False


@dataclass(slots=True)
class _Problems:
    """Findings of one image, each kind listed up to MAX_LISTED times, then counted."""

    out: list[Finding]
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, rule: str, level: Level, text: str) -> None:
        n = self.counts[rule] = self.counts.get(rule, 0) + 1
        if n <= MAX_LISTED:
            self.out.append(Finding(rule, level, text, None, REF))

    def close(self) -> None:
        for rule, n in self.counts.items():
            if n > MAX_LISTED:
                level = next(f.level for f in self.out if f.rule == rule)
                self.out.append(Finding(rule, level, f"{n - MAX_LISTED:,} more like the {MAX_LISTED} above", None,
                                        REF))


@dataclass(frozen=True, slots=True)
class _Tree:
    """A directory hierarchy a volume descriptor names: "iso" (primary) or "joliet" (UCS-2 names)."""

    kind: str
    block: int
    root: bytes
    path_table: tuple[int, int] | None  # (location, size) of its L path table


def _trees(data: bytes) -> list[_Tree]:
    """The primary and Joliet trees of the volume descriptor set (ECMA-119 8.4, 8.5)."""
    out: list[_Tree] = []
    for n in range(MAX_DESCRIPTORS):
        at = FIRST_DESCRIPTOR + n * SECTOR
        vd = data[at:at + SECTOR]
        if len(vd) < SECTOR or vd[1:6] != b"CD001" or vd[0] == 255:
            break
        if vd[0] not in (1, 2):
            continue
        joliet = vd[0] == 2 and any(e in vd[88:120] for e in JOLIET_ESCAPES)
        if vd[0] == 2 and not joliet:
            continue
        block = struct.unpack_from("<H", vd, 128)[0] or SECTOR
        size, where = struct.unpack_from("<I", vd, 132)[0], struct.unpack_from("<I", vd, 140)[0]
        out.append(_Tree("joliet" if joliet else "iso", block, bytes(vd[156:190]), (where, size)))
    return out


def _name(raw: bytes, kind: str) -> str:
    """A record's file identifier as a reader shows it: UCS-2 big-endian for Joliet, else bytes
    (d-characters, but any byte is read); the version (";1") and an empty extension's dot off."""
    text = raw.decode("utf-16-be", "replace") if kind == "joliet" else raw.decode("latin-1")
    base, semi, version = text.rpartition(";")
    if semi and version.isdigit():
        text = base
    return text[:-1] if text.endswith(".") and not text.endswith("..") and len(text) > 1 else text


@dataclass(slots=True)
class Survey:
    """What the survey found: directory extents of the primary tree, file entries counted.
    ``over``: the image is not handed to pycdlib (more records than the member limit, folders
    overlapping past the image's size, a loop of folders: what would cost a parser more than the
    image's bytes)."""

    entries: int = 0
    over: bool = False
    folders: set[int] = field(default_factory=set)


def survey(data: bytes, max_members: int, findings: list[Finding]) -> Survey:
    """Walk every tree's directory records (ECMA-119 9.1) within the image's bytes, adding a
    finding for each thing that cannot be read or is crafted (Survey.over: not to be opened)."""
    problems = _Problems(findings)
    seen = Survey()
    extents: list[tuple[int, int, str]] = []
    for tree in _trees(data):
        _walk_tree(data, tree, seen, extents, problems, max_members)
        if seen.over:
            break
        if tree.kind == "iso" and tree.path_table is not None:
            _path_table(data, tree, seen.folders, problems)
    if not seen.over:
        _overlaps(extents, problems)
    problems.close()
    return seen


def _walk_tree(data: bytes, tree: _Tree, seen: Survey, extents: list[tuple[int, int, str]], problems: _Problems,
               max_members: int) -> None:
    root_extent, root_length = struct.unpack_from("<I", tree.root, 2)[0], struct.unpack_from("<I", tree.root, 10)[0]
    label = "the Joliet tree" if tree.kind == "joliet" else "the primary tree"
    visited: dict[int, str] = {}
    pending: deque[tuple[str, int, int, int]] = deque([("/", root_extent, root_length, 0)])
    walked = 0  # bytes of folder extents read: disjoint on a real image, so no more than it holds
    while pending:
        path, extent, length, depth = pending.popleft()
        shown = f"{label}: {display_path(path)}"
        walked += length if extent not in visited else 0
        if walked > len(data):
            # Folders whose extents overlap (each a new extent, all over the same bytes) would make
            # the walk cost their number times the image: stopped, and the image not opened.
            seen.over = True
            problems.out.append(Finding("archive.disc-unreadable", Level.MEDIUM, f"{shown}: the folders' extents add "
                                        f"up to more than the image's {len(data):,} bytes (folders overlapping each "
                                        "other): the image is not opened", None, REF))
            return
        if extent in visited:
            problems.add("archive.disc-unreadable", Level.MEDIUM, f"{shown} is the folder "
                         f"{display_path(visited[extent])} again (a loop of directory records): not read twice, "
                         "and the image not opened")
            seen.over = True  # a loop is what makes a directory walker run forever: not handed on
            continue
        visited[extent] = path
        if tree.kind == "iso":
            seen.folders.add(extent)
        if depth > DEPTH:
            problems.add("archive.disc-unreadable", Level.MEDIUM, f"{shown} is nested deeper than {DEPTH} folders: "
                         "not read")
            continue
        start = extent * tree.block
        if start + length > len(data):
            problems.add("archive.disc-unreadable", Level.MEDIUM, f"{shown}: its directory extent (block {extent:,}, "
                         f"{length:,} bytes) runs past the image's end ({len(data):,} bytes): not read")
            continue
        for name, rec_extent, rec_length, folder in _records(data, start, length, tree, shown, problems):
            if name in ("\0", "\1"):
                continue
            seen.entries += 1
            if seen.entries > max_members:
                seen.over = True
                problems.out.append(Finding("archive.bomb", Level.HIGH, f"more than {max_members:,} directory "
                                            "records (the limit of members); the image is not opened", None, REF))
                return
            full = path + name if path.endswith("/") else f"{path}/{name}"
            if "/" in name or "\0" in name:
                problems.add("archive.disc-name", Level.HIGH, f"{label}: the name {display_path(name)!r} in "
                             f"{display_path(path)} holds {'a slash' if '/' in name else 'a NUL byte'}: extractors "
                             "write it elsewhere than the name shown (a folder, or a name cut short)")
            if folder:
                pending.append((full, rec_extent, rec_length, depth + 1))
            elif rec_extent * tree.block + rec_length > len(data):
                problems.add("archive.disc-unreadable", Level.MEDIUM, f"{label}: {display_path(full)}'s extent "
                             f"(block {rec_extent:,}, {rec_length:,} bytes) runs past the image's end "
                             f"({len(data):,} bytes): not scanned")
            elif rec_length and tree.kind == "iso":
                start = rec_extent * tree.block
                extents.append((start, start + rec_length, full))
                if start <= FIRST_DESCRIPTOR < start + rec_length:
                    problems.add("archive.disc-overlap", Level.MEDIUM, f"{label}: {display_path(full)} holds the "
                                 "image's own volume descriptors: the image read again inside itself (to the "
                                 "nesting limit)")


def _records(data: bytes, start: int, length: int, tree: _Tree, shown: str,
             problems: _Problems) -> Iterator[tuple[str, int, int, bool]]:
    """The records of one directory extent: (name, extent, data length, is a folder). Records do
    not cross a logical sector (ECMA-119 6.8.1.1): a zero length byte means the rest of the sector
    is padding. A record that overruns the extent or its own length ends the directory, said."""
    pos, end = start, start + length
    while pos < end:
        size = data[pos]
        if size == 0:
            pos = (pos // SECTOR + 1) * SECTOR
            continue
        name_len = data[pos + 32] if pos + 32 < end else 0
        if size < RECORD + 1 or pos + size > end or RECORD + name_len > size:
            problems.add("archive.disc-unreadable", Level.MEDIUM, f"{shown}: a directory record at byte {pos:,} "
                         f"overruns its directory or itself ({size} bytes): the rest of the folder is not read")
            return
        extent, data_length = struct.unpack_from("<I", data, pos + 2)[0], struct.unpack_from("<I", data, pos + 10)[0]
        raw = bytes(data[pos + RECORD:pos + RECORD + name_len])
        name = raw.decode("latin-1") if raw in (b"\0", b"\1") else _name(raw, tree.kind)
        yield name, extent, data_length, bool(data[pos + 25] & 0x02)
        pos += size


def _overlaps(extents: list[tuple[int, int, str]], problems: _Problems) -> None:
    """Files whose bytes overlap without being the same extent (ECMA-119 6.4.5: a file section is
    its own): one file's bytes read as part of another, shown differently to each reader."""
    extents.sort()
    last: tuple[int, int, str] | None = None
    for start, stop, name in extents:
        if last is not None and start < last[1] and (start, stop) != last[:2]:
            problems.add("archive.disc-overlap", Level.MEDIUM, f"{display_path(name)} (bytes {start:,}-{stop:,}) "
                         f"overlaps {display_path(last[2])} (bytes {last[0]:,}-{last[1]:,}): one file's bytes are "
                         "part of another's; both are scanned")
        if last is None or stop > last[1]:
            last = (start, stop, name)


def _path_table(data: bytes, tree: _Tree, folders: set[int], problems: _Problems) -> None:
    """The L path table (ECMA-119 9.4: name length, extended attribute length, extent, parent
    number, name, padded to even) against the folders the records lead to: readers that use the
    table (it is read to find a folder without walking, by DOS and early Windows drivers) see
    other folders than those that walk the records."""
    where, size = tree.path_table or (0, 0)
    start = where * tree.block
    if start + size > len(data) or size == 0:
        problems.add("archive.disc-path-table", Level.MEDIUM, f"the path table (block {where:,}, {size:,} bytes) "
                     "runs past the image's end or is empty: readers that use it cannot find the folders")
        return
    listed: set[int] = set()
    pos, end = start, start + size
    while pos + 8 <= end:
        name_len = data[pos]
        if name_len == 0:
            break
        listed.add(struct.unpack_from("<I", data, pos + 2)[0])
        pos += 8 + name_len + (name_len & 1)
        if len(listed) > len(folders) + MAX_LISTED:
            break
    if listed != folders:
        only_table = sorted(listed - folders)[:5]
        only_records = sorted(folders - listed)[:5]
        problems.add("archive.disc-path-table", Level.MEDIUM, "the path table names other folders than the directory "
                     f"records (blocks only in the table: {only_table or 'none'}; only in the records: "
                     f"{only_records or 'none'}): readers that use the table see other files; the records' are "
                     "scanned")


#: A member's name and how to read it, as walk.Member.
Member = tuple[str, Callable[[], "bytes | None"]]


@dataclass(slots=True)
class _File:
    """One file's data in the image and every name it is reached by (a name per tree)."""

    start: int
    length: int
    names: dict[str, None] = field(default_factory=dict)  # in the order met, each once


class Disc:
    """An image pycdlib opened: its files by data extent, each with its names in every tree."""

    def __init__(self, iso: Any, data: bytes) -> None:
        self.iso = iso
        self.data = data
        #: Rock Ridge (RRIP 4.1.3, SL) and UDF (ECMA-167 4/14.16) symbolic links: (name, target;
        #: "" when it cannot be read). Linux shows them as links, so they are judged as a tar's
        #: links are, not read as files.
        self.links: list[tuple[str, str]] = []

    def files(self, problems: list[Finding], max_members: int) -> list[_File]:
        """Every file record of every tree pycdlib read (UDF, Joliet, Rock Ridge, then the
        primary names), one per data extent, with all its names; folders read once each, no
        deeper than DEPTH, no more than four times ``max_members`` records in all."""
        iso = self.iso
        block = iso.logical_block_size
        found: dict[tuple[int, int], _File] = {}
        trees: list[tuple[str, str]] = []
        if iso.has_joliet():
            trees.append(("joliet", "joliet_path"))
        if iso.has_rock_ridge():
            trees.append(("rr", "iso_path"))
        trees.append(("iso", "iso_path"))
        count = 0
        if iso.has_udf():
            count = self._udf_files(found, max_members * 4)
        for kind, key in trees:
            root = iso.get_record(**{key: "/"})
            pending: deque[tuple[str, Any, int]] = deque([("", root, 0)])
            visited: set[int] = set()
            while pending:
                path, record, depth = pending.popleft()
                if id(record) in visited or depth > DEPTH:
                    continue
                visited.add(id(record))
                for child in record.children:
                    if child.is_dot() or child.is_dotdot():
                        continue
                    count += 1
                    if count > max_members * 4:  # up to four trees name the same files
                        return list(found.values())
                    name = f"{path}/{_record_name(child, kind)}".lstrip("/")
                    link = _rr_link(child) if kind == "rr" else None
                    if link is not None:
                        self.links.append((name, link))
                        continue
                    if child.is_dir():
                        pending.append((name, child, depth + 1))
                        continue
                    # The record's own length, as a reader of the records reads the file: pycdlib
                    # gives records sharing an extent the first one's (its inode's), which would
                    # hide a longer overlapping file.
                    start, length = child.extent_location() * block, int(child.data_length)
                    entry = found.setdefault((start, length), _File(start, length))
                    entry.names[name] = None
        return list(found.values())


    def _udf_files(self, found: dict[tuple[int, int], _File], most: int) -> int:
        """The UDF tree's files (ECMA-167 4/14.4 File Identifier Descriptors, 4/14.9 File Entries)
        into ``found``: on a DVD the tree Windows reads first, which may name files the ISO 9660
        trees do not. How many entries were met (at most ``most``)."""
        block = self.iso.logical_block_size
        root = self.iso.get_record(udf_path="/")
        pending: deque[tuple[str, Any, int]] = deque([("", root, 0)])
        visited: set[int] = set()
        count = 0
        while pending and count <= most:
            path, entry, depth = pending.popleft()
            if entry is None or id(entry) in visited or depth > DEPTH:
                continue
            visited.add(id(entry))
            for ident in list(entry.fi_descs.values()):
                if ident.is_parent():
                    continue
                count += 1
                raw = bytes(ident.fi)
                text = raw.decode("utf-16-be", "replace") if ident.encoding == "utf-16_be" else \
                    raw.decode("utf-8", "surrogateescape")
                name = f"{path}/{text}".lstrip("/")
                child = ident.file_entry
                if ident.is_dir():
                    pending.append((name, child, depth + 1))
                elif child is not None and child.inode is not None:
                    key = (child.inode.extent_location() * block, int(child.get_data_length()))
                    if child.is_symlink():  # ECMA-167 4/14.6.6, file type 12: its data is the target
                        self.links.append((name, _udf_target(self.data[key[0]:key[0] + min(key[1], MAX_LINK)])))
                        continue
                    found.setdefault(key, _File(*key)).names[name] = None
        return count


#: Bytes of a UDF symbolic link's path components read (Linux reads at most a block).
MAX_LINK = 4096


def _udf_target(data: bytes) -> str:
    """A UDF symbolic link's target as Linux's udf driver reads it: Path Components (ECMA-167
    4/14.16.1: type, identifier length, version, identifier) joined by "/": 2 (and 1 with no
    identifier) the root, 3 "..", 4 ".", 5 a name (OSTA compressed Unicode: a compression ID of
    8 or 16, then 8- or 16-bit characters). "" when the components cannot be read."""
    parts: list[str] = []
    at = 0
    while at + 4 <= len(data):
        kind, length = data[at], data[at + 1]
        ident = data[at + 4:at + 4 + length]
        if len(ident) < length or kind not in (1, 2, 3, 4, 5):
            return ""
        at += 4 + length
        if kind in (1, 2):
            parts = [""]  # the root: an absolute target
        elif kind in (3, 4):
            parts.append(".." if kind == 3 else ".")
        elif not ident or ident[0] not in (8, 16):
            return ""
        else:
            parts.append(ident[1:].decode("utf-16-be" if ident[0] == 16 else "latin-1", "replace"))
    if at != len(data) or not parts:
        return ""
    return "/" if parts == [""] else "/".join(parts)


def _rr_link(record: Any) -> str | None:
    """A record's Rock Ridge symbolic link target (RRIP 4.1.3: SL component records, "/" for a
    root component, ".." for a parent one), "" when its SL records cannot be read; None when it
    is no link."""
    rock = record.rock_ridge
    if rock is None:
        return None
    try:
        if not rock.is_symlink():
            return None
    except Exception:  # noqa: BLE001 - a damaged PX or SL entry: read as the file it also is
        return None
    try:
        return bytes(rock.symlink_path()).decode("utf-8", "surrogateescape")
    except Exception:  # noqa: BLE001 - a continued component with no end: where it leads is unknown
        return ""


def _record_name(record: Any, kind: str) -> str:
    """A record's name in a tree: Rock Ridge's NM (POSIX name) when it has one, else the ISO 9660
    or Joliet identifier without its version."""
    if kind == "rr" and record.rock_ridge is not None:
        try:
            name = record.rock_ridge.name()
        except Exception:  # a damaged NM entry: the ISO 9660 name stands
            name = b""
        if name:
            return bytes(name).decode("utf-8", "surrogateescape")
    return _name(bytes(record.file_identifier()), "joliet" if kind == "joliet" else "iso")


def open_disc(data: bytes, max_members: int, notes: list[Finding]) -> Disc | None:
    """The image opened with pycdlib after the survey, or None: the survey found more records
    than the member limit, or pycdlib cannot open it (noted; then it is scanned as the file it is,
    structure.unopened-archive). pycdlib is a parser of hostile input here: whatever it raises is
    its refusal of the image, not a failure of the scan."""
    looked = survey(data, max_members, notes)
    if looked.over:
        return None
    try:
        import pycdlib
    except ImportError:
        notes.append(Finding("archive.corrupt", Level.LOW, "a disc image, not opened: pycdlib is not installed "
                             "(pip install 'pacsguard[scan]')", None, REF))
        return None
    iso = pycdlib.PyCdlib()
    try:
        iso.open_fp(io.BytesIO(data))
    except (Exception, RecursionError) as exc:  # noqa: BLE001 - see the docstring
        notes.append(Finding("archive.corrupt", Level.LOW, f"a disc image pycdlib cannot open "
                             f"({display_path(str(exc)) or type(exc).__name__}): scanned as one file", None, REF))
        return None
    return Disc(iso, data)


def disc_members(disc: Disc, problems: list[Finding], max_members: int, max_member: int,
                 judge: Callable[[str, list[Finding]], None], prefer: Callable[[list[str]], str],
                 link: Callable[[str, str, list[Finding]], None]) -> Iterator[Member]:
    """The files of an opened image as members: each name judged (``judge``: traversal, Windows
    names), each data extent read once under the name ``prefer`` picks; a file larger than
    ``max_member`` or past the image's end is not read, said. Each Rock Ridge symbolic link is
    judged by ``link`` (its name and target), not read."""
    try:
        files = disc.files(problems, max_members)
    except (Exception, RecursionError) as exc:  # noqa: BLE001 - pycdlib's records of a hostile image
        problems.append(Finding("archive.disc-unreadable", Level.MEDIUM, f"the image's folders cannot be listed "
                                f"({display_path(str(exc)) or type(exc).__name__}): its files were not scanned", None,
                                REF))
        return
    for name, target in disc.links:
        judge(name, problems)
        link(name, target, problems)
    known = {n.lower() for entry in files for n in entry.names}
    for entry in files:
        for name in entry.names:
            judge(name, problems)
        name = prefer(list(entry.names))
        if entry.length > max_member:
            problems.append(Finding("archive.bomb", Level.HIGH, f"{display_path(name)} is {entry.length:,} bytes, "
                                    f"more than the limit ({max_member:,}): not scanned", None, REF))
            continue
        if entry.start + entry.length > len(disc.data):
            continue  # the survey named it (archive.disc-unreadable)

        def read(entry: _File = entry, name: str = name) -> bytes | None:
            content = disc.data[entry.start:entry.start + entry.length]
            if name.rsplit("/", 1)[-1].upper() == "DICOMDIR":
                _resolve(name, content, known, problems)
            return content

        yield name, read


#: The DICOMDIR's Referenced File ID (PS3.3 F.5): CS components joined by "\".
REFERENCED_FILE_ID = 0x00041500


def _resolve(name: str, content: bytes, known: set[str], problems: list[Finding]) -> None:
    """Each Referenced File ID of the DICOMDIR ``name`` resolved inside the image, from the
    DICOMDIR's folder (PS3.10 8.2, 8.5: file IDs are relative to the file-set's root, where the
    DICOMDIR is), case-insensitively as ISO 9660 names are uppercase d-characters: one naming no
    file of the image is archive.dicomdir-unresolved (the medium is not the one the DICOMDIR
    describes, or the file is hidden from the trees read). One that climbs out is the structure
    rules' (structure.fileid-traversal), not repeated here."""
    from pacsguard.scan import part10

    parsed = part10.read(content)
    folder = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
    missing: list[str] = []
    looked = 0
    for element in parsed.elements:
        if element.tag != REFERENCED_FILE_ID or element.length <= 0 or looked >= MAX_FILE_IDS:
            continue
        looked += 1
        src = parsed.data if element.meta else parsed.body
        raw = bytes(src[element.value_offset:element.value_offset + min(element.length, 1024)])
        parts = [p.strip() for p in raw.decode("latin-1").strip("\x00 ").split("\\")]
        if not parts or not parts[0] or any(not p.strip(".") or ":" in p or "/" in p for p in parts):
            continue  # climbs out, names a drive or is empty: structure.fileid-traversal's
        if (folder + "/".join(parts)).lower() not in known:
            missing.append("\\".join(parts))
    if missing:
        shown = ", ".join(display_path(m) for m in missing[:5]) + (f" and {len(missing) - 5:,} more"
                                                                   if len(missing) > 5 else "")
        problems.append(Finding("archive.dicomdir-unresolved", Level.LOW, f"{display_path(name)} references "
                                f"{len(missing):,} file ID(s) naming no file of the image ({shown}): the medium is "
                                "not the one it describes, or those files are hidden from the trees read", None,
                                "PS3.10 8.2, 8.5; PS3.3 F.5"))


#: Referenced File IDs of one DICOMDIR resolved (a DICOMDIR of a large study lists thousands).
MAX_FILE_IDS = 100_000
