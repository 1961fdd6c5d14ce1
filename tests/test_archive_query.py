"""C-FIND matching and C-MOVE/C-GET selection over an index filled from the shared corpus.

Every expected result is computed here from the files' headers (read with pydicom) by a
plain matcher written for this test, following PS3.4 C.2.2.2, never from the index."""

from __future__ import annotations

import re
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.filewriter import dcmwrite

from gateway.archive.index import ArchiveIndex
from gateway.archive.query import QueryError, find, locate
from tests.test_archive_index import Model, corpus_headers, fill

CHARSET_FILES = ["chrX1", "chrX2", "chrH31", "chrH32", "chrI2", "chrJapMulti", "chrKoreanMulti"]


class Archive:
    def __init__(self, index: ArchiveIndex, headers: list[tuple[Path, Dataset]]) -> None:
        self.index = index
        self.headers = headers
        self.model = Model.of(headers)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Archive:
    headers = corpus_headers()
    index = ArchiveIndex(tmp_path_factory.mktemp("query") / "gateway.db")
    fill(index, headers)
    yield Archive(index, headers)
    index.close()


# -- the test's own matcher ------------------------------------------------------------
def text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, list) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def pad_time(t: str, fill: str) -> str:
    whole, _, frac = t.replace(":", "").partition(".")
    return (whole + fill[len(whole) :])[:6] + "." + (frac + fill[-1] * 6)[:6]


def expect(stored: str, query: str, vr: str, fuzzy: bool = False) -> bool:
    """Does one stored value match one query value (PS3.4 C.2.2.2, as read for this test)."""
    if query in ("", "*"):
        return True
    if vr == "UI":
        return stored in query.split("\\")
    if vr in ("DA", "TM"):
        if not stored:
            return False
        if vr == "DA":
            lo, _, hi = query.partition("-") if "-" in query else (query, "", query)
            stored = stored.replace(".", "")
            return (not lo or stored >= lo) and (not hi or stored <= hi)
        lo, _, hi = query.partition("-") if "-" in query else (query, "", query)
        value = pad_time(stored, "000000")
        return (not lo or value >= pad_time(lo, "000000")) and (
            not hi or value <= pad_time(hi, "595959")
        )
    alternatives = query.split("\\")
    if fuzzy:
        stored, alternatives = stored.lower(), [a.lower() for a in alternatives]
    for q in alternatives:
        pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in q)
        if re.fullmatch(pattern, stored, re.S):
            return True
    return False


VR = {
    "PatientID": "LO", "PatientName": "PN", "PatientSex": "CS", "PatientBirthDate": "DA",
    "StudyDate": "DA", "StudyTime": "TM", "AccessionNumber": "SH", "StudyDescription": "LO",
    "StudyInstanceUID": "UI", "ModalitiesInStudy": "CS", "SeriesInstanceUID": "UI",
    "Modality": "CS", "SeriesNumber": "IS", "SOPInstanceUID": "UI", "SOPClassUID": "UI",
    "InstanceNumber": "IS", "ReferringPhysicianName": "PN",
}  # fmt: skip


def record(a: Archive, level: str, uid: str) -> dict[str, Any]:
    """What the test knows of one entity: values by keyword, from the headers."""
    m = a.model
    if level == "PATIENT":
        ds = m.patient_ds[uid]  # type: ignore[index]
        return {k: text(ds, k) for k in VR}
    if level == "STUDY":
        patient, study = m.patient_ds[m.study_patient[uid]], m.study_ds[uid]
        out = {k: text(patient, k) for k in ("PatientID", "PatientName", "PatientSex")}
        out |= {k: text(study, k) for k in VR if k not in out}
        out["ModalitiesInStudy"] = sorted(m.modalities(uid))
        return out
    if level == "SERIES":
        return {k: text(m.series_ds[uid], k) for k in VR}
    return {k: text(m.instance[uid], k) for k in VR}


def entities(a: Archive, level: str) -> list[Any]:
    m = a.model
    return {
        "PATIENT": lambda: list(m.patients()),
        "STUDY": lambda: list(m.studies()),
        "SERIES": lambda: list(m.series()),
        "IMAGE": lambda: list(m.instance),
    }[level]()


def expected(a: Archive, level: str, keys: dict[str, str], fuzzy: bool = False) -> set[str]:
    out = set()
    for uid in entities(a, level):
        rec = record(a, level, uid)
        if all(
            any(expect(v, q, VR[k], fuzzy) for v in rec[k])
            if isinstance(rec[k], list)
            else expect(rec[k], q, VR[k], fuzzy)
            for k, q in keys.items()
        ):
            out.add(uid if level != "PATIENT" else uid[0])
    return out


UNIQUE = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}


def identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def run(a: Archive, root: str, level: str, fuzzy: bool = False, **keys: Any) -> list[Dataset]:
    return list(find(a.index, root, identifier(level, **keys), fuzzy_names=fuzzy))


def found(results: list[Dataset], level: str) -> set[str]:
    return {str(r.get(UNIQUE[level])) for r in results}


# -- matching ----------------------------------------------------------------------------
STUDY_CASES = [
    {"PatientID": "12345678"},
    {"PatientID": "ID1"},
    {"PatientID": "*MR?"},
    {"PatientName": "Doe^*"},
    {"PatientName": "*^J*"},
    {"PatientName": "CompressedSamples^?R?"},
    {"PatientName": "Buc^Jérôme"},
    {"PatientSex": "F"},
    {"StudyDate": "20200913"},
    {"StudyDate": "20030101-20051231"},
    {"StudyDate": "-19991231"},  # includes ACR-NEMA style 1994.11.05
    {"StudyDate": "20170101-"},
    {"StudyTime": "0800-1700"},
    {"StudyTime": "-1200"},
    {"AccessionNumber": "2"},
    {"StudyDescription": "*"},
    {"ModalitiesInStudy": "MR"},
    {"ModalitiesInStudy": "CT\\MR"},
    {"ModalitiesInStudy": "OT"},
    {"ModalitiesInStudy": "?T"},
    {"PatientName": "C*", "StudyDate": "20000101-", "ModalitiesInStudy": "CT"},
    {"PatientID": "", "StudyDescription": "", "ReferringPhysicianName": ""},  # universal
]


@pytest.mark.parametrize(
    "keys", STUDY_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items())
)
def test_study_root_study_level_matching(archive, keys):
    want = expected(archive, "STUDY", keys)
    got = run(archive, "STUDY", "STUDY", **keys)
    assert found(got, "STUDY") == want
    assert len(got) == len(want)  # one response per study


def test_uid_lists_and_every_value_returned(archive):
    uids = list(archive.model.studies())[:3]
    keys = {"StudyInstanceUID": "\\".join(uids), "ModalitiesInStudy": "", "PatientName": "",
            "NumberOfStudyRelatedInstances": "", "NumberOfStudyRelatedSeries": "",
            "StudyDate": ""}  # fmt: skip
    got = run(archive, "STUDY", "STUDY", **keys)
    assert found(got, "STUDY") == set(uids)
    m = archive.model
    for r in got:
        uid = r.StudyInstanceUID
        assert set(text(r, "ModalitiesInStudy").split("\\")) == m.modalities(uid)  # never empty
        assert int(r.NumberOfStudyRelatedInstances) == len(m.study_instances(uid))
        assert int(r.NumberOfStudyRelatedSeries) == len(m.studies()[uid])
        assert str(r.PatientName) == text(m.patient_ds[m.study_patient[uid]], "PatientName")
        assert r.StudyDate == text(m.study_ds[uid], "StudyDate").replace(".", "")


def test_fuzzy_person_names_are_case_insensitive_and_match_a_component_group(archive):
    for pattern in ("doe^*", "COMPRESSEDSAMPLES^M*", "citizen^jan"):
        strict = run(archive, "STUDY", "STUDY", PatientName=pattern)
        fuzzy = run(archive, "STUDY", "STUDY", True, PatientName=pattern)
        assert found(strict, "STUDY") == expected(archive, "STUDY", {"PatientName": pattern})
        assert found(fuzzy, "STUDY") == expected(archive, "STUDY", {"PatientName": pattern}, True)
        assert len(fuzzy) > len(strict)
    # 山田^太郎 is the ideographic group of two patients' names
    group = found(run(archive, "STUDY", "STUDY", True, PatientName="山田^太郎"), "STUDY")
    names = {str(archive.model.study_ds[u].PatientName) for u in group}
    assert names == {"Yamada^Tarou=山田^太郎=やまだ^たろう", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"}
    assert not run(archive, "STUDY", "STUDY", PatientName="山田^太郎")  # literal: whole value


def test_patient_root_every_level(archive):
    m = archive.model
    for keys in ({"PatientName": "*^*"}, {"PatientID": "ID1"}, {"PatientSex": "M"}):
        got = run(archive, "PATIENT", "PATIENT", NumberOfPatientRelatedStudies="", **keys)
        assert found(got, "PATIENT") == expected(archive, "PATIENT", keys)
        for r in got:
            studies = [s for s, p in m.study_patient.items() if p[0] == r.PatientID and s in
                       m.studies()]  # fmt: skip
            assert int(r.NumberOfPatientRelatedStudies) == len(studies)
    pid = "12345678"
    studies = {s for s in m.studies() if m.study_patient[s][0] == pid}
    assert found(run(archive, "PATIENT", "STUDY", PatientID=pid), "STUDY") == studies
    study = sorted(studies)[0]
    series = {s for s in m.series() if m.series_study[s] == study}
    got = run(archive, "PATIENT", "SERIES", PatientID=pid, StudyInstanceUID=study, Modality="")
    assert found(got, "SERIES") == series
    assert {r.Modality for r in got} == {m.series_ds[s].Modality for s in series}
    one = sorted(series)[0]
    sops = {i for i, ds in m.instance.items() if ds.SeriesInstanceUID == one}
    got = run(archive, "PATIENT", "IMAGE", PatientID=pid, StudyInstanceUID=study,
              SeriesInstanceUID=one, SOPClassUID="", InstanceNumber="")  # fmt: skip
    assert found(got, "IMAGE") == sops
    for r in got:
        assert r.SOPClassUID == m.instance[r.SOPInstanceUID].SOPClassUID


def test_study_root_series_and_image_levels(archive):
    m = archive.model
    all_studies = "\\".join(m.studies())
    for keys in ({"Modality": "MR"}, {"Modality": "C?"}, {"SeriesNumber": "1"}):
        got = run(archive, "STUDY", "SERIES", StudyInstanceUID=all_studies, **keys)
        assert found(got, "SERIES") == expected(archive, "SERIES", keys)
    for keys in ({"InstanceNumber": "1"}, {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}):
        got = run(archive, "STUDY", "IMAGE", StudyInstanceUID=all_studies,
                  SeriesInstanceUID="\\".join(m.series()), **keys)  # fmt: skip
        assert found(got, "IMAGE") == expected(archive, "IMAGE", keys)


def with_item(**keys: str) -> list[Dataset]:
    item = Dataset()
    for k, v in keys.items():
        setattr(item, k, v)
    return [item]


def items_with(ds: Dataset, sequence: str, keyword: str, value: str) -> bool:
    return any(str(it.get(keyword, "")) == value for it in ds.get(sequence, []))


def test_sequence_matching(archive):
    m = archive.model
    got = run(archive, "STUDY", "STUDY", ProcedureCodeSequence=with_item(CodeValue="TOU0065"))
    want = {u for u, ds in m.study_ds.items() if items_with(ds, "ProcedureCodeSequence",
                                                             "CodeValue", "TOU0065")}  # fmt: skip
    assert want and found(got, "STUDY") == want
    [r] = got[:1]
    assert r.ProcedureCodeSequence[0].CodeValue == "TOU0065"
    assert "CodeMeaning" not in r.ProcedureCodeSequence[0]  # only the item keys asked for
    ref = "1.2.124.113532.80.22151.0.20160201.113748.153293256"
    got = run(archive, "PATIENT", "PATIENT",
              ReferencedPatientSequence=with_item(ReferencedSOPInstanceUID=ref))  # fmt: skip
    want = {p[0] for p in m.patients() if items_with(m.patient_ds[p], "ReferencedPatientSequence",
            "ReferencedSOPInstanceUID", ref)}  # fmt: skip
    assert want and found(got, "PATIENT") == want
    got = run(archive, "STUDY", "SERIES", StudyInstanceUID="\\".join(m.studies()),
              RequestAttributesSequence=with_item(RequestedProcedureID="8000000000330109",
                                                  ScheduledProcedureStepID=""))  # fmt: skip
    want = {u for u, ds in m.series_ds.items() if items_with(ds, "RequestAttributesSequence",
            "RequestedProcedureID", "8000000000330109")}  # fmt: skip
    assert want and found(got, "SERIES") == want
    # an empty sequence is universal: every study, the stored items returned
    got = run(archive, "STUDY", "STUDY", ReferencedStudySequence=[])
    assert len(got) == len(m.studies())


# -- return keys, character sets, refusals, cancel ----------------------------------------
def test_only_requested_keys_and_unique_keys_come_back(archive):
    m = archive.model
    got = run(archive, "STUDY", "STUDY", PatientID="ID1", StudyDate="")
    assert got
    for r in got:
        assert {e.keyword for e in r} <= {"SpecificCharacterSet", "QueryRetrieveLevel",
                                          "PatientID", "StudyDate", "StudyInstanceUID"}  # fmt: skip
        assert r.QueryRetrieveLevel == "STUDY"
    study = sorted(m.studies())[0]
    [r, *_] = run(archive, "STUDY", "IMAGE", StudyInstanceUID=study,
                  SeriesInstanceUID=m.studies()[study][0])  # fmt: skip
    assert {e.keyword for e in r} - {"SpecificCharacterSet"} == {
        "QueryRetrieveLevel", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}  # fmt: skip
    # a key below the query level comes back empty; a key the index keeps per instance
    # (not a column) is answered from its stored copy
    [r, *_] = run(archive, "STUDY", "STUDY", StudyInstanceUID=study, Modality="")
    assert r.Modality in (None, "")
    sop = m.series()[m.studies()[study][0]][0]
    [r] = run(archive, "STUDY", "IMAGE", StudyInstanceUID=study,
              SeriesInstanceUID=m.studies()[study][0], SOPInstanceUID=sop, Rows="")  # fmt: skip
    assert r.Rows == m.instance[sop].get("Rows")


def wire(ds: Dataset) -> Dataset:
    """What the peer would read: the dataset encoded in its character set and decoded."""
    out = BytesIO()
    dcmwrite(out, ds, implicit_vr=True, little_endian=True)
    return dcmread(BytesIO(out.getvalue()), force=True)


@pytest.mark.parametrize("name", CHARSET_FILES)
def test_non_ascii_queries_and_responses_in_the_stored_character_set(archive, name):
    m = archive.model
    original = next(ds for p, ds in archive.headers if p.stem == name)
    person = str(original.PatientName)
    query = identifier("STUDY", PatientName=person, StudyInstanceUID="", StudyDescription="")
    query.SpecificCharacterSet = original.SpecificCharacterSet
    query = wire(query)  # the name travels encoded in the file's own character set
    assert str(query.PatientName) == person
    got = list(find(archive.index, "STUDY", query))
    want = {u for u in m.studies() if str(m.patient_ds[m.study_patient[u]].PatientName) == person}
    assert want and found(got, "STUDY") == want
    for r in got:
        stored = m.study_ds[r.StudyInstanceUID].SpecificCharacterSet
        assert r.SpecificCharacterSet == stored
        back = wire(r)  # written in the stored character set, read back
        assert str(back.PatientName) == person
        assert back.PatientName.original_string == original.PatientName.original_string


@pytest.mark.parametrize(
    "root, keys, reason",
    [
        ("STUDY", {"PatientID": "ID1"}, "QueryRetrieveLevel"),
        ("STUDY", {"QueryRetrieveLevel": "PATIENT"}, "not a level"),
        ("STUDY", {"QueryRetrieveLevel": "BOGUS"}, "not a level"),
        ("STUDY", {"QueryRetrieveLevel": "SERIES", "Modality": "CT"}, "StudyInstanceUID"),
        ("PATIENT", {"QueryRetrieveLevel": "STUDY", "StudyDate": ""}, "PatientID"),
        ("PATIENT", {"QueryRetrieveLevel": "IMAGE", "PatientID": "x", "StudyInstanceUID": "1"},
         "SeriesInstanceUID"),
    ],
)  # fmt: skip
def test_refusals(archive, root, keys, reason):
    ds = Dataset()
    for k, v in keys.items():
        setattr(ds, k, v)
    with pytest.raises(QueryError) as err:
        find(archive.index, root, ds)
    assert err.value.status == 0xA900 and reason in err.value.reason


def test_cancel_stops_between_responses(archive):
    calls = []
    results = find(archive.index, "STUDY", identifier("STUDY", StudyInstanceUID=""),
                   cancelled=lambda: len(calls) > 0)  # fmt: skip
    for r in results:
        calls.append(r)
    assert len(calls) == 1 and len(archive.model.studies()) > 1


# -- C-MOVE / C-GET selection ------------------------------------------------------------
def test_locate_every_instance_under_the_identified_entities(archive):
    m = archive.model
    studies = sorted(m.studies())[:2]
    got = locate(archive.index, "STUDY", identifier("STUDY", StudyInstanceUID="\\".join(studies)))
    want = {sop for s in studies for sop in m.study_instances(s)}
    assert {i.sop_instance_uid for i in got} == want and len(got) == len(want)
    for item in got:
        assert dcmread(item.path, stop_before_pixels=True, force=True).SOPInstanceUID == (
            item.sop_instance_uid
        )
    series = m.studies()[studies[0]][0]
    got = locate(archive.index, "STUDY",
                 identifier("SERIES", StudyInstanceUID=studies[0], SeriesInstanceUID=series))  # fmt: skip
    assert {i.sop_instance_uid for i in got} == set(m.series()[series])
    pid = "12345678"
    got = locate(archive.index, "PATIENT", identifier("PATIENT", PatientID=pid))
    want = {sop for s in m.studies() if m.study_patient[s][0] == pid
            for sop in m.study_instances(s)}  # fmt: skip
    assert {i.sop_instance_uid for i in got} == want
    with pytest.raises(QueryError):
        locate(archive.index, "STUDY", identifier("SERIES", SeriesInstanceUID=series))
