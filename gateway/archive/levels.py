"""Which level of the Q/R information model an attribute belongs to, and the compact copy
of each level's attributes that the index keeps so that any return key can be answered.

A level's copy is the DICOM JSON (PS3.18 F.2) of one instance's top-level elements of that
level, text decoded to Unicode by pydicom with the file's Specific Character Set, packed
with zlib. The patient, study and series copies come from the latest instance indexed
under them (a corrected resend corrects the study); the instance copy is the instance's own
remaining attributes. Left out, to keep 1,000,000 instances at about 1 KB each: the file
meta group, bulk data (OB/OW/OF/OD/OL/OV/UN) and any element whose JSON is longer than
MAX_ELEMENT_JSON (a long sequence such as per-frame functional groups).
"""

from __future__ import annotations

import json
import unicodedata
import zlib
from typing import Any

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
LEVELS = (PATIENT, STUDY, SERIES, IMAGE)

BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
MAX_ELEMENT_JSON = 2048
SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052


def _tags(*keywords: str) -> frozenset[int]:
    out = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise KeyError(keyword)
        out.add(tag)
    return frozenset(out)


# Group 0010 is the patient's, except what describes the patient at the time of a study
# (Patient Study module) or the series' anatomy.
_PATIENT_OUTSIDE_0010 = _tags("ReferencedPatientSequence", "PatientIdentityRemoved")
_STUDY_TAGS = _tags(
    "StudyDate", "StudyTime", "AccessionNumber", "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName", "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName", "StudyDescription", "ProcedureCodeSequence",
    "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence", "ReferencedStudySequence", "StudyInstanceUID", "StudyID",
    "RequestingService", "RequestedProcedureDescription", "StudyComments",
    "ReasonForPerformedProcedureCodeSequence", "AdmissionID", "IssuerOfAdmissionIDSequence",
    "ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    # Patient Study module (group 0010, but per study)
    "PatientAge", "PatientSize", "PatientWeight", "PatientSizeCodeSequence", "Occupation",
    "AdditionalPatientHistory", "MedicalAlerts", "Allergies", "SmokingStatus",
    "PregnancyStatus", "LastMenstrualDate",
)  # fmt: skip
_SERIES_TAGS = _tags(
    "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
    "SeriesDescriptionCodeSequence", "SeriesDate", "SeriesTime", "Laterality",
    "BodyPartExamined", "ProtocolName", "PerformingPhysicianName", "OperatorsName",
    "ReferencedPerformedProcedureStepSequence", "RequestAttributesSequence",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepID", "PerformedProcedureStepDescription",
    "PerformedProtocolCodeSequence", "PatientPosition", "AnatomicalOrientationType",
    "SmallestPixelValueInSeries", "LargestPixelValueInSeries", "FrameOfReferenceUID",
    "PositionReferenceIndicator", "NumberOfSeriesRelatedInstances",
    # General Equipment module: one device makes a series
    "Manufacturer", "InstitutionName", "InstitutionAddress", "StationName",
    "InstitutionalDepartmentName", "ManufacturerModelName", "DeviceSerialNumber",
    "SoftwareVersions",
)  # fmt: skip
_PATIENT_COUNTS = _tags(
    "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
)  # fmt: skip


def level_of(tag: int) -> str:
    """The level whose copy holds `tag` (anything not patient, study or series: IMAGE)."""
    if tag in _STUDY_TAGS:
        return STUDY
    if tag in _SERIES_TAGS:
        return SERIES
    if tag >> 16 == 0x0010 or tag in _PATIENT_OUTSIDE_0010 or tag in _PATIENT_COUNTS:
        return PATIENT
    return IMAGE


def split(ds: Dataset) -> dict[str, dict[str, Any]]:
    """The DICOM JSON of `ds`'s kept top-level elements, by level."""
    out: dict[str, dict[str, Any]] = {level: {} for level in LEVELS}
    for elem in ds:  # iterating decodes each value with the dataset's character set
        tag = int(elem.tag)
        if tag >> 16 == 0x0002 or tag & 0xFFFF == 0 or elem.VR in BULK_VRS:
            continue
        if tag in (SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL):
            continue
        try:
            value = elem.to_json_dict(None, MAX_ELEMENT_JSON)
        except ValueError:  # a value DICOM JSON cannot carry (IS "1A"): not answerable
            continue
        if len(json.dumps(value, ensure_ascii=False)) > MAX_ELEMENT_JSON:
            continue
        out[level_of(tag)][f"{tag:08X}"] = value
    return out


def pack(attrs: dict[str, Any]) -> bytes:
    return zlib.compress(json.dumps(attrs, ensure_ascii=False, separators=(",", ":")).encode())


def unpack(blob: bytes | None) -> dict[str, Any]:
    return json.loads(zlib.decompress(blob)) if blob else {}


def charset_of(ds: Dataset) -> str:
    """SpecificCharacterSet as one backslash-joined string ('' for the default repertoire)."""
    value = ds.get("SpecificCharacterSet", "")
    return value if isinstance(value, str) else "\\".join(value)


def text(ds: Dataset, keyword: str) -> str:
    """An element's value as stored text: multiple values joined by backslash, stripped."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def pn_text(value: dict[str, str] | str) -> str:
    """A DICOM JSON person name as the `Alphabetic=Ideographic=Phonetic` string."""
    if isinstance(value, str):
        return value
    groups = (value.get("Alphabetic", ""), value.get("Ideographic", ""), value.get("Phonetic", ""))
    return "=".join(groups).rstrip("=")


def fold(name: str) -> str:
    """The case-insensitive matching key of a person name (fuzzy matching)."""
    return unicodedata.normalize("NFC", name).casefold()


def date_key(value: str) -> str:
    """YYYYMMDD; ACR-NEMA's YYYY.MM.DD still arrives from old modalities."""
    return value.strip().replace(".", "")


def time_key(value: str, *, high: bool = False) -> str:
    """HHMMSS.FFFFFF, comparable as text. A value stands for the interval of its precision:
    `10` is 10:00:00.000000 as a lower bound and 10:59:59.999999 as an upper bound."""
    whole, _, frac = value.strip().replace(":", "").partition(".")
    pad = "235959" if high else "000000"
    whole = (whole + pad[len(whole) :])[:6]
    frac = (frac + ("999999" if high else "000000"))[:6]
    return f"{whole}.{frac}"


def datetime_key(value: str, *, high: bool = False) -> str:
    """YYYYMMDDHHMMSS.FFFFFF, padded as time_key does; a UTC offset is ignored."""
    value = value.strip()
    for sign in "+-":
        if sign in value[8:]:
            value = value[: 8 + value[8:].index(sign)]
    date, rest = value[:8], value[8:]
    date = (date + ("99991231" if high else "00000000")[len(date) :])[:8]
    return date + time_key(rest, high=high)
