"""The archive index on the shared corpus: what add() and reindex() hold per level, the
duplicate policy of the archive destination, character sets kept as stored. Expected
values come from the files, read here with pydicom, never from the index."""

from __future__ import annotations

import csv
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread

from gateway.archive.index import ArchiveIndex, reindex
from gateway.destinations.archive import ArchiveStore
from gateway.errors import PermanentError
from gateway.queue import Job
from gateway.uids import is_valid_uid
from tests.peers import corpus_dir
from tests.synth import ct_series

UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def corpus_headers() -> list[tuple[Path, Dataset]]:
    """Every corpus file (MANIFEST order) whose header reads and has valid UIDs."""
    root = corpus_dir()
    with open(root / "MANIFEST.tsv", encoding="utf-8") as f:
        names = [row["name"] for row in csv.DictReader(f, delimiter="\t")]
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the corpus is full of odd values on purpose
        for name in names:
            try:
                ds = dcmread(root / name, stop_before_pixels=True, force=True)
            except Exception:
                continue
            if all(is_valid_uid(str(ds.get(k, ""))) for k in UIDS):
                out.append((root / name, ds))
    return out


@dataclass
class Model:
    """The archive as the documented rules say it must be after adding files in order: one
    instance per SOP UID (the last file wins), a series under the study of its last
    instance added, a study under the patient of its last instance added."""

    instance: dict[str, Dataset] = field(default_factory=dict)
    series_study: dict[str, str] = field(default_factory=dict)
    series_ds: dict[str, Dataset] = field(default_factory=dict)
    study_patient: dict[str, tuple[str, str]] = field(default_factory=dict)
    study_ds: dict[str, Dataset] = field(default_factory=dict)
    patient_ds: dict[tuple[str, str], Dataset] = field(default_factory=dict)

    @classmethod
    def of(cls, headers: list[tuple[Path, Dataset]]) -> Model:
        m = cls()
        for _, ds in headers:
            patient = (str(ds.get("PatientID", "")), str(ds.get("IssuerOfPatientID", "")))
            m.instance[ds.SOPInstanceUID] = ds
            m.series_study[ds.SeriesInstanceUID] = ds.StudyInstanceUID
            m.series_ds[ds.SeriesInstanceUID] = ds
            m.study_patient[ds.StudyInstanceUID] = patient
            m.study_ds[ds.StudyInstanceUID] = ds
            m.patient_ds[patient] = ds
        return m

    def series(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for sop, ds in self.instance.items():
            out.setdefault(ds.SeriesInstanceUID, []).append(sop)
        return out

    def studies(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for series in self.series():
            out.setdefault(self.series_study[series], []).append(series)
        return out

    def study_instances(self, study: str) -> list[str]:
        return [sop for s in self.studies()[study] for sop in self.series()[s]]

    def patients(self) -> dict[tuple[str, str], list[str]]:
        out: dict[tuple[str, str], list[str]] = {}
        for study in self.studies():
            out.setdefault(self.study_patient[study], []).append(study)
        return out

    def modalities(self, study: str) -> set[str]:
        return {self.series_ds[s].get("Modality") or "OT" for s in self.studies()[study]}


@pytest.fixture(scope="module")
def headers() -> list[tuple[Path, Dataset]]:
    return corpus_headers()


def fill(index: ArchiveIndex, headers: list[tuple[Path, Dataset]]) -> None:
    for path, ds in headers:
        index.add(ds, path, path.stat().st_size, path.stat().st_mtime)


def test_add_indexes_every_corpus_file_by_level(tmp_path, headers):
    assert len(headers) > 200
    index = ArchiveIndex(tmp_path / "gateway.db")
    fill(index, headers)
    model = Model.of(headers)
    assert index.counts() == {
        "patients": len(model.patients()),
        "studies": len(model.studies()),
        "series": len(model.series()),
        "instances": len(model.instance),
    }
    db = index.conn
    for study, series in model.studies().items():
        n_series, n_inst, modalities, patient_id = db.execute(
            "SELECT s.n_series, s.n_instances, s.modalities, p.patient_id FROM archive_studies s"
            " JOIN archive_patients p ON p.id = s.patient_ref WHERE s.study_uid = ?",
            (study,),
        ).fetchone()
        assert (n_series, n_inst) == (len(series), len(model.study_instances(study)))
        assert modalities and set(modalities.split("\\")) == model.modalities(study)
        assert patient_id == model.study_patient[study][0]
    for (pid, issuer), studies in model.patients().items():
        row = db.execute(
            "SELECT n_studies, n_series, n_instances FROM archive_patients"
            " WHERE patient_id = ? AND issuer = ?",
            (pid, issuer),
        ).fetchone()
        n_series = sum(len(model.studies()[s]) for s in studies)
        n_inst = sum(len(model.study_instances(s)) for s in studies)
        assert row == (len(studies), n_series, n_inst)
    for sop, ds in model.instance.items():
        stored = index.get(sop)
        assert stored is not None
        assert (stored.study_uid, stored.series_uid) == (
            model.series_study[ds.SeriesInstanceUID],
            ds.SeriesInstanceUID,
        )
        assert dcmread(stored.path, stop_before_pixels=True, force=True).SOPInstanceUID == sop
    index.close()


def test_text_is_stored_decoded_with_each_levels_character_set(tmp_path, headers):
    index = ArchiveIndex(tmp_path / "gateway.db")
    charsets = [(p, ds) for p, ds in headers if p.parent.name == "charsets"]
    assert len(charsets) >= 10
    fill(index, charsets)
    model = Model.of(charsets)
    for study, ds in model.study_ds.items():  # the study's latest instance
        name, charset = index.conn.execute(
            "SELECT p.patient_name, s.charset FROM archive_studies s JOIN archive_patients p"
            " ON p.id = s.patient_ref WHERE s.study_uid = ?",
            (study,),
        ).fetchone()
        expected = ds.SpecificCharacterSet
        expected = expected if isinstance(expected, str) else "\\".join(expected)
        assert charset == expected
        ds = model.patient_ds[model.study_patient[study]]
        assert name == str(ds.PatientName)  # Unicode, e.g. 'Yamada^Tarou=山田^太郎=やまだ^たろう'


def test_remove_recounts_and_drops_empty_levels(tmp_path):
    files = ct_series(tmp_path / "ct", 3, rows=8, cols=8)
    index = ArchiveIndex(tmp_path / "gateway.db")
    for f in files:
        index.add(dcmread(f, stop_before_pixels=True), f, f.stat().st_size, time.time())
    sops = [dcmread(f).SOPInstanceUID for f in files]
    assert index.remove(sops[0]).sop_instance_uid == sops[0]
    assert index.remove(sops[0]) is None
    assert index.counts()["instances"] == 2
    assert index.conn.execute("SELECT n_instances FROM archive_studies").fetchone() == (2,)
    index.remove(sops[1])
    index.remove(sops[2])
    assert index.counts() == {"patients": 0, "studies": 0, "series": 0, "instances": 0}


def test_reindex_a_copied_folder_in_place_and_report_junk(tmp_path, headers):
    root = tmp_path / "site"
    for n, (path, _) in enumerate(headers):  # another layout: five folders, numbered names
        shutil.copyfile(path, _dest(root, n))
    (root / "junk").mkdir()
    (root / "junk" / "notes.txt").write_text("not DICOM")
    (root / "junk" / "empty.dcm").write_bytes(b"")
    truncated = root / "junk" / "truncated.dcm"
    truncated.write_bytes(headers[0][0].read_bytes()[:200])
    no_uid = Dataset()
    no_uid.PatientName = "No^Uids"
    no_uid.save_as(root / "junk" / "no_uid.dcm", implicit_vr=True, little_endian=True)
    index = ArchiveIndex(tmp_path / "gateway.db")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        indexed, problems = reindex(root, index)
    assert indexed == len(headers)
    junk = {p.split(":")[0] for p in problems if "/junk/" in p}
    assert junk == {str(root / "junk" / n) for n in ("notes.txt", "empty.dcm",
                                                      "truncated.dcm", "no_uid.dcm")}  # fmt: skip
    walked = sorted(enumerate(headers), key=lambda e: (e[0] % 5, e[0]))  # the folders' order
    model = Model.of([h for _, h in walked])
    assert index.counts()["instances"] == len(model.instance)
    assert index.counts()["studies"] == len(model.studies())
    for sop in model.instance:
        stored = index.get(sop)
        assert stored is not None and Path(stored.path).is_relative_to(root)
    # the duplicates among the files are reported, one line each
    duplicates = len(headers) - len(model.instance)
    assert sum("also in a later file" in p for p in problems) == duplicates
    # indexing the same folder again changes nothing
    again, problems2 = reindex(root, index)
    assert again == indexed and index.counts()["instances"] == len(model.instance)
    index.close()


def _dest(root: Path, n: int) -> Path:
    folder = root / f"box{n % 5}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{n:04d}"


# -- the archive destination's duplicate policy ---------------------------------------------
def job_for(path: Path, job_id: int) -> Job:
    ds = dcmread(path, stop_before_pixels=True)
    return Job(
        id=job_id,
        instance_id=job_id,
        destination="archive",
        rule="all",
        attempts=1,
        created_at=time.time(),
        path=str(path),
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        transfer_syntax=ds.file_meta.TransferSyntaxUID,
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        received_at=time.time(),
    )


def two_versions(tmp_path: Path) -> tuple[Path, Path]:
    """The same instance twice, with different patient names."""
    [first] = ct_series(tmp_path / "v1", 1, rows=8, cols=8)
    second = tmp_path / "v2.dcm"
    ds = dcmread(first)
    ds.PatientName = "Corrected^Name"
    ds.save_as(second)
    return first, second


def archived_name(store: ArchiveStore, sop: str) -> str:
    stored = store.index.get(sop)
    assert stored is not None
    return str(dcmread(stored.path).PatientName)


@pytest.mark.parametrize("policy", ["overwrite", "keep_first", "reject"])
def test_duplicate_policy(tmp_path, policy):
    first, second = two_versions(tmp_path)
    store = ArchiveStore(
        "archive", tmp_path / "archive", index_db=tmp_path / "gateway.db", duplicates=policy
    )
    sop = dcmread(first).SOPInstanceUID
    assert store.send([job_for(first, 1)]) == {1: None}
    assert store.send([job_for(first, 2)]) == {2: None}  # the same file again: idempotent
    outcome = store.send([job_for(second, 3)])[3]
    name = str(store.index.conn.execute("SELECT patient_name FROM archive_patients").fetchone()[0])
    if policy == "overwrite":
        assert outcome is None
        assert archived_name(store, sop) == name == "Corrected^Name"
    elif policy == "keep_first":
        assert outcome is None
        assert archived_name(store, sop) == name == "Synthetic^Patient"
    else:
        assert isinstance(outcome, PermanentError)
        assert sop in str(outcome) and "reject" in str(outcome)
        assert archived_name(store, sop) == name == "Synthetic^Patient"
    assert store.index.counts()["instances"] == 1
    store.close()


def test_duplicates_within_one_batch_and_invalid_uids(tmp_path):
    first, second = two_versions(tmp_path)
    store = ArchiveStore(
        "archive", tmp_path / "archive", index_db=tmp_path / "gateway.db", duplicates="reject"
    )
    out = store.send([job_for(first, 1), job_for(second, 2)])
    assert out[1] is None and isinstance(out[2], PermanentError)
    bad = job_for(first, 3)
    bad = Job(**{**bad.__dict__, "study_uid": "../../etc"})
    assert "not a valid UID" in str(store.send([bad])[3])
    store.close()
