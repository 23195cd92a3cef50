"""Objects made by DICOM stacks pacsguard has not used itself: PixelMed (Debian ``pixelmed-apps``,
``libpixelmed-java``), CTN (Debian ``ctn``) and odil (Debian ``odil``), for the de-identifier and
scanner tests of outside round 12.

``peer_objects`` (session fixture) makes them once, in a folder of the session:

=================  ==============================================================================
name               made by
=================  ==============================================================================
``pdf``            PixelMed EncapsulateData from a PDF ghostscript's ps2pdf wrote (PS3.3 A.45.1)
``cda``            PixelMed EncapsulateData from a CDA document, with HL7 Instance Identifier
``stl``            PixelMed EncapsulateData from an ASCII STL model (Encapsulated STL)
``sr``             PixelMed XMLRepresentationOfStructuredReportObjectFactory (pydicom's test SR,
                   read and written back by PixelMed: a Comprehensive SR)
``sc``             PixelMed ImageToDicom from a PNG (Secondary Capture, Burned In Annotation YES)
``wsi``            PixelMed TIFFToDicom from a TIFF with its WSI description file: a Secondary
                   Capture carrying specimen, container and optical path texts
``lect``, ``lemr`` PixelMed MultiFrameImageFactory from pydicom's CT_small and MR_small: Legacy
                   Converted Enhanced CT and MR (PS3.3 A.70, A.71), which DicomInstanceValidator knows
``ctn_ile``,       CTN dcm_create_object, made Part-10 by dcm_ctnto10 (implicit VR little endian,
``ctn_ele``,       explicit little, explicit big endian)
``ctn_ebe``
``odil_be_*``,     odil transcode of ``pdf``, ``sr``, ``ctn_ele`` to Explicit VR Big Endian and
``odil_ile_*``     Implicit VR Little Endian
=================  ==============================================================================

``pixelmed_validate(paths)`` runs PixelMed's own validators in one JVM (its start-up and the XSLT
compilation cost seconds): DicomSRValidator for SR classes, DicomInstanceValidator for the rest.
The latter's 2022 build knows only a few IODs (enhanced CT/MR, segmentation, raw data...) and says
"IOD (SOP Class) unrecognized" for the others; dciodvfy covers those.

Every tool is taken from /usr/bin or /usr/share/java; a missing one fails the test with what to install.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pydicom.data
import pytest

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
HINTS = {
    "java": "apt-get install default-jre-headless",
    "javac": "apt-get install default-jdk-headless",
    "pixelmed": "apt-get install pixelmed-apps libpixelmed-java",
    "ps2pdf": "apt-get install ghostscript",
    "gs": "apt-get install ghostscript",
    "dcm_create_object": "apt-get install ctn",
    "dcm_ctnto10": "apt-get install ctn",
    "dcm_dump_file": "apt-get install ctn",
    "dcm_verify": "apt-get install ctn",
    "odil": "apt-get install odil",
    "dciodvfy": "apt-get install dicom3tools",
}
#: Java 17 refuses PixelMed's compiled validation stylesheets past its XPath operator limits
#: (JAXP0801003); 0 lifts them.
_JAVA_OPTIONS = ["-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true", "-Djdk.xml.xpathExprOpLimit=0",
                 "-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0"]
#: What PixelMed is told of the patient (EncapsulateData's metadata file, SetCharacteristicsFromSummary).
PATIENT = {"PatientName": "Quixote^Zebulon", "PatientID": "MRN4455667", "AccessionNumber": "ACC98765",
           "StudyDescription": "Discharge of Quixote"}
HL7_INSTANCE_IDENTIFIER = "2.16.840.1.113883.19.4^DOC-QUIXOTE-1234567"


def tool(name: str) -> str:
    """The Debian tool ``name`` from /usr/bin (pynetdicom and others shadow names in .venv/bin)."""
    path = Path("/usr/bin") / name
    if not path.exists():
        pytest.fail(f"{name} is missing: {HINTS.get(name, 'install its Debian package')}")
    return str(path)


def run(*args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a peer tool; a failure fails the test with the tool's own words."""
    proc = subprocess.run(list(args), capture_output=True, text=True, errors="replace", timeout=timeout, cwd=cwd)
    if proc.returncode != 0:
        pytest.fail(f"{Path(args[0]).name} {' '.join(args[1:])[:200]} exited {proc.returncode}: "
                    f"{(proc.stderr or proc.stdout)[-800:]}")
    return proc


def java(main_class: str, *args: str, classpath: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    if not PIXELMED_JAR.exists():
        pytest.fail(f"{PIXELMED_JAR} is missing: {HINTS['pixelmed']}")
    cp = f"{PIXELMED_JAR}:{classpath}" if classpath else str(PIXELMED_JAR)
    return run(tool("java"), *_JAVA_OPTIONS, "-cp", cp, main_class, *args, timeout=timeout)


def _made(path: Path, proc: subprocess.CompletedProcess[str]) -> Path:
    # PixelMed's apps log an exception and still exit 0: the file is the verdict.
    if not path.exists() or path.stat().st_size == 0:
        pytest.fail(f"the peer wrote no {path.name}: {(proc.stderr + proc.stdout)[-800:]}")
    return path


def _png(path: Path, width: int = 64, height: int = 48) -> Path:
    """An 8-bit grey ramp as PNG (ISO/IEC 15948: signature, IHDR, one IDAT, IEND)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + bytes((x * 4) & 0xFF for x in range(width)) for _ in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def _tiff(path: Path, width: int = 64, height: int = 48) -> Path:
    """An uncompressed 8-bit grey baseline TIFF (TIFF 6.0 part 1): header, pixels, one IFD."""
    pixels = bytes((x * 4) & 0xFF for _ in range(height) for x in range(width))
    entries = [(256, 3, width), (257, 3, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 8), (277, 3, 1), (278, 3, height), (279, 4, len(pixels))]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in entries) + struct.pack("<I", 0)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8 + len(pixels)) + pixels + ifd)
    return path


def _metadata(path: Path, **extra: str) -> Path:
    import json

    path.write_text(json.dumps({"top": {**PATIENT, **extra}}))
    return path


def pdf_from_postscript(folder: Path, name: str, postscript: str) -> Path:
    source = folder / f"{name}.ps"
    source.write_text(postscript)
    out = folder / f"{name}.pdf"
    run(tool("ps2pdf"), str(source), str(out))
    return out


PAGE = "%!PS\n/Helvetica findfont 20 scalefont setfont 72 700 moveto (Discharge of Quixote) show showpage\n"
#: A document-level JavaScript open action, as pdfmark puts one into the catalog (PDF 1.7 12.6.4.16).
ACTIVE_PAGE = ("%!PS\n[ {Catalog} << /OpenAction << /S /JavaScript /JS (app.alert\\(1\\);) >> >> /PUT pdfmark\n"
               + PAGE.split("\n", 1)[1])


def encapsulate(folder: Path, document: Path, name: str, **extra: str) -> Path:
    """PixelMed's EncapsulateData: the SOP class follows the document's suffix (.pdf, .cda, .stl)."""
    out = folder / f"{name}.dcm"
    return _made(out, java("com.pixelmed.convert.EncapsulateData", str(document),
                           str(_metadata(folder / f"{name}.json", **extra)), str(out)))


def make_objects(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    objects: dict[str, Path] = {}
    objects["pdf"] = encapsulate(folder, pdf_from_postscript(folder, "page", PAGE), "pdf")
    cda = folder / "note.cda"
    cda.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<ClinicalDocument xmlns="urn:hl7-org:v3">'
                   "<recordTarget><patientRole><patient><name>Zebulon Quixote</name></patient></patientRole>"
                   "</recordTarget></ClinicalDocument>\n")
    objects["cda"] = encapsulate(folder, cda, "cda", HL7InstanceIdentifier=HL7_INSTANCE_IDENTIFIER)
    stl = folder / "model.stl"
    stl.write_text("solid part\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\nvertex 1 0 0\nvertex 0 1 0\n"
                   "endloop\nendfacet\nendsolid part\n")
    objects["stl"] = encapsulate(folder, stl, "stl")
    xml = folder / "sr.xml"
    test_sr = Path(pydicom.data.__file__).parent / "test_files" / "test-SR.dcm"  # DCMTK's test SR
    factory = "com.pixelmed.dicom.XMLRepresentationOfStructuredReportObjectFactory"
    xml.write_text(java(factory, "toXML", str(test_sr)).stdout)
    sr = folder / "sr.dcm"
    made = subprocess.run([tool("java"), *_JAVA_OPTIONS, "-cp", str(PIXELMED_JAR), factory, "toDICOM", str(xml)],
                          capture_output=True, timeout=60)  # the object goes to standard output, as bytes
    if made.returncode != 0 or made.stdout[128:132] != b"DICM":
        pytest.fail(f"PixelMed wrote no SR: {made.stderr.decode(errors='replace')[-800:]}")
    sr.write_bytes(made.stdout)
    objects["sr"] = sr
    sc = folder / "sc.dcm"
    objects["sc"] = _made(sc, java("com.pixelmed.dicom.ImageToDicom", str(_png(folder / "ramp.png")), str(sc),
                                   PATIENT["PatientName"], PATIENT["PatientID"], "S1", "3", "4", "OT",
                                   "1.2.840.10008.5.1.4.1.1.7"))
    wsi_json = Path("/etc/pixelmed/TIFFToDicom.WSI.json")
    if not wsi_json.exists():
        pytest.fail(f"{wsi_json} is missing: {HINTS['pixelmed']}")
    proc = java("com.pixelmed.convert.TIFFToDicom", str(wsi_json), str(_tiff(folder / "ramp.tif")),
                str(folder / "wsi"))
    objects["wsi"] = _made(folder / "wsi_0.dcm", proc)
    test_files = Path(pydicom.data.__file__).parent / "test_files"
    for name, single in (("lect", "CT_small.dcm"), ("lemr", "MR_small.dcm")):
        inputs, outputs = folder / f"{name}.in", folder / f"{name}.out"
        inputs.mkdir()
        outputs.mkdir()
        (inputs / single).write_bytes((test_files / single).read_bytes())
        proc = java("com.pixelmed.dicom.MultiFrameImageFactory", str(inputs), str(outputs))
        made_files = sorted(outputs.rglob("*"))
        objects[name] = _made(next((f for f in made_files if f.is_file()), outputs / "none"), proc)
    objects.update(ctn_objects(folder))
    for name in ("pdf", "sr", "ctn_ele"):
        for label, syntax in (("be", "ExplicitVRBigEndian"), ("ile", "ImplicitVRLittleEndian")):
            out = folder / f"odil_{label}_{name}.dcm"
            run(tool("odil"), "transcode", "-t", syntax, str(objects[name]), str(out))
            objects[f"odil_{label}_{name}"] = out
    return objects


#: CTN's dcm_create_object reads "GGGG EEEE value" lines; a value with spaces is quoted (and a
#: value without them must not be: its quotes would be kept).
CTN_TEXT = """0008 0016 1.2.840.10008.5.1.4.1.1.7
0008 0018 1.2.826.0.1.3680043.2.1143.7777.1
0008 0020 20240115
0008 0030 101500
0008 0050 ACC98765
0008 0060 OT
0008 0064 WSD
0008 0080 "St Elsewhere Hospital"
0008 0090 Welby^Marcus
0008 1030 "Head CT for Zebulon Quixote"
0010 0010 Quixote^Zebulon
0010 0020 MRN4455667
0010 0030 19650412
0010 0040 M
0010 1040 "12 Main Street Springfield"
0010 2154 5551234
0010 4000 "Patient comments mention Quixote"
0020 000D 1.2.826.0.1.3680043.2.1143.7777.2
0020 000E 1.2.826.0.1.3680043.2.1143.7777.3
0020 0010 S123
0020 0011 1
0020 0013 1
0020 0020 L\\F
0028 0002 1
0028 0004 MONOCHROME2
0028 0010 4
0028 0011 4
0028 0100 8
0028 0101 8
0028 0102 7
0028 0103 0
"""


def ctn_objects(folder: Path) -> dict[str, Path]:
    """A Secondary Capture image by CTN (3.1.0, MIR): a raw data set, then Part-10 files in the
    three uncompressed transfer syntaxes dcm_ctnto10 writes."""
    text = folder / "ctn.txt"
    text.write_text(CTN_TEXT)
    pixels = folder / "ctn.raw"
    pixels.write_bytes(bytes(range(16)))
    raw = folder / "ctn.obj"
    run(tool("dcm_create_object"), "-i", str(text), "-p", str(pixels), str(raw))
    out = {}
    for name, flag in (("ctn_ile", []), ("ctn_ele", ["-L"]), ("ctn_ebe", ["-B"])):
        out[name] = folder / f"{name}.dcm"
        run(tool("dcm_ctnto10"), *flag, str(raw), str(out[name]))
    return out


@pytest.fixture(scope="session")
def peer_objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_objects(tmp_path_factory.mktemp("r12D-peer-objects"))


_VALIDATE_SOURCE = """
import com.pixelmed.dicom.Attribute;
import com.pixelmed.dicom.AttributeList;
import com.pixelmed.dicom.SOPClass;
import com.pixelmed.dicom.TagFromName;
import com.pixelmed.validate.DicomInstanceValidator;
import com.pixelmed.validate.DicomSRValidator;

public class R12DValidate {
    public static void main(String[] args) throws Exception {
        DicomInstanceValidator iod = null;
        DicomSRValidator sr = null;
        for (String path : args) {
            System.out.println("=== " + path);
            try {
                AttributeList list = new AttributeList();
                list.read(path);
                String sopClass = Attribute.getSingleStringValueOrEmptyString(list, TagFromName.SOPClassUID);
                if (SOPClass.isStructuredReport(sopClass)) {
                    if (sr == null) sr = new DicomSRValidator();
                    System.out.print(sr.validate(list));
                } else {
                    if (iod == null) iod = new DicomInstanceValidator();
                    System.out.print(iod.validate(list));
                }
            } catch (Exception e) {
                System.out.println("Exception: " + e);
            }
        }
    }
}
"""


def pixelmed_validate(paths: list[Path], workdir: Path) -> dict[Path, list[str]]:
    """PixelMed's verdict on each file (its lines, "Found ... IOD" to "IOD validation complete")."""
    source = workdir / "R12DValidate.java"
    source.write_text(_VALIDATE_SOURCE)
    run(tool("javac"), "-cp", str(PIXELMED_JAR), "-d", str(workdir), str(source), timeout=120)
    out = java("R12DValidate", *map(str, paths), classpath=str(workdir), timeout=120).stdout
    verdicts: dict[Path, list[str]] = {}
    current: list[str] = []
    for line in out.splitlines():
        if line.startswith("=== "):
            current = verdicts.setdefault(Path(line[4:]), [])
        else:
            current.append(line)
    return verdicts


def which(name: str) -> str:
    """A tool that may live outside /usr/bin (dciodvfy's package puts it there too)."""
    found = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(found).exists():
        pytest.fail(f"{name} is missing: {HINTS.get(name, 'install its Debian package')}")
    return found
