"""Retention on a real archive and a real queue in one database: oldest studies go first,
nothing the queue still holds undelivered is deleted, protected studies stay."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from gateway.archive.retention import apply_retention, protect, protected, unprotect
from gateway.config import ArchiveRetention
from gateway.destinations.archive import ArchiveStore
from gateway.queue import NewInstance, Queue, Route
from tests.synth import ct_series
from tests.test_archive_index import job_for

DAY = 86400.0
NOW = time.mktime((2025, 6, 1, 12, 0, 0, 0, 0, -1))


@dataclass
class Study:
    uid: str
    date: str
    received_at: float
    sops: list[str]
    paths: list[Path]  # where the archive placed them
    size: int


class Site:
    """An archive of five studies (four instances each, dates 2015..2025) and its queue."""

    def __init__(self, tmp: Path) -> None:
        self.db = tmp / "gateway.db"
        self.root = tmp / "archive"
        self.queue = Queue(self.db)
        self.store = ArchiveStore("archive", self.root, index_db=self.db, fsync=False)
        self.index = self.store.index
        self.studies: list[Study] = []
        dates = ["20150301", "20180301", "20210301", "20240301", "20250501"]
        for n, date in enumerate(dates):
            files = ct_series(tmp / f"in{n}", 4, rows=32, cols=32)
            for f in files:
                ds = dcmread(f)
                ds.StudyDate = date
                ds.save_as(f)
            jobs = [job_for(f, 100 * n + k) for k, f in enumerate(files)]
            received = NOW - (len(dates) - n) * 30 * DAY  # in the same order as the dates
            jobs = [j.__class__(**{**j.__dict__, "received_at": received}) for j in jobs]
            assert set(self.store.send(jobs).values()) == {None}
            paths = [self.store.path_for(j) for j in jobs]
            self.studies.append(Study(jobs[0].study_uid, date, received,
                                      [j.sop_instance_uid for j in jobs], paths,
                                      sum(p.stat().st_size for p in paths)))  # fmt: skip

    def hold(self, study: Study, k: int) -> int:
        """Queue study's k-th instance for a destination that has not received it yet."""
        path = study.paths[k]
        [iid] = self.queue.add_instances(
            [NewInstance(study.sops[k], "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1",
                         study.uid, "1.2.3", str(path), path.stat().st_size)]
        )  # fmt: skip
        [inst] = self.queue.lease_unrouted("w", 10, 30)
        self.queue.set_routes([(inst.id, [Route("pacs", "all")], "all", False)])
        return iid

    def present(self, study: Study) -> list[bool]:
        """Per instance: its file is there and the index has it."""
        return [p.exists() and self.index.get(s) is not None for s, p in zip(study.sops,
                study.paths, strict=True)]  # fmt: skip

    def archive_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*.dcm"))

    def close(self) -> None:
        self.store.close()
        self.queue.close()


@pytest.fixture
def site(tmp_path) -> Site:
    s = Site(tmp_path)
    yield s
    s.close()


def test_size_quota_deletes_oldest_first_but_never_undelivered_or_protected(site):
    oldest, second, third, fourth, newest = site.studies
    site.hold(oldest, 1)  # the PACS has not received it yet
    protect(site.index, second.uid, "teaching file")
    assert protected(site.index) == {second.uid: "teaching file"}
    quota = site.archive_bytes() - oldest.size  # deleting the oldest alone cannot do it
    report = apply_retention(site.index, ArchiveRetention(max_size_gb=quota / 1e9), site.root,
                             now=NOW)  # fmt: skip
    assert site.present(oldest) == [False, True, False, False]
    assert all(site.present(second))  # protected, though older than what was deleted
    assert not any(site.present(third))  # next oldest after the protected one
    assert all(site.present(fourth)) and all(site.present(newest))
    assert report.deleted == {"size": 7} and report.kept_undelivered == 1
    assert report.kept_protected == 4
    freed = 3 * oldest.size // 4 + third.size
    assert report.freed_bytes == freed
    assert site.archive_bytes() <= quota
    assert not (site.root / third.uid).exists()  # its empty folders went too
    # once the PACS has it, the instance may go
    jobs = site.queue.lease_jobs("w", 10, 30)
    site.queue.mark_delivered([j.id for j in jobs])
    apply_retention(site.index, ArchiveRetention(max_age_days=5 * 365), site.root, now=NOW)
    assert site.present(oldest) == [False] * 4
    counts = site.index.counts()
    assert counts["studies"] == 3 and counts["instances"] == 12  # second, fourth, newest
    assert unprotect(site.index, second.uid) and not unprotect(site.index, second.uid)
    apply_retention(site.index, ArchiveRetention(max_age_days=5 * 365), site.root, now=NOW)
    assert not any(site.present(second))


@pytest.mark.parametrize("age_by", ["study_date", "received"])
def test_age_deletes_what_is_older_than_the_limit(site, age_by):
    oldest, second, third, fourth, newest = site.studies
    site.hold(second, 0)
    days = 5 * 365 if age_by == "study_date" else 100  # received 150, 120, 90, 60, 30 days ago
    report = apply_retention(site.index, ArchiveRetention(max_age_days=days, age_by=age_by),
                             site.root, now=NOW)  # fmt: skip
    assert not any(site.present(oldest))
    assert site.present(second) == [True, False, False, False]
    assert all(site.present(third)) and all(site.present(fourth)) and all(site.present(newest))
    assert report.deleted == {"age": 7}


def test_free_disk_minimum(site):
    oldest, second, third, fourth, newest = site.studies
    budget = site.archive_bytes() + 10_000  # a disk that holds the archive and 10 kB more

    def free(root: Path) -> int:
        return budget - site.archive_bytes()

    need = 10_000 + oldest.size + second.size // 2  # frees the two oldest studies
    report = apply_retention(site.index, ArchiveRetention(min_free_gb=need / 1e9), site.root,
                             now=NOW, free_bytes=free)  # fmt: skip
    assert not any(site.present(oldest)) and not any(site.present(second))
    assert all(site.present(third)) and all(site.present(fourth)) and all(site.present(newest))
    assert report.deleted == {"free_disk": 8}


def test_nothing_to_do_without_limits(site):
    report = apply_retention(site.index, ArchiveRetention(), site.root, now=NOW)
    assert report.deleted == {} and site.index.counts()["instances"] == 20


def test_files_an_interrupted_run_left_in_the_trash_are_removed_later(site, monkeypatch):
    from gateway.archive import retention

    trash = site.root / retention.TRASH
    trash.mkdir(exist_ok=True)
    left = trash / "0123.deleted"  # committed deletion whose unlink never ran
    left.write_bytes(b"x")
    apply_retention(site.index, ArchiveRetention(max_age_days=36500), site.root, now=NOW)
    assert left.exists()  # too recent: another run may still be rolling it back
    monkeypatch.setattr(retention, "TRASH_GRACE_S", -1.0)
    report = apply_retention(site.index, ArchiveRetention(max_age_days=3 * 365), site.root, now=NOW)
    assert not left.exists()
    assert sum(report.deleted.values()) > 0 and list(trash.iterdir()) == []  # its own are gone
