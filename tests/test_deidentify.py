"""De-identification (gateway.deidentify): PS3.15 Annex E, every row of Table E.1-1.

The expected action of each row under each option set is derived here from the standard's
table (the shared JSON), not from the module's copy of it, by the rules the module docstring
sets out for combination codes and options. Every attribute is tried at the top level and
inside a sequence item, with a sentinel value of a valid form for its VR.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

import pytest
from pydicom import config, dcmread, dcmwrite
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pydicom.valuerep import validate_value

from gateway.deid_table import OPTION_COLUMNS, TABLE_E1_1
from gateway.deidentify import (
    OPTIONS,
    Deidentifier,
    DeidSettings,
    PseudonymCollision,
    PseudonymStore,
    parse_settings,
)
from tests.peers import ROOT, corpus_dir

SECRET = b"a test secret of 32 bytes length"
STANDARD_JSON = ROOT.parent / "shared" / "standard" / "confidentiality_profile_attributes.json"
COLUMN = {
    "retain_safe_private": "rtnSafePrivOpt",
    "retain_uids": "rtnUIDsOpt",
    "retain_device_identity": "rtnDevIdOpt",
    "retain_institution_identity": "rtnInstIdOpt",
    "retain_patient_characteristics": "rtnPatCharsOpt",
    "retain_long_full_dates": "rtnLongFullDatesOpt",
    "retain_long_modified_dates": "rtnLongModifDatesOpt",
    "clean_descriptors": "cleanDescOpt",
    "clean_structured_content": "cleanStructContOpt",
    "clean_graphics": "cleanGraphOpt",
}
OPTION_SETS = [
    (),
    *((o,) for o in sorted(OPTIONS)),
    tuple(sorted(OPTIONS - {"retain_long_full_dates"})),
]
CONTAINER = 0x52009229  # Shared Functional Groups Sequence: not in Table E.1-1
UID_RE = re.compile(r"2\.25\.(0|[1-9][0-9]*)")
BINARY = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
TEXT = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"}


@lru_cache(maxsize=1)
def standard_rows() -> list[dict]:
    assert STANDARD_JSON.exists(), f"{STANDARD_JSON} missing: the tests need ../shared"
    return json.loads(STANDARD_JSON.read_text())


def table_lines(rows: list[dict]) -> list[str]:
    """gateway/deid_table.py's TABLE_E1_1, regenerated from the JSON (print it to update)."""
    lines = []
    for row in sorted(rows, key=lambda r: r["id"]):
        tag = "(GGGG,EEEE)" if row["tag"].startswith("(GGGG") else row["tag"]
        flags = "".join(row.get(c, ".") for c in OPTION_COLUMNS)
        lines.append(f"{tag} {row['basicProfile']:<6} {flags} {' '.join(row['name'].split())}")
    return lines


def test_table_is_the_standards() -> None:
    assert TABLE_E1_1.splitlines() == table_lines(standard_rows())


# --- conformance: every attribute, every option ---------------------------------------------


@dataclass
class Case:
    tag: int
    vr: str
    label: str  # the path a top-level Change carries
    expect: str  # X Z D U U* K C PID PNAME
    sentinel: object
    graphics: bool = False  # C from Clean Graphics


def instance_tag(text: str) -> int | None:
    """A tag standing for a table row; repeating groups get their first group."""
    if text == "(50XX,XXXX)":
        return 0x50003000  # Curve Data
    if text == "(60XX,3000)":
        return 0x60003000  # Overlay Data
    if text == "(60XX,4000)":
        return 0x60024000  # Overlay Comments (another group: Overlay Data takes its group)
    if text.startswith("(GGGG"):
        return None  # private attributes: test_private_* below
    return int(text[1:5] + text[6:10], 16)


def sentinel(vr: str, i: int) -> object:
    """A value of valid form for the VR, unique to row i, searchable in the written bytes."""
    day = date(1800, 1, 1) + timedelta(days=400 * i)  # further apart than any date shift
    if vr == "SQ":
        item = Dataset()
        item.CodeMeaning = f"SQM{i:04d}"  # LO, not in the table
        item.TextValue = f"SQT{i:04d}"  # UT, not in the table
        return Sequence([item])
    if vr in BINARY:
        return f"SENTB{i:04d}".encode() + b"_" * 7  # 16 bytes: whole words for OF/OD/OL/OV
    return {
        "PN": f"Sentinel{i:04d}^Given{i:04d}",
        "DA": day.strftime("%Y%m%d"),
        "DT": day.strftime("%Y%m%d") + f"101112.{i:04d}",
        "TM": f"1011{i % 60:02d}.{i:04d}",
        "AS": f"{i % 1000:03d}Y",
        "DS": f"-{i}.25",
        "IS": f"-{700000 + i}",
        "UI": f"1.2.826.0.1.3680043.9999.{i}",
        "UR": f"http://sentinel.example/{i:04d}",
        "US": 7,
        "SS": 7,
        "UL": 7,
        "SL": 7,
        "UV": 7,
        "SV": 7,
        "FL": 7.5,
        "FD": 7.5,
        "AT": 0x00100010,
    }.get(vr, f"SENT{i:04d}")


def expected(row: dict, options: tuple[str, ...]) -> str:
    """The action the module docstring's rules give this row under these options."""
    chosen = {row[COLUMN[o]] for o in options if COLUMN[o] in row}
    if row["tag"] == "(0010,0020)":
        return "PID"
    if row["tag"] == "(0010,0010)":
        return "PNAME"
    if "C" in chosen:
        return "C"
    if "K" in chosen:
        return "K"
    basic = row["basicProfile"]
    if basic == "X/Z" and row["tag"] != "(0040,0555)" and row_vr(row) == "SQ":
        return "X"  # an empty Type 3 sequence is invalid; Acquisition Context is Type 2
    # sentinels are never empty, so Z/D and X/Z/D take D
    return {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U*"}.get(basic, basic)


def row_vr(row: dict) -> str:
    tag = instance_tag(row["tag"])
    return "" if tag is None else dictionary_VR(tag).split(" or ")[0]


def fallback(row: dict) -> str:
    """What C cannot clean gets: the row's basic action, resolved as above."""
    return expected({"tag": row["tag"], "basicProfile": row["basicProfile"]}, ())


def cases(options: tuple[str, ...]) -> list[Case]:
    out = []
    for i, row in enumerate(standard_rows()):
        tag = instance_tag(row["tag"])
        if tag is None:
            continue
        vr = row_vr(row)
        kw = keyword_for_tag(tag)
        label = f"{kw} ({tag >> 16:04X},{tag & 0xFFFF:04X})" if kw else row["tag"]
        graphics = "clean_graphics" in options and row.get("cleanGraphOpt") == "C"
        exp = expected(row, options)
        if exp == "C" and vr in BINARY and not graphics:
            exp = fallback(row)  # a binary timestamp cannot be cleaned
        out.append(Case(tag, vr, label, exp, sentinel(vr, i), graphics))
    return out


def build(cs: list[Case]) -> Dataset:
    """Every case at the top level and in an item of an unlisted sequence."""
    ds, item = Dataset(), Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    for c in cs:
        if c.tag >> 16 == 0x0002:  # File Meta exists at the top level only
            ds.file_meta.add_new(c.tag, c.vr, c.sentinel)
            continue
        for target in (ds, item):
            value = c.sentinel
            if c.vr == "SQ":
                value = copy.deepcopy(value)  # an item of its own per place
            target.add_new(c.tag, c.vr, value)
    ds.add_new(CONTAINER, "SQ", Sequence([item]))
    return ds


def check(c: Case, holder: Dataset, path: str, changes: dict[str, str], deid: Deidentifier) -> None:
    """The value and the change record of one case in one place."""
    where = f"{path} under {c.expect}"
    recorded = changes.get(path)
    if c.expect == "X":
        assert c.tag not in holder, where
        assert recorded == "removed", where
        return
    assert c.tag in holder, where
    value = holder[c.tag].value
    pid = str(sentinel("LO", PID_ROW))
    if c.expect == "Z":
        assert holder[c.tag].is_empty, where
        assert recorded == "emptied", where
    elif c.vr == "SQ":
        assert len(value) == 1, where
        text = value[0].TextValue
        if c.expect == "D":  # a dummy sequence: readable values below it are dummies
            assert value[0].CodeMeaning == text == "ANONYMIZED", where
        else:  # K, U*, C: kept and walked (clean: nothing identifying to take out)
            assert value[0].CodeMeaning == c.sentinel[0].CodeMeaning, where
            assert text == c.sentinel[0].TextValue, where
        assert recorded == ("kept" if c.expect == "K" else None), where
    elif c.expect == "D":
        assert value != c.sentinel and not holder[c.tag].is_empty, where
        if c.vr == "UI":
            assert UID_RE.fullmatch(value), where
        else:
            validate_value(c.vr, value, config.RAISE)
        assert recorded == "dummy", where
    elif c.expect in ("U", "U*"):
        assert UID_RE.fullmatch(value) and value == deid.uid(c.sentinel), where
        assert recorded == "replaced", where
    elif c.expect == "K" or (c.expect == "C" and (c.vr in TEXT or c.vr == "TM" or c.graphics)):
        assert value == c.sentinel, where
        assert recorded == "kept", where
    elif c.expect == "C":  # DA / DT under Modified Dates
        back = timedelta(days=deid.shift_days(pid))
        old = date(int(c.sentinel[:4]), int(c.sentinel[4:6]), int(c.sentinel[6:8]))
        assert value == (old - back).strftime("%Y%m%d") + c.sentinel[8:], where
        assert recorded == "shifted", where
    elif c.expect == "PID":
        assert value == deid.pseudonym(deid.settings.patient_id_template, pid), where
        assert recorded == "replaced", where
    elif c.expect == "PNAME":
        assert value == deid.pseudonym(deid.settings.patient_name_template, pid), where
        assert recorded == "replaced", where
    else:
        raise AssertionError(f"{where}: no check")


PID_ROW = next(i for i, r in enumerate(standard_rows()) if r["tag"] == "(0010,0020)")


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "+".join(o) or "basic")
def test_every_attribute_every_option(options: tuple[str, ...]) -> None:
    cs = cases(options)
    ds = build(cs)
    deid = Deidentifier(DeidSettings(options=frozenset(options)), SECRET)
    changes = {c.path: c.action for c in deid.apply(ds)}
    item = ds[CONTAINER].value[0]
    container = keyword_for_tag(CONTAINER)
    for c in cs:
        if c.tag >> 16 == 0x0002:
            path = "file_meta.MediaStorageSOPInstanceUID (0002,0003)"
            check(c, ds.file_meta, path, changes, deid)
            continue
        check(c, ds, c.label, changes, deid)
        check(c, item, f"{container}[0].{keyword_for_tag(c.tag) or c.label}", changes, deid)
    assert ds.PatientIdentityRemoved == "YES"
    codes = [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    assert codes[0] == "113100" and len(codes) == 1 + len(options)
    temporal = {"retain_long_modified_dates": "MODIFIED", "retain_long_full_dates": "UNMODIFIED"}
    assert ds.LongitudinalTemporalInformationModified == next(
        (v for k, v in temporal.items() if k in options), "REMOVED"
    )

    # No sentinel of an attribute whose value should be gone survives in the written bytes.
    for tag in [t for t in list(ds.keys()) if t >> 16 == 0]:  # command elements: not in a file
        del ds[tag]
    for tag in [t for t in list(item.keys()) if t >> 16 == 0]:
        del item[tag]
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    written = buf.getvalue()
    for c in cs:
        if c.expect in ("K", "U*") or (c.expect == "C" and c.vr not in ("DA", "DT")):
            continue
        if isinstance(c.sentinel, int | float):
            continue  # numbers are not searchable in bytes; check() tested them
        if c.vr == "SQ":  # removed, emptied or dummy: nothing of its item's text is left
            needles = [c.sentinel[0].CodeMeaning.encode(), c.sentinel[0].TextValue.encode()]
        else:
            needles = [c.sentinel if isinstance(c.sentinel, bytes) else str(c.sentinel).encode()]
        for needle in needles:
            assert needle not in written, f"{c.label}: {needle!r} survived {c.expect}"


def test_expected_actions_cover_every_code() -> None:
    seen = {c.expect for o in OPTION_SETS for c in cases(o)}
    assert seen == {"X", "Z", "D", "U", "U*", "K", "C", "PID", "PNAME"}


# --- UIDs, pseudonyms, dates ------------------------------------------------------------------


def instance(study: str, series: str, sop: str, **extra: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = study + ".9"
    ds.PatientID = "P-12345"
    ds.PatientName = "Doe^Jane"
    ds.StudyDate = "20240229"
    ds.StudyDescription = "CT abdomen Doe follow-up 20240229"
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def test_uids_are_consistent_across_instances_and_sends() -> None:
    study, s1, s2 = "1.2.3.4", "1.2.3.4.1", "1.2.3.4.2"
    first = instance(study, s1, "1.2.3.4.1.1")
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = "1.2.3.4.1.1"
    second = instance(study, s2, "1.2.3.4.2.1", ReferencedImageSequence=Sequence([ref]))
    deid = Deidentifier(DeidSettings(), SECRET)
    changes = deid.apply(first) + deid.apply(second)

    assert first.StudyInstanceUID == second.StudyInstanceUID != study
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID
    assert first.SeriesInstanceUID != second.SeriesInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert second.ReferencedImageSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert second.ReferencedImageSequence[0].ReferencedSOPClassUID == CTImageStorage
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert first.SOPClassUID == CTImageStorage
    for ds in (first, second):
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert UID_RE.fullmatch(uid) and len(uid) <= 64
    paths = {c.path for c in changes}
    assert "ReferencedImageSequence[0].ReferencedSOPInstanceUID" in paths

    # A second send, by another gateway process with the same secret: the same UIDs.
    again = instance(study, s1, "1.2.3.4.1.1")
    Deidentifier(DeidSettings(), SECRET).apply(again)
    assert again.SOPInstanceUID == first.SOPInstanceUID
    other = instance(study, s1, "1.2.3.4.1.1")
    Deidentifier(DeidSettings(), b"another secret, 32 bytes long..").apply(other)
    assert other.StudyInstanceUID != first.StudyInstanceUID


def test_modified_dates_keep_intervals_per_patient() -> None:
    deid = Deidentifier(
        DeidSettings(options=frozenset({"retain_long_modified_dates"}), max_date_shift_days=30),
        SECRET,
    )
    a = instance("1.2.5", "1.2.5.1", "1.2.5.1.1", SeriesDate="20240301", AcquisitionTime="101010")
    b = instance("1.2.6", "1.2.6.1", "1.2.6.1.1", StudyDate="20240310")
    deid.apply(a)
    deid.apply(b)
    shift = deid.shift_days("P-12345")
    assert 1 <= shift <= 30
    assert a.StudyDate == (date(2024, 2, 29) - timedelta(days=shift)).strftime("%Y%m%d")
    gap = date.fromisoformat(b.StudyDate[:4] + "-" + b.StudyDate[4:6] + "-" + b.StudyDate[6:])
    assert gap - date(2024, 2, 29) + timedelta(days=shift) == timedelta(days=10)
    assert a.AcquisitionTime == "101010"
    assert a.LongitudinalTemporalInformationModified == "MODIFIED"


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # pydicom, on making the odd values
def test_odd_values_never_raise() -> None:
    """Bad dates fall back to the row's basic action; bad UIDs are replaced all the same."""
    ds = instance("not a uid", "1.2", "1.2.3", StudyDate="2024-13-45", SeriesDate="garbage")
    ds.AcquisitionDateTime = "20"
    ds.ContentDate = "20240230"
    ds.add_new(0x00081155, "UI", "")  # empty Referenced SOP Instance UID at the top level
    del ds.file_meta  # a C-STORE handler's dataset has no File Meta
    deid = Deidentifier(DeidSettings(options=frozenset({"retain_long_modified_dates"})), SECRET)
    changes = {c.path: c for c in deid.apply(ds)}
    assert ds.StudyDate == "" and changes["StudyDate (0008,0020)"].action == "emptied"
    assert ds.SeriesDate == "19000101" and changes["SeriesDate (0008,0021)"].action == "dummy"
    assert changes["AcquisitionDateTime (0008,002A)"].action == "dummy"
    assert changes["ContentDate (0008,0023)"].action == "dummy"
    assert UID_RE.fullmatch(ds.StudyInstanceUID)
    assert "ReferencedSOPInstanceUID" in ds and ds.ReferencedSOPInstanceUID == ""


def test_clean_descriptors_take_out_what_was_removed() -> None:
    ds = instance("1.2", "1.2.1", "1.2.1.1", SeriesDescription="Knee JANE left")
    ds.OtherPatientNames = "Roe^Richard"
    ds.ImageComments = "seen by Richard on 29.02.2024"
    deid = Deidentifier(DeidSettings(options=frozenset({"clean_descriptors"})), SECRET)
    deid.apply(ds)
    assert ds.StudyDescription == "CT abdomen XXX follow-up XXXXXXXX"
    assert ds.SeriesDescription == "Knee XXXX left"
    assert ds.ImageComments == "seen by XXXXXXX on XXXXXXXXXX"


def test_patient_pseudonyms_follow_templates() -> None:
    settings = parse_settings(
        {"patient_id_template": "S-{hash:8}", "patient_name_template": "Study^{hash:6}"}
    )
    deid = Deidentifier(settings, SECRET)
    a, b = instance("1.2", "1.2.1", "1.2.1.1"), instance("1.3", "1.3.1", "1.3.1.1")
    deid.apply(a)
    deid.apply(b)
    assert re.fullmatch(r"S-[0-9A-F]{8}", a.PatientID) and a.PatientID == b.PatientID
    assert a.PatientID[2:8] == str(a.PatientName)[6:]
    assert str(a.PatientName).startswith("Study^")


# --- private attributes, curves and overlays -----------------------------------------------------


def with_private(ds: Dataset) -> Dataset:
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "IS", "1000")  # B value: safe
    block.add_new(0x10, "LO", "Doe^Jane's scanner room")  # not on the list
    other = ds.private_block(0x0029, "SOMEONE", create=True)
    other.add_new(0x01, "LO", "private sentinel")
    return ds


def test_private_attributes_go() -> None:
    ds = with_private(instance("1.2", "1.2.1", "1.2.1.1"))
    ds.ReferencedImageSequence = Sequence([with_private(Dataset())])
    Deidentifier(DeidSettings(options=frozenset({"retain_safe_private"})), SECRET).apply(ds)
    assert not [t for t in list(ds.keys()) if t >> 16 & 1]
    assert not [t for t in list(ds.ReferencedImageSequence[0].keys()) if t >> 16 & 1]


def test_retain_safe_private_keeps_only_the_listed_ones() -> None:
    ds = with_private(instance("1.2", "1.2.1", "1.2.1.1"))
    settings = parse_settings(
        {"options": ["retain_safe_private"], "safe_private": ["(0019,xx0C) SIEMENS MR HEADER"]}
    )
    Deidentifier(settings, SECRET).apply(ds)
    assert sorted(t for t in list(ds.keys()) if t >> 16 & 1) == [0x00190010, 0x0019100C]
    assert ds[0x0019100C].value == "1000"
    basic = with_private(instance("1.2", "1.2.1", "1.2.1.1"))
    Deidentifier(DeidSettings(safe_private=settings.safe_private), SECRET).apply(basic)
    assert not [t for t in list(basic.keys()) if t >> 16 & 1]  # the list needs the option


def overlay(ds: Dataset, group: int) -> Dataset:
    ds.add_new(group << 16 | 0x0010, "US", 4)
    ds.add_new(group << 16 | 0x0011, "US", 4)
    ds.add_new(group << 16 | 0x0040, "CS", "G")
    ds.add_new(group << 16 | 0x0050, "SS", [1, 1])
    ds.add_new(group << 16 | 0x0100, "US", 1)
    ds.add_new(group << 16 | 0x0102, "US", 0)
    ds.add_new(group << 16 | 0x3000, "OW", b"\xff\x00")
    ds.add_new(group << 16 | 0x4000, "LT", "overlay of Doe")
    return ds


def test_overlays_go_whole_or_stay_with_clean_graphics() -> None:
    ds = overlay(overlay(instance("1.2", "1.2.1", "1.2.1.1"), 0x6000), 0x6002)
    Deidentifier(DeidSettings(), SECRET).apply(ds)
    assert not [t for t in list(ds.keys()) if t >> 24 == 0x60]
    kept = overlay(instance("1.2", "1.2.1", "1.2.1.1"), 0x6000)
    Deidentifier(DeidSettings(options=frozenset({"clean_graphics"})), SECRET).apply(kept)
    assert kept[0x60003000].value == b"\xff\x00"
    assert kept[0x60004000].value == "overlay of XXX"


# --- settings ------------------------------------------------------------------------------------


def test_parse_settings() -> None:
    s = parse_settings(
        {
            "options": ["retain_uids", "clean_descriptors"],
            "patient_id_template": "ANON-{hash:8}",
            "max_date_shift_days": 30,
        }
    )
    assert s.options == {"retain_uids", "clean_descriptors"}
    assert s.patient_id_template == "ANON-{hash:8}" and s.max_date_shift_days == 30
    assert parse_settings({}) == DeidSettings()
    assert set(COLUMN) == OPTIONS


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"optoins": []}, "optoins: unknown key"),
        ({"options": ["retain_everything"]}, "options: unknown option 'retain_everything'"),
        ({"options": "retain_uids"}, "options: a list"),
        (
            {"options": ["retain_long_full_dates", "retain_long_modified_dates"]},
            "options: retain_long_full_dates and retain_long_modified_dates exclude",
        ),
        ({"patient_id_template": "ANON"}, "patient_id_template: needs {hash}"),
        ({"patient_id_template": "ANON-{id}-{hash}"}, "patient_id_template: the only placeholder"),
        ({"patient_name_template": "A\\{hash}"}, "patient_name_template: printable ASCII"),
        ({"patient_id_template": "X" * 60 + "{hash:8}"}, "patient_id_template: longer than"),
        ({"patient_id_template": "{hash:2}"}, "patient_id_template: {hash:N} takes N"),
        ({"max_date_shift_days": 0}, "max_date_shift_days: a whole number"),
        ({"max_date_shift_days": True}, "max_date_shift_days: a whole number"),
        ({"safe_private": ["(0018,xx0C) EVEN GROUP"]}, "safe_private: "),
    ],
)
def test_parse_settings_rejects(raw: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_settings(raw)
    assert str(err.value).startswith(message)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        Deidentifier(DeidSettings(), b"short")


# --- the pseudonym store ------------------------------------------------------------------------


def test_store_reidentifies_and_keeps_the_originals_sealed(tmp_path: Path) -> None:
    path = tmp_path / "pseudonyms.db"
    store = PseudonymStore(path, SECRET)
    deid = Deidentifier(DeidSettings(), SECRET, store)
    ds = instance("1.2", "1.2.1", "1.2.1.1")
    ds.PatientID, ds.PatientName = "MRN-0042-ORIGINAL", "Original^Patricia"
    deid.apply(ds)
    assert store.lookup(ds.PatientID) == ("MRN-0042-ORIGINAL", "Original^Patricia")
    assert store.lookup("ANON-000000000000") is None
    store.close()

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"MRN-0042" not in raw and b"Patricia" not in raw

    again = PseudonymStore(path, SECRET)  # another process, later
    assert again.lookup(ds.PatientID) == ("MRN-0042-ORIGINAL", "Original^Patricia")
    again.close()
    with pytest.raises(ValueError, match="secret does not match"):
        PseudonymStore(path, b"another secret, 32 bytes long..")


def test_store_refuses_a_collision(tmp_path: Path) -> None:
    store = PseudonymStore(tmp_path / "p.db", SECRET)
    store.record("ANON-1", "A", "Aa^A")
    store.record("ANON-1", "A", "Aa^B")  # a new name for the same patient: updated
    assert store.lookup("ANON-1") == ("A", "Aa^B")
    with pytest.raises(PseudonymCollision):
        store.record("ANON-1", "B", "Bb^B")
    store.close()


# --- dciodvfy on real images: no new errors -------------------------------------------------------

DCIODVFY_FILES = [
    "pydicom/test_files/CT_small.dcm",  # CT, GE private groups
    "deid-data/humans/ctbrain1.dcm",  # CT
    "pydicom/test_files/MR_small.dcm",  # MR
    "pydicom-data/MR-SIEMENS-DICOM-WithOverlays.dcm",  # MR, overlays, Siemens private
    "pydicom-data/US1_UNCR.dcm",  # US
    "deid-data/ultrasounds/GREYSCALE_CINE.dcm",  # US multi-frame, sequences
    "pydicom-data/emri_small.dcm",  # enhanced MR multi-frame, functional groups
    "pydicom/test_files/test-SR.dcm",  # SR: a dummy Content Sequence
]


def dciodvfy_errors(path: Path) -> set[str]:
    """Error lines, with values (<...>, numbers and UIDs) taken out: only new kinds count."""
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, timeout=60)
    text = (out.stdout + out.stderr).decode("latin-1")
    lines = [line for line in text.split("\n") if line.startswith("Error")]
    return {
        re.sub(r"\b[0-9][0-9.]*\b", "N", re.sub(r"(=|value) <[^>]*>", r"\1 <>", x)) for x in lines
    }


def corpus_files() -> Iterator[Path]:
    root = corpus_dir()
    for name in DCIODVFY_FILES:
        assert (root / name).exists(), f"{root / name} missing: bash ../shared/corpus/build.sh"
        yield root / name


@pytest.mark.filterwarnings("ignore:The value length")  # GREYSCALE_CINE's Reason for Study
@pytest.mark.parametrize(
    "options",
    [(), tuple(sorted(OPTIONS - {"retain_long_full_dates"}))],
    ids=["basic", "all-options"],
)
def test_dciodvfy_finds_no_new_errors(options: tuple[str, ...], tmp_path: Path) -> None:
    assert shutil.which("dciodvfy"), "dciodvfy missing: apt-get install dicom3tools"
    deid = Deidentifier(DeidSettings(options=frozenset(options)), SECRET)
    for path in corpus_files():
        ds = dcmread(path)
        deid.apply(ds)
        out = tmp_path / path.name
        ds.save_as(out)
        new = dciodvfy_errors(out) - dciodvfy_errors(path)
        assert not new, f"{path.name}: {sorted(new)}"
