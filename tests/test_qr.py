"""Query/Retrieve against real clients on 127.0.0.1: dcmtk findscu, movescu, getscu, and
Orthanc as a Q/R client through its REST API. The archive is filled through the gateway
itself; expected results come from the files sent, not from the gateway's index."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.conftest import wait_for
from tests.peers import (
    PEER_ENV,
    Gateway,
    corpus_dir,
    dcmtk,
    free_port,
    gateway_config,
    send_by_ts,
    start_orthanc,
    start_storescp,
    storescu,
)
from tests.synth import ct_series

STUDY_ROOT, PATIENT_ROOT = "-S", "-P"
CHARSET_FILES = ["chrX1.dcm", "chrX2.dcm", "chrH31.dcm", "chrI2.dcm"]  # UTF-8, GB18030, ISO 2022


def make_study(out: Path, n: int, pid: str, name: str, date: str, modality: str) -> list[Path]:
    files = ct_series(out, n, rows=16, cols=16)
    for f in files:
        ds = dcmread(f)
        ds.PatientID, ds.PatientName, ds.StudyDate, ds.Modality = pid, name, date, modality
        ds.AccessionNumber = f"ACC-{out.name}"
        ds.StudyDescription = f"{modality} study {out.name}"
        ds.save_as(f)
    return files


class Archive:
    """A gateway whose archive holds three synthetic studies and the charset samples."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.scp = start_storescp(work / "moved", ae_title="MOVEDEST")
        self.studies = {
            "a1": make_study(work / "a1", 5, "QR-A", "Alpha^Anna", "20240110", "CT"),
            "a2": make_study(work / "a2", 2, "QR-A", "Alpha^Anna", "20230601", "PT"),
            "b": make_study(work / "b", 3, "QR-B", "Beta^Bob", "20240315", "MR"),
            # enough matches that a C-CANCEL arrives while they are still being sent
            "many": make_study(work / "many", 400, "MANY", "Many^Images", "20220101", "CT"),
        }
        self.charset = [corpus_dir() / "pydicom" / "charsets" / n for n in CHARSET_FILES]
        # real multi-patient, multi-study, multi-series sets from the shared corpus
        self.corpus = sorted(
            p
            for p in (corpus_dir() / "pydicom" / "dicomdir").rglob("*")
            if p.is_file() and not p.name.startswith("DICOMDIR")
        )
        cfg = gateway_config(
            work,
            {"archive": {"type": "archive"}},
            move_destinations={"MOVEDEST": {"host": "127.0.0.1", "port": self.scp.port}},
            qr={"permissions": {"FINDONLY": ["find"], "*": ["find", "move", "get"]}},
        )
        cfg["dimse"]["allowed_calling_aets"] = ["*"]
        self.gw = Gateway(work / "gw", cfg, [{"name": "all", "forward": ["archive"]}])
        (work / "gw").mkdir()
        self.gw.start()
        files = [f for fs in self.studies.values() for f in fs] + self.charset
        out = storescu(self.gw.port, files)
        assert out.returncode == 0, out.stdout + out.stderr
        out = send_by_ts(self.gw.port, self.corpus)  # each file in its own transfer syntax
        assert out.returncode == 0, out.stdout + out.stderr
        wait_for(self.archived, 60, "everything archived")

    def archived(self) -> bool:
        out = self.gw.cli("queue", "status", "--json")
        return out.returncode == 0 and '"instances": {}' in out.stdout.replace("\n", "")

    def uid(self, study: str, keyword: str = "StudyInstanceUID") -> str:
        return str(dcmread(self.studies[study][0], stop_before_pixels=True).get(keyword))

    def stop(self) -> None:
        self.gw.stop()
        self.scp.stop()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Archive:
    a = Archive(tmp_path_factory.mktemp("qr"))
    yield a
    a.stop()


def find(
    archive: Archive,
    root: str,
    keys: list[str | bytes],
    *extra: str,
    aet: str = "FINDSCU",
) -> tuple[list[Dataset], subprocess.CompletedProcess]:
    out_dir = archive.work / f"find-{threading.get_ident()}-{len(list(archive.work.iterdir()))}"
    out_dir.mkdir()
    args: list[str | bytes] = [dcmtk("findscu"), "-v", "-aet", aet, "-aec", "GATEWAY", root, "-X"]
    args += ["-od", str(out_dir), *extra]
    for k in keys:
        args += ["-k", k]
    args += ["127.0.0.1", str(archive.gw.port)]
    proc = subprocess.run(args, env=PEER_ENV, capture_output=True, timeout=60)
    results = [dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]
    return results, proc


def values(results: list[Dataset], keyword: str) -> set[str]:
    return {str(r.get(keyword, "")) for r in results}


# -- C-FIND ------------------------------------------------------------------------------
def test_find_at_every_level_and_root(archive):
    a1, a2, b = (archive.uid(s) for s in ("a1", "a2", "b"))
    # Patient root, PATIENT level
    res, _ = find(archive, PATIENT_ROOT, ["QueryRetrieveLevel=PATIENT", "PatientID=QR-A",
                                          "PatientName", "NumberOfPatientRelatedStudies"])  # fmt: skip
    assert len(res) == 1 and str(res[0].PatientName) == "Alpha^Anna"
    assert int(res[0].NumberOfPatientRelatedStudies) == 2
    # Patient root, STUDY level under a patient
    res, _ = find(archive, PATIENT_ROOT, ["QueryRetrieveLevel=STUDY", "PatientID=QR-A",
                                          "StudyInstanceUID", "StudyDate"])  # fmt: skip
    assert values(res, "StudyInstanceUID") == {a1, a2}
    # Study root, STUDY level: wildcard, date range, modality, UID list, universal
    study = ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"]
    res, _ = find(archive, STUDY_ROOT, [*study, "PatientID=QR-*"])
    assert values(res, "StudyInstanceUID") == {a1, a2, b}
    res, _ = find(archive, STUDY_ROOT, [*study, "PatientID=QR-?", "StudyDate=20240101-"])
    assert values(res, "StudyInstanceUID") == {a1, b}
    res, _ = find(archive, STUDY_ROOT, [*study, "ModalitiesInStudy=MR", "PatientName=Beta*"])
    assert values(res, "StudyInstanceUID") == {b}
    res, _ = find(archive, STUDY_ROOT, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={a1}\\{b}",
                                        "NumberOfStudyRelatedInstances", "ModalitiesInStudy"])  # fmt: skip
    assert {(str(r.StudyInstanceUID), int(r.NumberOfStudyRelatedInstances)) for r in res} == {
        (a1, 5),
        (b, 3),
    }
    # only the requested keys come back, plus the level's unique key and the housekeeping
    res, _ = find(archive, STUDY_ROOT, ["QueryRetrieveLevel=STUDY", "PatientID=QR-B", "StudyDate"])
    [r] = res
    assert {e.keyword for e in r} <= {
        "SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle", "PatientID",
        "StudyDate", "StudyInstanceUID",
    }  # fmt: skip
    assert r.StudyDate == "20240315" and str(r.StudyInstanceUID) == b
    # SERIES and IMAGE levels
    res, _ = find(archive, STUDY_ROOT, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={a1}",
                                        "SeriesInstanceUID", "Modality"])  # fmt: skip
    assert values(res, "SeriesInstanceUID") == {archive.uid("a1", "SeriesInstanceUID")}
    assert values(res, "Modality") == {"CT"}
    series = archive.uid("a1", "SeriesInstanceUID")
    res, _ = find(archive, STUDY_ROOT, ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={a1}",
                                        f"SeriesInstanceUID={series}", "SOPInstanceUID"])  # fmt: skip
    sent = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in archive.studies["a1"]}
    assert values(res, "SOPInstanceUID") == sent


def test_find_over_the_corpus_matches_what_its_files_say(archive):
    """Expected results from the corpus files' own headers, not from the gateway's index."""
    heads = [dcmread(p, stop_before_pixels=True) for p in archive.corpus]
    studies_of: dict[str, set[str]] = {}
    for h in heads:
        studies_of.setdefault(str(h.PatientID), set()).add(str(h.StudyInstanceUID))
    assert len(studies_of) >= 3
    study = ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"]
    for pid, expected in studies_of.items():
        res, _ = find(archive, STUDY_ROOT, [*study, f"PatientID={pid}"])
        assert values(res, "StudyInstanceUID") == expected, pid
        res, _ = find(archive, PATIENT_ROOT, ["QueryRetrieveLevel=PATIENT", f"PatientID={pid}",
                                              "NumberOfPatientRelatedInstances"])  # fmt: skip
        n = sum(1 for h in heads if str(h.PatientID) == pid)
        assert [int(r.NumberOfPatientRelatedInstances) for r in res] == [n], pid
    doe = {str(h.StudyInstanceUID) for h in heads if str(h.PatientName).startswith("Doe")}
    res, _ = find(archive, STUDY_ROOT, [*study, "PatientName=Doe*"])
    assert values(res, "StudyInstanceUID") == doe
    in_2003 = {str(h.StudyInstanceUID) for h in heads if "20030101" <= h.StudyDate <= "20031231"}
    res, _ = find(archive, STUDY_ROOT, [*study, "StudyDate=20030101-20031231", "PatientID=*"])
    assert values(res, "StudyInstanceUID") & {str(h.StudyInstanceUID) for h in heads} == in_2003
    for uid in {str(h.StudyInstanceUID) for h in heads}:
        series = {str(h.SeriesInstanceUID) for h in heads if str(h.StudyInstanceUID) == uid}
        res, _ = find(archive, STUDY_ROOT, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={uid}",
                                            "SeriesInstanceUID"])  # fmt: skip
        assert values(res, "SeriesInstanceUID") == series
        one = sorted(series)[0]
        sops = {str(h.SOPInstanceUID) for h in heads if str(h.SeriesInstanceUID) == one}
        res, _ = find(archive, STUDY_ROOT, ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={uid}",
                                            f"SeriesInstanceUID={one}", "SOPInstanceUID"])  # fmt: skip
        assert values(res, "SOPInstanceUID") == sops


def test_find_answers_in_the_stored_character_set_and_matches_non_ascii_queries(archive):
    for path in archive.charset:
        original = dcmread(path, stop_before_pixels=True)
        charset = original.SpecificCharacterSet
        charset = charset if isinstance(charset, str) else "\\".join(charset)
        name = str(original.PatientName)
        encoding = {"ISO_IR 192": "utf-8", "GB18030": "gb18030"}.get(charset)
        keys: list[str | bytes] = ["QueryRetrieveLevel=STUDY", "StudyInstanceUID"]
        if encoding:  # the query itself carries the non-ASCII name, in that character set
            keys += [f"SpecificCharacterSet={charset}", b"PatientName=" + name.encode(encoding)]
        else:
            keys += [f"PatientID={original.PatientID}", "PatientName"]
        res, proc = find(archive, STUDY_ROOT, keys)
        assert proc.returncode == 0, proc.stderr
        assert len(res) == 1, (path.name, proc.stdout[-2000:])
        assert str(res[0].PatientName) == name, path.name
        assert str(res[0].StudyInstanceUID) == str(original.StudyInstanceUID)


def test_find_refusals_and_cancel(archive):
    _, proc = find(archive, STUDY_ROOT, ["PatientID=QR-A"])  # no QueryRetrieveLevel
    text = proc.stdout + proc.stderr
    assert b"Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in text, text
    many = ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={archive.uid('many')}",
            f"SeriesInstanceUID={archive.uid('many', 'SeriesInstanceUID')}", "SOPInstanceUID"]  # fmt: skip
    res, proc = find(archive, STUDY_ROOT, many, "--cancel", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert b"Final Find Response (Cancel: " in proc.stderr, proc.stderr[-3000:]
    assert len(res) < 400
    res, _ = find(archive, STUDY_ROOT, many)
    assert len(res) == 400
    res, _ = find(archive, STUDY_ROOT, ["QueryRetrieveLevel=STUDY", "PatientID=QR-B"])
    assert len(res) == 1  # still serving


# -- C-MOVE / C-GET ------------------------------------------------------------------------
def move(archive: Archive, keys: list[str], dest: str = "MOVEDEST", aet: str = "MOVESCU"):
    args = [dcmtk("movescu"), "-aet", aet, "-aec", "GATEWAY", "-aem", dest, STUDY_ROOT]
    for k in keys:
        args += ["-k", k]
    args += ["127.0.0.1", str(archive.gw.port)]
    return subprocess.run(args, env=PEER_ENV, capture_output=True, text=True, timeout=120)


def same_instances(received: list[Path], sent: list[Path]) -> None:
    by_uid = {str(dcmread(f).SOPInstanceUID): dcmread(f) for f in sent}
    assert len(received) == len(sent)
    for p in received:
        ds = dcmread(p)
        orig = by_uid[str(ds.SOPInstanceUID)]
        assert ds == orig  # every element, pixel data included


def test_move_study_and_series_files_arrive_intact(archive):
    before = set(archive.scp.files())
    out = move(archive, ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={archive.uid('b')}"])
    assert out.returncode == 0, out.stdout + out.stderr
    new = sorted(set(archive.scp.files()) - before)
    same_instances(new, archive.studies["b"])
    out = move(archive, ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={archive.uid('a2')}",
                         f"SeriesInstanceUID={archive.uid('a2', 'SeriesInstanceUID')}"])  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(set(archive.scp.files()) - before) == 5


def test_two_concurrent_moves_to_one_destination_both_complete(archive):
    results = []
    keys = [["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={archive.uid(s)}"] for s in ("a1", "b")]
    threads = [threading.Thread(target=lambda k=k: results.append(move(archive, k))) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0], [r.stdout + r.stderr for r in results]
    for r in results:
        assert "Failed" not in r.stdout + r.stderr


def test_move_refusals(archive):
    study = ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={archive.uid('b')}"]
    out = move(archive, study, dest="NOWHERE")
    assert "Refused: MoveDestinationUnknown" in out.stderr, out.stderr
    out = move(archive, study, aet="FINDONLY")
    assert "Status: 0x124)" in out.stderr, out.stderr  # Refused: Not Authorized (PS3.7 C.5)
    res, _ = find(archive, STUDY_ROOT, [*study], aet="FINDONLY")
    assert len(res) == 1  # that AE may still find


def test_get_series_on_the_same_association(archive):
    out_dir = archive.work / "got"
    out_dir.mkdir()
    series = archive.uid("a1", "SeriesInstanceUID")
    args = [dcmtk("getscu"), "-aet", "GETSCU", "-aec", "GATEWAY", STUDY_ROOT, "-od", str(out_dir),
            "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={archive.uid('a1')}",
            "-k", f"SeriesInstanceUID={series}", "127.0.0.1", str(archive.gw.port)]  # fmt: skip
    out = subprocess.run(args, env=PEER_ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    same_instances(sorted(out_dir.iterdir()), archive.studies["a1"])


# -- Orthanc as the Q/R client ------------------------------------------------------------
def test_orthanc_queries_and_retrieves_through_its_rest_api(archive, tmp_path):
    gw = archive.gw
    orthanc = start_orthanc(
        tmp_path / "orthanc", DicomModalities={"gw": ["GATEWAY", "127.0.0.1", gw.port]}
    )
    try:
        # the gateway must know Orthanc as a move destination: restart with it added
        gw.config["move_destinations"]["ORTHANC"] = {
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
        }
        gw.stop()
        gw.start()
        with orthanc.client() as c:
            q = c.post("/modalities/gw/query", json={"Level": "Study",
                                                     "Query": {"PatientID": "QR-A"}})  # fmt: skip
            assert q.status_code == 200, q.text
            qid = q.json()["ID"]
            answers = c.get(f"/queries/{qid}/answers?expand&simplify").json()
            uids = {a["StudyInstanceUID"] for a in answers}
            assert uids == {archive.uid("a1"), archive.uid("a2")}
            r = c.post(f"/queries/{qid}/retrieve", json={"TargetAet": "ORTHANC",
                                                         "Synchronous": True})  # fmt: skip
            assert r.status_code == 200, r.text
        wait_for(lambda: len(orthanc.instance_ids()) == 7, 60, "Orthanc to hold both studies")
    finally:
        orthanc.stop()


def test_reindex_brings_an_existing_folder_into_the_archive(archive, tmp_path):
    site = tmp_path / "site-folder" / "any" / "layout"
    site.mkdir(parents=True)
    extra = make_study(tmp_path / "r", 2, "QR-R", "Reindexed^Rita", "20200202", "CR")
    for f in extra:
        (site / f.name).write_bytes(f.read_bytes())
    (site / "notes.txt").write_text("not DICOM")
    out = archive.gw.cli("archive", "reindex", "--path", str(tmp_path / "site-folder"))
    assert out.returncode == 0, out.stderr
    assert "2 instance(s) indexed" in out.stdout and "notes.txt" in out.stderr
    res, _ = find(archive, STUDY_ROOT, ["QueryRetrieveLevel=STUDY", "PatientID=QR-R",
                                        "NumberOfStudyRelatedInstances"])  # fmt: skip
    assert [int(r.NumberOfStudyRelatedInstances) for r in res] == [2]


def test_retention_keeps_what_a_destination_has_not_received(
    tmp_path, gateway_factory, storescp_factory
):
    port = free_port()  # the PACS is down
    dests = {
        "archive": {"type": "archive", "retention": {"max_size_gb": 1e-6}},  # 1 kB: always over
        "pacs": {"type": "dicom", "ae_title": "STORESCP", "host": "127.0.0.1", "port": port,
                 "connect_timeout": 1, "retry": {"initial_backoff": 0.2, "max_backoff": 0.5,
                                                 "max_attempts": 10000}},
    }  # fmt: skip
    gw = gateway_factory(dests, [{"name": "all", "forward": ["archive", "pacs"]}]).start()
    files = make_study(tmp_path / "s", 3, "RET-1", "Kept^Karl", "20000101", "CT")
    assert storescu(gw.port, files).returncode == 0
    archived = gw.data_dir / "archive"
    wait_for(lambda: len(list(archived.rglob("*.dcm"))) == 3, 30, "archived")
    out = gw.cli("archive", "retention")
    assert out.returncode == 0 and "deleted 0 instance(s)" in out.stdout, out.stdout + out.stderr
    assert "kept 3 undelivered" in out.stdout
    assert len(list(archived.rglob("*.dcm"))) == 3  # nothing undelivered is removed
    pacs = start_storescp(tmp_path / "pacs", port=port)
    try:
        wait_for(lambda: len(pacs.files()) == 3, 60, "delivery once the PACS is back")
        wait_for(lambda: '"instances": {}' in gw.cli("queue", "status", "--json").stdout
                 .replace("\n", ""), 30, "queue empty")  # fmt: skip
    finally:
        pacs.stop()
    out = gw.cli("archive", "retention")
    assert "deleted 3 instance(s)" in out.stdout, out.stdout + out.stderr
    assert list(archived.rglob("*.dcm")) == []


def test_response_encoding_matches_pydicom_byte_for_byte():
    """C-FIND responses frame raw index elements directly; the bytes must be pydicom's."""
    from pydicom.dataelem import RawDataElement
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.tag import Tag

    from gateway.association import _encode_le

    def build() -> Dataset:
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = "Wang^XiaoDong=王^小東"  # not raw: goes through pydicom
        for tag, vr, value in ((0x00080020, "DA", b"20240101"), (0x0020000D, "UI", b"1.2.3\0"),
                               (0x00201208, "IS", b"12"), (0x00081030, "LO", b"CT HEAD ")):  # fmt: skip
            ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
        ds.ReferencedStudySequence = []
        return ds

    for implicit in (True, False):
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, implicit
        write_dataset(fp, build())
        assert _encode_le(build(), implicit) == fp.getvalue()
