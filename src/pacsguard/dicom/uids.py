"""Well-known UIDs used by the gateway and the IDS (PS3.6 Annex A).

Only the handful of UIDs the rest of pacsguard refers to by name live here; any
other UID is named through pydicom's UID dictionary by :func:`uid_name`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

# pacsguard's own Implementation Class UID and Version Name (PS3.7 D.3.3.2), sent in the
# A-ASSOCIATE-AC of the gateway's Storage SCP and the A-ASSOCIATE-RQ of its forwarder, and written
# in the file meta of what it spools (PS3.10 7.1). A UUID-derived UID (PS3.5 B.2), so it needs no registered root.
PACSGUARD_IMPLEMENTATION_CLASS_UID: Final = "2.25.24642229412218675495570054402685265748"
PACSGUARD_IMPLEMENTATION_VERSION_NAME: Final = "PACSGUARD_01"

# Application context (PS3.7 A.2.1)
DICOM_APPLICATION_CONTEXT: Final = "1.2.840.10008.3.1.1.1"

# Transfer syntaxes (PS3.5 10, Annex A)
IMPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"
ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1.98"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN: Final = "1.2.840.10008.1.2.2"
JPEG_BASELINE_8BIT: Final = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED_12BIT: Final = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS: Final = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1: Final = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS: Final = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS: Final = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS: Final = "1.2.840.10008.1.2.4.90"
JPEG_2000: Final = "1.2.840.10008.1.2.4.91"
RLE_LOSSLESS: Final = "1.2.840.10008.1.2.5"

# Service / SOP classes (PS3.4)
VERIFICATION: Final = "1.2.840.10008.1.1"
STORAGE_COMMITMENT_PUSH: Final = "1.2.840.10008.1.20.1"
MODALITY_PERFORMED_PROCEDURE_STEP: Final = "1.2.840.10008.3.1.2.3.3"
PATIENT_ROOT_QR_FIND: Final = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_QR_MOVE: Final = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_QR_GET: Final = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_QR_FIND: Final = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_QR_MOVE: Final = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_QR_GET: Final = "1.2.840.10008.5.1.4.1.2.2.3"
MODALITY_WORKLIST_FIND: Final = "1.2.840.10008.5.1.4.31"

CR_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE_PRESENTATION: Final = "1.2.840.10008.5.1.4.1.1.1.1"
DX_IMAGE_STORAGE_PROCESSING: Final = "1.2.840.10008.5.1.4.1.1.1.1.1"
MG_IMAGE_STORAGE_PRESENTATION: Final = "1.2.840.10008.5.1.4.1.1.1.2"
MG_IMAGE_STORAGE_PROCESSING: Final = "1.2.840.10008.5.1.4.1.1.1.2.1"
CT_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.2.1"
US_MULTIFRAME_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.3.1"
MR_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.4.1"
US_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.6.1"
SECONDARY_CAPTURE_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.7"
XA_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.12.1"
RF_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.12.2"
NM_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.20"
BREAST_TOMOSYNTHESIS_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.13.1.3"
VL_PHOTOGRAPHIC_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.77.1.4"
GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.11.1"
BASIC_TEXT_SR_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.88.33"
KEY_OBJECT_SELECTION_DOCUMENT_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.88.59"
ENCAPSULATED_PDF_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.104.1"
ENCAPSULATED_CDA_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.104.2"
PET_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.128"
RT_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.481.1"
RT_DOSE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.481.2"
RT_STRUCTURE_SET_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.481.3"
RT_PLAN_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.481.5"

# Read-only so that no caller can mutate a shared table (no module-level mutable state).
WELL_KNOWN_UIDS: Final = MappingProxyType(
    {
        DICOM_APPLICATION_CONTEXT: "DICOM Application Context Name",
        IMPLICIT_VR_LITTLE_ENDIAN: "Implicit VR Little Endian",
        EXPLICIT_VR_LITTLE_ENDIAN: "Explicit VR Little Endian",
        ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN: "Encapsulated Uncompressed Explicit VR Little Endian",
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: "Deflated Explicit VR Little Endian",
        EXPLICIT_VR_BIG_ENDIAN: "Explicit VR Big Endian",
        JPEG_BASELINE_8BIT: "JPEG Baseline (Process 1)",
        JPEG_EXTENDED_12BIT: "JPEG Extended (Process 2 and 4)",
        JPEG_LOSSLESS: "JPEG Lossless, Non-Hierarchical (Process 14)",
        JPEG_LOSSLESS_SV1: "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])",
        JPEG_LS_LOSSLESS: "JPEG-LS Lossless Image Compression",
        JPEG_LS_NEAR_LOSSLESS: "JPEG-LS Lossy (Near-Lossless) Image Compression",
        JPEG_2000_LOSSLESS: "JPEG 2000 Image Compression (Lossless Only)",
        JPEG_2000: "JPEG 2000 Image Compression",
        RLE_LOSSLESS: "RLE Lossless",
        VERIFICATION: "Verification SOP Class",
        STORAGE_COMMITMENT_PUSH: "Storage Commitment Push Model SOP Class",
        MODALITY_PERFORMED_PROCEDURE_STEP: "Modality Performed Procedure Step SOP Class",
        PATIENT_ROOT_QR_FIND: "Patient Root Query/Retrieve Information Model - FIND",
        PATIENT_ROOT_QR_MOVE: "Patient Root Query/Retrieve Information Model - MOVE",
        PATIENT_ROOT_QR_GET: "Patient Root Query/Retrieve Information Model - GET",
        STUDY_ROOT_QR_FIND: "Study Root Query/Retrieve Information Model - FIND",
        STUDY_ROOT_QR_MOVE: "Study Root Query/Retrieve Information Model - MOVE",
        STUDY_ROOT_QR_GET: "Study Root Query/Retrieve Information Model - GET",
        MODALITY_WORKLIST_FIND: "Modality Worklist Information Model - FIND",
        CR_IMAGE_STORAGE: "Computed Radiography Image Storage",
        DX_IMAGE_STORAGE_PRESENTATION: "Digital X-Ray Image Storage - For Presentation",
        DX_IMAGE_STORAGE_PROCESSING: "Digital X-Ray Image Storage - For Processing",
        MG_IMAGE_STORAGE_PRESENTATION: "Digital Mammography X-Ray Image Storage - For Presentation",
        MG_IMAGE_STORAGE_PROCESSING: "Digital Mammography X-Ray Image Storage - For Processing",
        CT_IMAGE_STORAGE: "CT Image Storage",
        ENHANCED_CT_IMAGE_STORAGE: "Enhanced CT Image Storage",
        US_MULTIFRAME_IMAGE_STORAGE: "Ultrasound Multi-frame Image Storage",
        MR_IMAGE_STORAGE: "MR Image Storage",
        ENHANCED_MR_IMAGE_STORAGE: "Enhanced MR Image Storage",
        US_IMAGE_STORAGE: "Ultrasound Image Storage",
        SECONDARY_CAPTURE_IMAGE_STORAGE: "Secondary Capture Image Storage",
        XA_IMAGE_STORAGE: "X-Ray Angiographic Image Storage",
        RF_IMAGE_STORAGE: "X-Ray Radiofluoroscopic Image Storage",
        NM_IMAGE_STORAGE: "Nuclear Medicine Image Storage",
        BREAST_TOMOSYNTHESIS_IMAGE_STORAGE: "Breast Tomosynthesis Image Storage",
        VL_PHOTOGRAPHIC_IMAGE_STORAGE: "VL Photographic Image Storage",
        GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_STORAGE: "Grayscale Softcopy Presentation State Storage",
        BASIC_TEXT_SR_STORAGE: "Basic Text SR Storage",
        ENHANCED_SR_STORAGE: "Enhanced SR Storage",
        COMPREHENSIVE_SR_STORAGE: "Comprehensive SR Storage",
        KEY_OBJECT_SELECTION_DOCUMENT_STORAGE: "Key Object Selection Document Storage",
        ENCAPSULATED_PDF_STORAGE: "Encapsulated PDF Storage",
        ENCAPSULATED_CDA_STORAGE: "Encapsulated CDA Storage",
        PET_IMAGE_STORAGE: "Positron Emission Tomography Image Storage",
        RT_IMAGE_STORAGE: "RT Image Storage",
        RT_DOSE_STORAGE: "RT Dose Storage",
        RT_STRUCTURE_SET_STORAGE: "RT Structure Set Storage",
        RT_PLAN_STORAGE: "RT Plan Storage",
    }
)

# Transfer syntaxes whose data set encoding differs from Explicit VR Little Endian
# (PS3.5 A.1 - A.5); every encapsulated (compressed) syntax encodes the data set
# itself as Explicit VR Little Endian.
NATIVE_TRANSFER_SYNTAXES: Final = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    }
)


#: The standard transfer syntaxes that encapsulate Pixel Data (PS3.5 A.4, 8.2): every JPEG, JPEG-LS,
#: JPEG 2000, MPEG and HEVC syntax (1.2.840.10008.1.2.4.x but JPIP's, which reference pixel data
#: instead of holding it), RLE, Encapsulated Uncompressed and Deflated Image Frame Compression.
_COMPRESSED_FAMILY = "1.2.840.10008.1.2.4."
_ENCAPSULATING = frozenset({RLE_LOSSLESS, ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.2.8.1"})
_JPIP = frozenset({"1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.95"})


def encapsulates_pixel_data(transfer_syntax: str) -> bool | None:
    """Whether a transfer syntax encapsulates Pixel Data (PS3.5 A.4), or None when that is not
    known of it: a private syntax, or one that references its pixel data (JPIP)."""
    if transfer_syntax in NATIVE_TRANSFER_SYNTAXES:
        return False
    if transfer_syntax in _JPIP:
        return None
    if transfer_syntax in _ENCAPSULATING or transfer_syntax.startswith(_COMPRESSED_FAMILY):
        return True
    return None


def uid_name(uid: str) -> str:
    """Return a human readable name for *uid* (PS3.6 Annex A).

    Looks in :data:`WELL_KNOWN_UIDS` first, then in pydicom's UID dictionary;
    an unknown UID is returned unchanged, so the result is always printable.
    """
    name = WELL_KNOWN_UIDS.get(uid)
    if name is not None:
        return name
    from pydicom.uid import UID  # here, not at the top: the decoder itself needs no pydicom

    try:
        return str(UID(uid).name)
    except Exception:  # pydicom's lookup must never turn a log line into a crash
        return uid
