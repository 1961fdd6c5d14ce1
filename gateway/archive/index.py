"""The archive index: patient / study / series / instance tables in the gateway's database.

The archive destination adds each instance it stores (after its file is durable);
`reindex()` builds the index from a folder of any layout, in place. Tables are prefixed
`archive_` beside the queue's, in the same SQLite file, so that retention can check the
queue and delete from the index in one transaction.

    archive_patients   one per (PatientID, IssuerOfPatientID)
    archive_studies    one per StudyInstanceUID, under the patient of its latest instance
    archive_series     one per SeriesInstanceUID
    archive_instances  one per SOPInstanceUID: the file, its size and when it arrived
    archive_protected  Study Instance UIDs that retention never deletes

Each level row has the columns C-FIND matches on most (indexed; person names also
case-folded for fuzzy matching), the counts and Modalities In Study kept current on every
change, the Specific Character Set of the instance its copy came from, and `attrs`: the
compact copy of the level's attributes (`gateway.archive.levels`) from which responses are
built. The index can be lost: its commits do not wait for their own fsync (the delivery
commit that follows does), and `reindex()` rebuilds it from the files.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import ImplicitVRLittleEndian

from gateway.archive import levels
from gateway.archive.levels import IMAGE, PATIENT, SERIES, STUDY
from gateway.queue import connect, transaction
from gateway.uids import is_valid_uid

log = logging.getLogger(__name__)

REINDEX_BATCH = 500
NO_MODALITY = "OT"  # Modalities In Study of a series without Modality: Other

_SCHEMA = """
CREATE TABLE archive_patients (
    id INTEGER PRIMARY KEY,
    patient_key TEXT NOT NULL UNIQUE,  -- PatientID, US, IssuerOfPatientID
    patient_id TEXT NOT NULL, issuer TEXT NOT NULL,
    patient_name TEXT NOT NULL, patient_name_fold TEXT NOT NULL,
    birth_date TEXT NOT NULL, sex TEXT NOT NULL,
    charset TEXT NOT NULL, attrs BLOB,
    n_studies INTEGER NOT NULL DEFAULT 0, n_series INTEGER NOT NULL DEFAULT 0,
    n_instances INTEGER NOT NULL DEFAULT 0);
CREATE INDEX archive_patients_id ON archive_patients (patient_id);
CREATE INDEX archive_patients_name ON archive_patients (patient_name);
CREATE INDEX archive_patients_fold ON archive_patients (patient_name_fold);
CREATE TABLE archive_studies (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL UNIQUE,
    patient_ref INTEGER NOT NULL REFERENCES archive_patients (id),
    study_date TEXT NOT NULL, study_time TEXT NOT NULL,  -- time as levels.time_key
    accession TEXT NOT NULL, study_id TEXT NOT NULL,
    referring TEXT NOT NULL, referring_fold TEXT NOT NULL, description TEXT NOT NULL,
    modalities TEXT NOT NULL DEFAULT '',  -- backslash-joined, sorted
    charset TEXT NOT NULL, attrs BLOB,
    n_series INTEGER NOT NULL DEFAULT 0, n_instances INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL DEFAULT 0, received_at REAL NOT NULL DEFAULT 0);
CREATE INDEX archive_studies_patient ON archive_studies (patient_ref);
CREATE INDEX archive_studies_date ON archive_studies (study_date);
CREATE INDEX archive_studies_accession ON archive_studies (accession);
CREATE INDEX archive_studies_received ON archive_studies (received_at);
CREATE TABLE archive_series (
    id INTEGER PRIMARY KEY,
    series_uid TEXT NOT NULL UNIQUE,
    study_ref INTEGER NOT NULL REFERENCES archive_studies (id),
    modality TEXT NOT NULL, series_number TEXT NOT NULL, description TEXT NOT NULL,
    series_date TEXT NOT NULL, series_time TEXT NOT NULL,
    charset TEXT NOT NULL, attrs BLOB,
    n_instances INTEGER NOT NULL DEFAULT 0, size INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL DEFAULT 0);
CREATE INDEX archive_series_study ON archive_series (study_ref);
CREATE INDEX archive_series_modality ON archive_series (modality, study_ref);
CREATE TABLE archive_instances (
    id INTEGER PRIMARY KEY,
    sop_uid TEXT NOT NULL UNIQUE,
    series_ref INTEGER NOT NULL REFERENCES archive_series (id),
    sop_class_uid TEXT NOT NULL, instance_number TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
    received_at REAL NOT NULL, charset TEXT NOT NULL, attrs BLOB);
CREATE INDEX archive_instances_series ON archive_instances (series_ref);
CREATE TABLE archive_protected (
    study_uid TEXT PRIMARY KEY, reason TEXT NOT NULL, added_at REAL NOT NULL);
"""

# Attributes C-FIND matches in SQL, by keyword: (level, column). The aliases are those of
# the query's joins: p patients, s studies, r series, i instances. Person names also have a
# `<column>_fold` twin; times are stored as levels.time_key.
COLUMNS: dict[str, tuple[str, str]] = {
    "PatientID": (PATIENT, "p.patient_id"),
    "IssuerOfPatientID": (PATIENT, "p.issuer"),
    "PatientName": (PATIENT, "p.patient_name"),
    "PatientBirthDate": (PATIENT, "p.birth_date"),
    "PatientSex": (PATIENT, "p.sex"),
    "StudyInstanceUID": (STUDY, "s.study_uid"),
    "StudyDate": (STUDY, "s.study_date"),
    "StudyTime": (STUDY, "s.study_time"),
    "AccessionNumber": (STUDY, "s.accession"),
    "StudyID": (STUDY, "s.study_id"),
    "ReferringPhysicianName": (STUDY, "s.referring"),
    "StudyDescription": (STUDY, "s.description"),
    "SeriesInstanceUID": (SERIES, "r.series_uid"),
    "Modality": (SERIES, "r.modality"),
    "SeriesNumber": (SERIES, "r.series_number"),
    "SeriesDescription": (SERIES, "r.description"),
    "SeriesDate": (SERIES, "r.series_date"),
    "SeriesTime": (SERIES, "r.series_time"),
    "SOPInstanceUID": (IMAGE, "i.sop_uid"),
    "SOPClassUID": (IMAGE, "i.sop_class_uid"),
    "InstanceNumber": (IMAGE, "i.instance_number"),
}

STORED_SELECT = (
    "SELECT i.path, i.sop_class_uid, i.sop_uid, i.transfer_syntax, s.study_uid, r.series_uid,"
    " i.size FROM archive_instances i JOIN archive_series r ON r.id = i.series_ref"
    " JOIN archive_studies s ON s.id = r.study_ref"
)


@dataclass(frozen=True)
class StoredInstance:
    """An archived file: what C-MOVE / C-GET send (a `gateway.destinations.dicom.Sendable`)."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    study_uid: str
    series_uid: str
    size: int


@dataclass
class _Row:
    """One instance to index, parsed before the write lock is taken."""

    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: str
    size: int
    received_at: float
    charset: str
    values: dict[str, str]  # keyword -> stored text, for the columns
    attrs: dict[str, bytes]  # level -> packed copy

    @classmethod
    def of(cls, ds: Dataset, path: Path | str, size: int, received_at: float) -> _Row:
        meta = getattr(ds, "file_meta", None) or Dataset()
        uids = {
            "SOPInstanceUID": str(ds.get("SOPInstanceUID") or ""),
            "StudyInstanceUID": str(ds.get("StudyInstanceUID") or ""),
            "SeriesInstanceUID": str(ds.get("SeriesInstanceUID") or ""),
        }
        missing = [k for k, v in uids.items() if not v.strip()]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        split = levels.split(ds)
        return cls(
            sop_uid=uids["SOPInstanceUID"].strip(),
            study_uid=uids["StudyInstanceUID"].strip(),
            series_uid=uids["SeriesInstanceUID"].strip(),
            sop_class_uid=str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID", "")),
            transfer_syntax=str(meta.get("TransferSyntaxUID") or ImplicitVRLittleEndian),
            path=str(path),
            size=size,
            received_at=received_at,
            charset=levels.charset_of(ds),
            values={k: levels.text(ds, k) for k in COLUMNS},
            attrs={level: levels.pack(split[level]) for level in levels.LEVELS},
        )


@dataclass
class _Touched:
    """Rows whose counts must be recomputed before the transaction commits."""

    patients: set[int] = field(default_factory=set)
    studies: set[int] = field(default_factory=set)
    series: set[int] = field(default_factory=set)


class ArchiveIndex:
    """The index of one archive; one object per thread (it holds one connection)."""

    def __init__(self, db_path: Path, *, fsync: bool = True) -> None:
        self.db_path = db_path
        self.conn = connect(db_path, fsync=fsync)
        exists = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'archive_protected'"
        ).fetchone()
        if not exists:
            with transaction(self.conn) as c:
                if not c.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'archive_protected'"
                ).fetchone():
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            c.execute(statement)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the gateway's database (queue tables included)."""
        with transaction(self.conn, relaxed=True) as c:
            yield c

    # -- adding ------------------------------------------------------------------------
    def add(self, ds: Dataset, path: Path | str, size: int, received_at: float) -> None:
        """Index one stored instance (`ds`: its header; pixel data is not needed)."""
        self.add_many([(ds, path, size, received_at)])

    def add_many(
        self, entries: Iterable[tuple[Dataset, Path | str, int, float]]
    ) -> list[StoredInstance]:
        """Index instances in one transaction; an instance already indexed is replaced (the
        same SOP Instance UID is one instance). Returns the replaced entries whose file was
        elsewhere. ValueError if a dataset lacks a UID; FileNotFoundError, and nothing is
        indexed, if a file is gone by the time the lock is held (retention removed it)."""
        rows = [_Row.of(*entry) for entry in entries]
        replaced = []
        touched = _Touched()
        with self.transaction() as c:
            for row in rows:
                if not os.path.exists(row.path):
                    raise FileNotFoundError(f"{row.path} vanished before it was indexed")
                old = self._stored(c, row.sop_uid)
                if old is not None and old.path != row.path:
                    replaced.append(old)
                self._upsert(c, row, touched)
            self._refresh(c, touched)
        return replaced

    def _upsert(self, c: sqlite3.Connection, row: _Row, touched: _Touched) -> None:
        v = row.values
        name = v["PatientName"]
        patient = c.execute(
            "INSERT INTO archive_patients (patient_key, patient_id, issuer, patient_name,"
            " patient_name_fold, birth_date, sex, charset, attrs) VALUES (?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (patient_key) DO UPDATE SET patient_name = excluded.patient_name,"
            " patient_name_fold = excluded.patient_name_fold, birth_date = excluded.birth_date,"
            " sex = excluded.sex, charset = excluded.charset, attrs = excluded.attrs"
            " RETURNING id",
            (
                f"{v['PatientID']}\x1f{v['IssuerOfPatientID']}",
                v["PatientID"],
                v["IssuerOfPatientID"],
                name,
                levels.fold(name),
                levels.date_key(v["PatientBirthDate"]),
                v["PatientSex"],
                row.charset,
                row.attrs[PATIENT],
            ),
        ).fetchone()[0]
        touched.patients.add(patient)
        touched.patients.update(
            self._move(c, "archive_studies", "study_uid", row.study_uid, "patient_ref")
        )
        referring = v["ReferringPhysicianName"]
        study = c.execute(
            "INSERT INTO archive_studies (study_uid, patient_ref, study_date, study_time,"
            " accession, study_id, referring, referring_fold, description, charset, attrs)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (study_uid) DO UPDATE SET"
            " patient_ref = excluded.patient_ref, study_date = excluded.study_date,"
            " study_time = excluded.study_time, accession = excluded.accession,"
            " study_id = excluded.study_id, referring = excluded.referring,"
            " referring_fold = excluded.referring_fold, description = excluded.description,"
            " charset = excluded.charset, attrs = excluded.attrs RETURNING id",
            (
                row.study_uid,
                patient,
                levels.date_key(v["StudyDate"]),
                _time(v["StudyTime"]),
                v["AccessionNumber"],
                v["StudyID"],
                referring,
                levels.fold(referring),
                v["StudyDescription"],
                row.charset,
                row.attrs[STUDY],
            ),
        ).fetchone()[0]
        touched.studies.add(study)
        touched.studies.update(
            self._move(c, "archive_series", "series_uid", row.series_uid, "study_ref")
        )
        series = c.execute(
            "INSERT INTO archive_series (series_uid, study_ref, modality, series_number,"
            " description, series_date, series_time, charset, attrs) VALUES (?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (series_uid) DO UPDATE SET study_ref = excluded.study_ref,"
            " modality = excluded.modality, series_number = excluded.series_number,"
            " description = excluded.description, series_date = excluded.series_date,"
            " series_time = excluded.series_time, charset = excluded.charset,"
            " attrs = excluded.attrs RETURNING id",
            (
                row.series_uid,
                study,
                v["Modality"] or NO_MODALITY,
                v["SeriesNumber"],
                v["SeriesDescription"],
                levels.date_key(v["SeriesDate"]),
                _time(v["SeriesTime"]),
                row.charset,
                row.attrs[SERIES],
            ),
        ).fetchone()[0]
        touched.series.add(series)
        touched.series.update(
            self._move(c, "archive_instances", "sop_uid", row.sop_uid, "series_ref")
        )
        c.execute(
            "INSERT INTO archive_instances (sop_uid, series_ref, sop_class_uid, instance_number,"
            " transfer_syntax, path, size, received_at, charset, attrs)"
            " VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (sop_uid) DO UPDATE SET"
            " series_ref = excluded.series_ref, sop_class_uid = excluded.sop_class_uid,"
            " instance_number = excluded.instance_number,"
            " transfer_syntax = excluded.transfer_syntax, path = excluded.path,"
            " size = excluded.size, received_at = excluded.received_at,"
            " charset = excluded.charset, attrs = excluded.attrs",
            (
                row.sop_uid,
                series,
                row.sop_class_uid,
                v["InstanceNumber"],
                row.transfer_syntax,
                row.path,
                row.size,
                row.received_at,
                row.charset,
                row.attrs[IMAGE],
            ),
        )

    @staticmethod
    def _move(c: sqlite3.Connection, table: str, key: str, uid: str, parent: str) -> list[int]:
        """The current parent of an existing row: it must be recounted if the row moves."""
        row = c.execute(f"SELECT {parent} FROM {table} WHERE {key} = ?", (uid,)).fetchone()
        return [row[0]] if row else []

    @staticmethod
    def _refresh(c: sqlite3.Connection, touched: _Touched) -> None:
        """Recount the touched rows and their parents bottom-up; a row left without
        children is deleted."""
        for sid in touched.series:
            n, size, last = c.execute(
                "SELECT count(*), coalesce(sum(size), 0), coalesce(max(received_at), 0)"
                " FROM archive_instances WHERE series_ref = ?",
                (sid,),
            ).fetchone()
            if n:
                parent = c.execute(
                    "UPDATE archive_series SET n_instances = ?, size = ?, received_at = ?"
                    " WHERE id = ? RETURNING study_ref",
                    (n, size, last, sid),
                ).fetchone()
            else:
                parent = c.execute(
                    "DELETE FROM archive_series WHERE id = ? RETURNING study_ref", (sid,)
                ).fetchone()
            if parent:
                touched.studies.add(parent[0])
        for sid in touched.studies:
            n, instances, size, last = c.execute(
                "SELECT count(*), coalesce(sum(n_instances), 0), coalesce(sum(size), 0),"
                " coalesce(max(received_at), 0) FROM archive_series WHERE study_ref = ?",
                (sid,),
            ).fetchone()
            if n:
                modalities = "\\".join(
                    m
                    for (m,) in c.execute(
                        "SELECT DISTINCT modality FROM archive_series WHERE study_ref = ?"
                        " ORDER BY modality",
                        (sid,),
                    )
                )
                parent = c.execute(
                    "UPDATE archive_studies SET n_series = ?, n_instances = ?, size = ?,"
                    " received_at = ?, modalities = ? WHERE id = ? RETURNING patient_ref",
                    (n, instances, size, last, modalities, sid),
                ).fetchone()
            else:
                parent = c.execute(
                    "DELETE FROM archive_studies WHERE id = ? RETURNING patient_ref", (sid,)
                ).fetchone()
            if parent:
                touched.patients.add(parent[0])
        for pid in touched.patients:
            n, series, instances = c.execute(
                "SELECT count(*), coalesce(sum(n_series), 0), coalesce(sum(n_instances), 0)"
                " FROM archive_studies WHERE patient_ref = ?",
                (pid,),
            ).fetchone()
            if n:
                c.execute(
                    "UPDATE archive_patients SET n_studies = ?, n_series = ?, n_instances = ?"
                    " WHERE id = ?",
                    (n, series, instances, pid),
                )
            else:
                c.execute("DELETE FROM archive_patients WHERE id = ?", (pid,))

    # -- reading and removing ------------------------------------------------------------
    @staticmethod
    def _stored(c: sqlite3.Connection, sop_uid: str) -> StoredInstance | None:
        row = c.execute(f"{STORED_SELECT} WHERE i.sop_uid = ?", (sop_uid,)).fetchone()
        return StoredInstance(*row) if row else None

    def get(self, sop_uid: str) -> StoredInstance | None:
        return self._stored(self.conn, sop_uid)

    def remove(self, sop_uid: str) -> StoredInstance | None:
        """Forget an instance (its file is the caller's to delete); None if not indexed."""
        with self.transaction() as c:
            row = c.execute("SELECT id FROM archive_instances WHERE sop_uid = ?", (sop_uid,))
            ids = [r[0] for r in row]
            removed = self.delete_rows(c, ids)
        return removed[0] if removed else None

    def delete_rows(self, c: sqlite3.Connection, instance_ids: list[int]) -> list[StoredInstance]:
        """Within `transaction()`: forget instances by row id, recount what held them."""
        out = []
        touched = _Touched()
        for iid in instance_ids:
            row = c.execute(f"{STORED_SELECT} WHERE i.id = ?", (iid,)).fetchone()
            if row is None:
                continue
            (series,) = c.execute(
                "DELETE FROM archive_instances WHERE id = ? RETURNING series_ref", (iid,)
            ).fetchone()
            touched.series.add(series)
            out.append(StoredInstance(*row))
        self._refresh(c, touched)
        return out

    def counts(self) -> dict[str, int]:
        """Rows per level (patients, studies, series, instances)."""
        return {
            table: self.conn.execute(f"SELECT count(*) FROM archive_{table}").fetchone()[0]
            for table in ("patients", "studies", "series", "instances")
        }


def _time(value: str) -> str:
    return levels.time_key(value) if value else ""


def reindex(root: Path, index: ArchiveIndex) -> tuple[int, list[str]]:
    """Index every DICOM file under `root`, in place, whatever the folder layout. Returns
    (files indexed, problems): one line per file not indexed (unreadable, no valid UIDs)
    and per SOP Instance UID found in two files (the later file is the one indexed)."""
    problems: list[str] = []
    indexed = 0
    batch: list[tuple[Dataset, Path, int, float]] = []

    def flush() -> None:
        nonlocal indexed
        for old in index.add_many(batch):
            problems.append(f"{old.path}: SOP Instance UID {old.sop_instance_uid} is also in a"
                            " later file; that one is indexed")  # fmt: skip
        indexed += len(batch)
        batch.clear()

    for path in _files(root):
        try:
            ds = dcmread(path, stop_before_pixels=True, force=True)
            size, mtime = path.stat().st_size, path.stat().st_mtime
        except Exception as exc:  # pydicom raises many types on junk; each is a problem line
            problems.append(f"{path}: not readable as DICOM: {type(exc).__name__}: {exc}")
            continue
        invalid = [
            k
            for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
            if not is_valid_uid(str(ds.get(k) or "").strip())
        ]
        if invalid:
            problems.append(f"{path}: not indexed: no valid {', '.join(invalid)}")
            continue
        batch.append((ds, path, size, mtime))
        if len(batch) >= REINDEX_BATCH:
            flush()
    flush()
    log.info("reindexed %s: %d file(s), %d problem(s)", root, indexed, len(problems))
    return indexed, problems


def _files(root: Path) -> Iterator[Path]:
    """Every file under root in a stable order, skipping hidden names (the archive's
    temporary and to-be-deleted files start with a dot)."""
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(folder) / name
