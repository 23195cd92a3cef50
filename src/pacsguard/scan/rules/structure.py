"""Structure built to crash or mislead readers: what the reader's walk found (lengths, depth,
delimiters, deflate) and what the values say against each other: the file meta information
(PS3.10 7.1), UIDs (PS3.5 9.1), the Image Pixel module (PS3.3 C.7.6.3), fragments (PS3.5 A.4),
DICOMDIR file IDs (PS3.10 8.2, 8.5) and markup in text a web viewer shows (stored XSS)."""

from __future__ import annotations

import re
import struct

from pacsguard.dicom.uids import encapsulates_pixel_data, uid_name
from pacsguard.scan import signatures
from pacsguard.scan.model import Finding, Level
from pacsguard.scan.part10 import PIXEL_DATA, Element, Parsed, dictionary_tags, tag_label
from pacsguard.scan.rules import guarded
from pacsguard.scan.rules.polyglot import GARBAGE_STOPS

#: The structure problems a cleaned copy can repair: where the walk stopped on bytes that are no
#: element, cutting them off (the polyglot family's trailing data); a preamble left out, putting
#: 128 zero bytes back before "DICM" (PS3.10 7.1: a preamble of zeros is the plain one).
REMEDIES = {**dict.fromkeys(GARBAGE_STOPS, "trailing"), "structure.missing-preamble": "preamble-missing"}
UID = re.compile(r"^(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*$")
#: Text VRs a web viewer shows as they are; the long-text VRs are searched by the embedded family.
SHORT_TEXT_VRS = frozenset({"PN", "LO", "SH", "CS", "AE", "UR", "DS", "IS", "DA", "TM", "DT", "AS"})
ROWS, COLUMNS, BITS_ALLOCATED, SAMPLES, FRAMES = 0x00280010, 0x00280011, 0x00280100, 0x00280002, 0x00280008
FILE_ID, PHOTOMETRIC = 0x00041500, 0x00280004


def check(parsed: Parsed) -> list[Finding]:
    if not parsed.dicom:
        kind = signatures.identify(parsed.data)
        if kind in signatures.EXECUTABLE or kind == "script":
            # Media and modalities' exports carry images, not programs: noted, without failing on
            # the viewer many CDs carry unless fail_on is medium or lower.
            return [Finding("structure.executable-file", Level.MEDIUM, f"not DICOM: {signatures.DESCRIPTIONS[kind]}",
                            0, "PS3.10 7.1; PS3.12")]
        other = None if kind else signatures.unopened_container(parsed.data)
        if kind in signatures.UNOPENED_ARCHIVES or signatures.zstd(parsed.data[:4]) or other:
            # What it holds was not scanned: not judged is not clean, as an encrypted member. A
            # disc image, a cabinet or a cpio archive holds a medium's files as a zip does.
            what = signatures.DESCRIPTIONS[kind] if kind else other or "a Zstandard stream"
            return [Finding("structure.unopened-archive", Level.MEDIUM,
                            f"not DICOM: {what}, which pacsguard does not open: its members were not scanned "
                            "(media archives are zip, PS3.12)", 0, "PS3.12; PS3.10 7.1")]
        return [Finding("structure.not-dicom", Level.INFO, "not a DICOM file (no Part-10 header, no data set)", None,
                        "PS3.10 7.1")]
    findings = [Finding(p.rule, p.level, p.explanation, p.offset, "PS3.5 7.1, 7.5; PS3.10 7.1",
                        None if p.tag is None else tag_label(p.tag), parsed.inflated,
                        remedy=REMEDIES.get(p.rule, ""))
                for p in parsed.problems]
    for rule in (_meta, _uids, _pixels, _file_ids, _markup):
        findings += guarded("structure", rule, parsed)
    return findings


def _meta(parsed: Parsed) -> list[Finding]:
    out: list[Finding] = []
    if parsed.part10 and len(parsed.data) <= parsed.dataset_start:
        # A file that ends after its header holds no object: not hostile, but no image either; a
        # file cut anywhere later is noted (structure.truncated), one cut here was not.
        where = "its file meta information" if parsed.meta else "the preamble and the DICM prefix"
        out.append(Finding("structure.no-data-set", Level.LOW, f"nothing after {where}: the file holds no data set",
                           parsed.end, "PS3.10 7.1"))
    if not parsed.meta:
        return out
    if parsed.transfer_syntax is None:
        out.append(Finding("structure.missing-transfer-syntax", Level.LOW,
                           "the file meta information has no Transfer Syntax UID (0002,0010)", parsed.meta_end,
                           "PS3.10 7.1"))
    # A class that disagrees sends the object to the wrong handler; an instance that disagrees is a
    # common writer slip (pydicom's RT samples), noted low.
    for meta_tag, data_tag, what, level in ((0x00020002, 0x00080016, "SOP Class", Level.MEDIUM),
                                            (0x00020003, 0x00080018, "SOP Instance", Level.LOW)):
        meta, data = parsed.text(meta_tag), parsed.text(data_tag)
        # parsed.top, not parsed.meta: a meta group cut short by a foreign element leaves the rest
        # of group 0002 in the data set, where parsed.text found it.
        element = parsed.top(meta_tag)
        if meta and data and meta != data and element is not None:
            out.append(Finding("structure.media-storage-mismatch", level,
                               f"Media Storage {what} UID {meta} disagrees with the data set's {data}",
                               element.offset, "PS3.10 7.1", element.label, parsed.inflated and not element.meta))
    return out


#: A UID value is at most 64 bytes (PS3.5 9.1); an element of this many bytes is judged by
#: searching it in place for path characters, not decoded value by value.
UID_DECODE_MAX = 64 * 1024
PATH_MARKS = (b"/", b"..", b":")
TRAVERSAL_REF = "PS3.5 9.1; CVE-2022-2119, CVE-2022-2120"


def _uids(parsed: Parsed) -> list[Finding]:
    """UIDs are digits and dots, at most 64 bytes each (PS3.5 9.1); receivers that name files
    after them are open to ../, whatever the length (a long one is malformed too: both are said)."""
    out: list[Finding] = []
    uids = dictionary_tags(UID_VRS)
    for element in [*parsed.meta.values(), *parsed.elements]:
        if element.length <= 0 or element.vr != "UI" and (element.tag not in uids or element.vr == "SQ"):
            continue
        if element.length > UID_DECODE_MAX:
            out.extend(_huge_uid(parsed, element))
            continue
        for value in parsed.value(element).decode("latin-1").rstrip("\x00 ").split("\\"):
            if not value or UID.match(value) and len(value) <= 64:
                continue
            path = "/" in value or ".." in value or ":" in value  # a backslash separates values
            if path:
                out.append(_uid_finding(parsed, element, "structure.uid-path-traversal", Level.HIGH,
                                        f"{element.label} is a path, not a UID: {value[:80]!r}", TRAVERSAL_REF))
            if len(value) > 64 or not path:
                out.append(_uid_finding(parsed, element, "structure.bad-uid", Level.LOW,
                                        f"{element.label} is not a valid UID ({len(value):,} bytes): {value[:80]!r}",
                                        "PS3.5 9.1"))
            break
    return out


#: The UID rule and the markup rule judge a value by its attribute (the tag's dictionary VR,
#: PS3.6) as well as by the VR written: a receiver names files after the SOP Instance UID
#: (0008,0018) whatever VR the file gives it (LO, UN: pydicom reads a UN back as UI, dcmtk shows it
#: as the attribute), and a viewer shows a Patient Name written as UN, LT or UT as the name.
UID_VRS = frozenset({"UI"})


def _huge_uid(parsed: Parsed, element: Element) -> list[Finding]:
    """A UI element of more than UID_DECODE_MAX bytes: malformed, and searched in place (no copy)."""
    src = parsed.data if element.meta else parsed.body
    start, end = element.value_offset, element.value_offset + element.length
    head = bytes(src[start:start + 80]).decode("latin-1")
    out = [_uid_finding(parsed, element, "structure.bad-uid", Level.LOW,
                        f"{element.label} is not a valid UID ({element.length:,} bytes): {head!r}", "PS3.5 9.1")]
    if any(src.find(mark, start, end) >= 0 for mark in PATH_MARKS):
        out.insert(0, _uid_finding(parsed, element, "structure.uid-path-traversal", Level.HIGH,
                                   f"{element.label} is a path, not a UID: {head!r}", TRAVERSAL_REF))
    return out


def _uid_finding(parsed: Parsed, element: Element, rule: str, level: Level, why: str, ref: str) -> Finding:
    return Finding(rule, level, why, element.value_offset, ref, element.label, parsed.inflated and not element.meta)


def _us(parsed: Parsed, element: Element | None) -> int | None:
    if element is None or element.length < 2:
        return None
    fmt = "<H" if parsed.little else ">H"
    return int(struct.unpack_from(fmt, parsed.body, element.value_offset)[0])


def _image_size_elements(parsed: Parsed) -> list[Element]:
    """Rows, Columns and Bits Allocated at the top level: each occurrence when one is repeated
    (a reader keeping the second copy, as pydicom does, reads that one's VR)."""
    tags = (ROWS, COLUMNS, BITS_ALLOCATED)
    if any(p.rule == "structure.repeated-tag" for p in parsed.problems):
        return [e for e in parsed.elements if e.depth == 0 and e.tag in tags]
    return [e for e in (parsed.top(t) for t in tags) if e is not None]


def _pixels(parsed: Parsed) -> list[Finding]:
    out: list[Finding] = []
    for element in _image_size_elements(parsed):
        if parsed.explicit and element.vr not in ("US", "UN"):
            out.append(Finding("structure.pixel-vr", Level.HIGH, f"{element.label} is {element.vr}, not US: "
                               "readers that trust the VR misread the image size", element.offset,
                               "PS3.3 C.7.6.3; PS3.6", element.label, parsed.inflated))
    pixels = parsed.top(PIXEL_DATA)
    if pixels is None:
        return out
    out += _pixel_encoding(parsed, pixels)
    if pixels.fragments and len(pixels.fragments) > 1 and pixels.fragments[-1][1] < 3:
        out.append(Finding("structure.short-fragment", Level.MEDIUM,
                           f"the last pixel data fragment is {pixels.fragments[-1][1]} bytes: no codec stream is that "
                           "short", pixels.fragments[-1][0], "PS3.5 A.4", pixels.label, parsed.inflated))
    rows, cols, bits = (_us(parsed, parsed.top(t)) for t in (ROWS, COLUMNS, BITS_ALLOCATED))
    if pixels.length < 0 or not rows or not cols or not bits or any(f.rule == "structure.pixel-vr" for f in out):
        return out
    samples = _us(parsed, parsed.top(SAMPLES)) or 1
    frames_text = parsed.text(FRAMES) or "1"
    frames = int(frames_text) if frames_text.strip().isascii() and frames_text.strip().isdigit() else 1
    expected = (rows * cols * samples * frames * bits + 7) // 8
    if (parsed.text(PHOTOMETRIC) or "").startswith("YBR_FULL_422"):
        expected = expected * 2 // 3  # PS3.3 C.7.6.3.1.2: two chroma samples per two pixels
    if pixels.length + 1 < expected:
        out.append(Finding("structure.pixel-size", Level.MEDIUM,
                           f"Rows x Columns x Bits Allocated need {expected:,} bytes, pixel data has {pixels.length:,}",
                           pixels.offset, "PS3.3 C.7.6.3; PS3.5 8.1.1", pixels.label, parsed.inflated))
    return out


def _pixel_encoding(parsed: Parsed, pixels: Element) -> list[Finding]:
    """Pixel Data encoded other than its transfer syntax says (PS3.5 A.4, 8.2): native (a defined
    length) under a transfer syntax that encapsulates it, or encapsulated (items of fragments)
    under one that does not. A reader trusting the transfer syntax hands native bytes to a codec
    as its stream, or item headers to a display as pixels. A private or unknown transfer syntax is
    not judged."""
    ts = parsed.transfer_syntax or ""
    should = encapsulates_pixel_data(ts)
    encapsulated = pixels.length < 0
    if should is None or encapsulated == should:
        return []
    how = "encapsulated" if encapsulated else f"native ({pixels.length:,} bytes of defined length)"
    verb = "encapsulates" if should else "does not encapsulate"
    return [Finding("structure.pixel-encoding", Level.MEDIUM,
                    f"pixel data is {how} under {uid_name(ts)}, which {verb} it", pixels.offset, "PS3.5 A.4, 8.2",
                    pixels.label, parsed.inflated)]


#: The attributes of a DICOMDIR (PS3.3 F.3, F.5) that name a file or folder on the media: the File-set
#: Descriptor File ID (0004,1141) and each record's Referenced File ID (0004,1500) are relative paths
#: of CS components (PS3.10 8.2, 8.5); the File-set ID (0004,1130) is a name, which importers copying
#: the media make a folder of. A reader joins each with the media's root to open it.
FILE_IDS = {FILE_ID: "file ID", 0x00041141: "file-set descriptor file ID", 0x00041130: "file-set ID"}
#: Windows device names (Win32 file naming: CON, PRN, AUX, NUL, COM0-9, LPT0-9 and the console's
#: CONIN$/CONOUT$), also with an extension or trailing dots and spaces (Win32 path normalisation
#: drops those): a reader opening MEDIA\DIR\CON opens the device, not a file on the media.
#: A file ID is judged up to this many bytes: past any path a system opens (Linux PATH_MAX 4,096,
#: Windows' 32,767 characters), so a value padded beyond it cannot hide a component that opens.
FILE_ID_MAX = 64 * 1024
WINDOWS_DEVICE = re.compile(r"(?:CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9]|CONIN\$|CONOUT\$)(?:\.[^.]*)?[ .]*",
                            re.IGNORECASE)


def _file_ids(parsed: Parsed) -> list[Finding]:
    """DICOMDIR file IDs are relative paths of CS components inside the media (PS3.10 8.2, 8.5):
    uppercase letters, digits and "_" (PS3.5 6.2), so any component that climbs, names a root, a
    drive or a Windows device leads a reader out of the media."""
    out: list[Finding] = []
    for element in parsed.elements:
        what = FILE_IDS.get(element.tag)
        if what is None or element.length <= 0:
            continue
        src = parsed.data if element.meta else parsed.body
        raw = bytes(src[element.value_offset:element.value_offset + min(element.length, FILE_ID_MAX)])
        value = raw.decode("latin-1").strip("\x00 ")
        why = _path_problem(value.split("\\"))
        if why is None and "\x00" in value:
            # A reader in C (dcmtk) hands the path to the system cut at its first NUL byte.
            why = _path_problem(value.split("\x00", 1)[0].split("\\"))
        if why is not None:
            out.append(Finding("structure.fileid-traversal", Level.HIGH,
                               f"DICOMDIR {what} {'/'.join(value.split(chr(92)))[:120]!r} in {element.label} {why}",
                               element.value_offset, "PS3.10 8.2, 8.5; PS3.3 F.5", element.label, parsed.inflated))
    return out


def _path_problem(parts: list[str]) -> str | None:
    """What makes a file ID's components (PS3.10 8.5) lead out of the media, or None."""
    if not parts[0].strip():
        return "is absolute: it starts at a root (\\ or \\\\server), not in the media"
    for part in parts:
        name = part.strip()
        if name and not name.strip("."):
            # ".", "..", and "..." (Win32 normalisation drops trailing dots) climb or stay above.
            return f"climbs out of the media ({name!r})"
        if "/" in name:
            return f"holds a path of its own ({name!r}: \"/\" separates folders to the reader)"
        if ":" in name:
            return f"names a drive, URL or stream ({name!r}), not a file in the media"
        if WINDOWS_DEVICE.fullmatch(name):
            return f"names the Windows device {name!r}, which Windows opens instead of a file"
    return None


#: Short texts are searched up to this size: longer than any VR allows (PN: 64 characters a
#: component group), so a value padded past a few KiB to escape a search is still searched.
MARKUP_SCAN_MAX = 1 << 20


def _markup(parsed: Parsed) -> list[Finding]:
    # By the VR written or the attribute's own (PS3.6): a Patient Name written as UN or LT is shown
    # as a name all the same.
    shown = dictionary_tags(SHORT_TEXT_VRS)
    texts = [e for e in parsed.elements if 0 < e.length <= MARKUP_SCAN_MAX
             and (e.vr in SHORT_TEXT_VRS or e.tag in shown and e.vr != "SQ")]
    # One search over all of them first: nearly every file has no markup at all.
    if signatures.markup(b"\0".join(parsed.value(e) for e in texts)) is None:
        return []
    for element in texts:
        at = signatures.markup(parsed.value(element))
        if at is not None:
            return [Finding("structure.markup", Level.HIGH, f"script or markup in {element.label} ({element.vr}),"
                            " run by web viewers that show it (stored XSS)", element.value_offset + at,
                            "PS3.5 6.2; OWASP stored XSS", element.label, parsed.inflated)]
            # No remedy: the value is the patient's or the study's own (a name, a modality, often
            # Type 1); a copy without it is no longer the same object, so cleaning refuses.
    return []
