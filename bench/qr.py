#!/usr/bin/env python3
"""Query/Retrieve benchmark: study-level C-FIND latency at archive scale.

    python bench/qr.py                  # 1,000,000 instances in 10,000 studies (cached)
    python bench/qr.py --rebuild        # make the synthetic index again
    python bench/qr.py --json out.json

The index (`gateway.archive.index` schema) is bulk-inserted once into a work folder
(default: $TMPDIR/gateway-bench-qr) and reused while its size parameters are unchanged:
names from a weighted list (about 1.5% SMITH, a tenth non-ASCII, some with ideographic
groups), study dates over 16 years, one primary modality per study out of five (PT studies
carry CT series too), ~3 series and `--per-study` instances per study.

Each row times `gateway.archive.query.find()` to its last response (a typical return-key
set, 13 keys) over `--runs` queries with varied values, after one warm-up, and prints
p50/p95. A row is a function in ROWS taking the Bench and returning a Row.

Then, unless `--no-dimse`: the gateway is started on that index (`dicom-gateway run`, data
in the work folder) and the same four study-level queries go through DIMSE with dcmtk
`findscu`, one process and association per query (so the figures include connecting);
then C-MOVE of one 500-instance CT study (512x512 16-bit) to dcmtk `storescp`, from the
gateway and from Orthanc holding the same study, timed by `movescu` to its final response.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydicom import Dataset, dcmread  # noqa: E402

from gateway.archive import levels  # noqa: E402
from gateway.archive.index import ArchiveIndex  # noqa: E402
from gateway.archive.query import find  # noqa: E402
from tests.peers import (  # noqa: E402
    PEER_ENV,
    Gateway,
    dcmtk,
    gateway_config,
    start_orthanc,
    start_storescp,
    storescu,
)
from tests.synth import ct_series  # noqa: E402

TARGET_P95_MS = 100.0
MODALITIES = {"CT": 35, "MR": 25, "CR": 20, "US": 15, "PT": 5}  # primary modality weights
SURNAMES = {
    "SMITH": 15, "JOHNSON": 12, "WILLIAMS": 11, "BROWN": 10, "JONES": 10, "MILLER": 9,
    "DAVIS": 9, "WILSON": 8, "TAYLOR": 8, "CLARK": 7, "LEWIS": 7, "WALKER": 7, "HALL": 6,
    "YOUNG": 6, "KING": 6, "WRIGHT": 6, "LOPEZ": 6, "HILL": 5, "SCOTT": 5, "GREEN": 5,
    "ADAMS": 5, "BAKER": 5, "NELSON": 5, "CARTER": 5, "MITCHELL": 5, "PEREZ": 5,
    "ROBERTS": 5, "TURNER": 5, "PHILLIPS": 5, "CAMPBELL": 5, "PARKER": 5, "EVANS": 5,
    "EDWARDS": 4, "COLLINS": 4, "STEWART": 4, "MORRIS": 4, "ROGERS": 4, "REED": 4,
    "COOK": 4, "MORGAN": 4, "BELL": 4, "MURPHY": 4, "BAILEY": 4, "RIVERA": 4, "COOPER": 4,
    "MÜLLER": 4, "GARCÍA": 4, "NGUYỄN": 3, "ØSTERGÅRD": 2, "ŁUKASIEWICZ": 2, "ÇELIK": 2,
    "YAMADA=山田": 3, "TANAKA=田中": 3, "WANG=王": 3, "KIM=김": 3,
}  # fmt: skip
GIVEN = ["JOHN", "MARY", "JAMES", "ANNA", "ROBERT", "LINDA", "MICHAEL", "SARAH", "DAVID",
         "EMMA", "TARO", "HANAKO", "WEI", "JIN", "JOSÉ", "ZOË", "RENÉ", "SØREN"]  # fmt: skip
DESCRIPTIONS = {"CT": "CT CHEST W CONTRAST", "MR": "MR BRAIN WO", "CR": "XR CHEST 2 VIEWS",
                "US": "US ABDOMEN COMPLETE", "PT": "PET/CT WHOLE BODY"}  # fmt: skip
SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
             "CR": "1.2.840.10008.5.1.4.1.1.1", "US": "1.2.840.10008.5.1.4.1.1.6.1",
             "PT": "1.2.840.10008.5.1.4.1.1.128"}  # fmt: skip
RETURN_KEYS = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
               "StudyTime", "AccessionNumber", "StudyDescription", "ReferringPhysicianName",
               "StudyInstanceUID", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
               "NumberOfStudyRelatedInstances"]  # fmt: skip
UID_ROOT = "1.2.826.0.1.3680043.10.1"
FIRST_DAY = time.mktime((2010, 1, 1, 12, 0, 0, 0, 0, -1))
DAYS = 16 * 365


@dataclass
class Row:
    name: str
    runs: int
    p50_ms: float
    p95_ms: float
    first_p95_ms: float  # to the first response (when the requester starts to see results)
    matches: float  # mean responses per query
    note: str = ""


@dataclass
class Bench:
    index: ArchiveIndex
    runs: int
    rng: random.Random
    patient_ids: list[str]


def _js(vr: str, *values: object) -> dict:
    return {"vr": vr, "Value": list(values)} if values and values[0] != "" else {"vr": vr}


def _pn(name: str) -> dict:
    groups = name.split("=")
    out = {"Alphabetic": groups[0]}
    if len(groups) > 1:
        out["Ideographic"] = groups[1]
    return {"vr": "PN", "Value": [out]}


def _patient_name(rng: random.Random) -> str:
    surname = rng.choices(list(SURNAMES), weights=list(SURNAMES.values()))[0]
    given = rng.choice(GIVEN)
    if "=" in surname:  # alphabetic=ideographic surname: the given name too
        alpha, ideo = surname.split("=")
        return f"{alpha}^{given}={ideo}^{given[:1]}"
    return f"{surname}^{given}"


def build(db: Path, studies: int, per_study: int, seed: int = 7) -> None:
    """Bulk-insert the synthetic archive straight into the index tables."""
    rng = random.Random(seed)
    index = ArchiveIndex(db, fsync=False)
    c = index.conn
    c.execute("PRAGMA synchronous=OFF")
    n_patients = max(1, int(studies * 0.7))
    patients = []
    for p in range(1, n_patients + 1):
        name = _patient_name(rng)
        pid = f"P{p:07d}"
        birth = f"{rng.randint(1930, 2020)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        sex = rng.choice("MF")
        charset = "" if name.isascii() else "ISO_IR 192"
        attrs = {"00100010": _pn(name), "00100020": _js("LO", pid),
                 "00100030": _js("DA", birth), "00100040": _js("CS", sex)}  # fmt: skip
        patients.append([p, f"{pid}\x1f", pid, "", name, levels.fold(name), birth, sex,
                         charset, levels.pack(attrs), 0, 0, 0])  # fmt: skip
    study_rows, series_rows, instance_rows = [], [], []
    series_id = instance_id = 0
    c.execute("BEGIN")
    for s in range(1, studies + 1):
        patient = patients[rng.randrange(n_patients)]
        primary = rng.choices(list(MODALITIES), weights=list(MODALITIES.values()))[0]
        day = FIRST_DAY + rng.randrange(DAYS) * 86400
        date = time.strftime("%Y%m%d", time.localtime(day))
        stime = f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}"
        study_uid = f"{UID_ROOT}.{s}"
        n_series = rng.randint(1, 5)
        modalities = [primary] + (["CT"] if primary == "PT" else [])
        counts = [per_study // n_series + (1 if k < per_study % n_series else 0)
                  for k in range(n_series)]  # fmt: skip
        size = 0
        for k, count in enumerate(counts):
            series_id += 1
            modality = modalities[k % len(modalities)]
            series_uid = f"{study_uid}.{k + 1}"
            sattrs = {"00080060": _js("CS", modality), "00200011": _js("IS", k + 1),
                      "0008103E": _js("LO", f"{modality} SERIES {k + 1}"),
                      "0020000E": _js("UI", series_uid)}  # fmt: skip
            for n in range(count):
                instance_id += 1
                sop = f"{series_uid}.{n + 1}"
                iattrs = {"00080016": _js("UI", SOP_CLASS[modality]), "00080018": _js("UI", sop),
                          "00200013": _js("IS", n + 1), "00280010": _js("US", 512),
                          "00280011": _js("US", 512), "00201041": _js("DS", n * 1.25),
                          "00200032": _js("DS", -250.0, -250.0, n * 1.25)}  # fmt: skip
                instance_rows.append((instance_id, sop, series_id, SOP_CLASS[modality],
                                      str(n + 1), "1.2.840.10008.1.2.1",
                                      f"/archive/{study_uid}/{series_uid}/{sop}.dcm", 526_000,
                                      day, "", levels.pack(iattrs)))  # fmt: skip
            size += count * 526_000
            series_rows.append((series_id, series_uid, s, modality, str(k + 1),
                                f"{modality} SERIES {k + 1}", date, stime, "",
                                levels.pack(sattrs), count, count * 526_000, day))  # fmt: skip
        description = DESCRIPTIONS[primary]
        referring = _patient_name(rng) if rng.random() < 0.8 else ""
        accession = f"A{s:08d}"
        stattrs = {"00080020": _js("DA", date), "00080030": _js("TM", stime),
                   "00080050": _js("SH", accession), "00081030": _js("LO", description),
                   "0020000D": _js("UI", study_uid), "00200010": _js("SH", str(s))}  # fmt: skip
        if referring:
            stattrs["00080090"] = _pn(referring)
        study_rows.append((s, study_uid, patient[0], date, stime, accession, str(s), referring,
                           levels.fold(referring), description,
                           "\\".join(sorted(set(modalities[: n_series]))), patient[8],
                           levels.pack(stattrs), n_series, per_study, size, day))  # fmt: skip
        patient[10] += 1
        patient[11] += n_series
        patient[12] += per_study
        if len(instance_rows) >= 100_000:
            _flush(c, study_rows, series_rows, instance_rows)
            print(f"  {s}/{studies} studies", file=sys.stderr)
    c.executemany(
        "INSERT INTO archive_patients (id, patient_key, patient_id, issuer, patient_name,"
        " patient_name_fold, birth_date, sex, charset, attrs, n_studies, n_series,"
        " n_instances) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [p for p in patients if p[10]],
    )
    _flush(c, study_rows, series_rows, instance_rows)
    c.execute("COMMIT")
    index.close()


def _flush(c, study_rows: list, series_rows: list, instance_rows: list) -> None:
    # foreign keys point up to rows inserted later (patients last): checked off meanwhile
    c.execute("PRAGMA defer_foreign_keys=ON")
    c.executemany(
        "INSERT INTO archive_studies (id, study_uid, patient_ref, study_date, study_time,"
        " accession, study_id, referring, referring_fold, description, modalities, charset,"
        " attrs, n_series, n_instances, size, received_at) VALUES"
        " (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        study_rows,
    )
    c.executemany(
        "INSERT INTO archive_series (id, series_uid, study_ref, modality, series_number,"
        " description, series_date, series_time, charset, attrs, n_instances, size,"
        " received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        series_rows,
    )
    c.executemany(
        "INSERT INTO archive_instances (id, sop_uid, series_ref, sop_class_uid,"
        " instance_number, transfer_syntax, path, size, received_at, charset, attrs)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        instance_rows,
    )
    for rows in (study_rows, series_rows, instance_rows):
        rows.clear()


def study_query(**keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for k in RETURN_KEYS:
        setattr(ds, k, "")
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def timed(
    bench: Bench,
    name: str,
    make: Callable[[random.Random], Dataset],
    note: str,
    fuzzy: bool = False,
) -> Row:
    """find() to its last response, `runs` times with fresh values (plus one warm-up)."""
    list(find(bench.index, "STUDY", make(bench.rng), fuzzy_names=fuzzy))
    times, firsts, matches = [], [], []
    for _ in range(bench.runs):
        identifier = make(bench.rng)
        t0 = time.perf_counter()
        first, n = None, 0
        for _ in find(bench.index, "STUDY", identifier, fuzzy_names=fuzzy):
            first = first or time.perf_counter()
            n += 1
        end = time.perf_counter()
        times.append((end - t0) * 1000)
        firsts.append(((first or end) - t0) * 1000)
        matches.append(n)
    return Row(name, len(times), statistics.median(times), _p95(times), _p95(firsts),
               statistics.mean(matches), note)  # fmt: skip


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


# -- rows ----------------------------------------------------------------------------------
def row_patient_id(b: Bench) -> Row:
    return timed(b, "study: PatientID", lambda r: study_query(PatientID=r.choice(b.patient_ids)),
                 "single value")  # fmt: skip


def row_name_wildcard(b: Bench) -> Row:
    return timed(b, "study: PatientName SMITH*", lambda r: study_query(PatientName="SMITH*"),
                 "wildcard, case-sensitive")  # fmt: skip


def row_name_fuzzy(b: Bench) -> Row:
    def make(r: random.Random) -> Dataset:
        return study_query(PatientName=r.choice(["smith*", "Müller^*", "garcía*", "Yamada*"]))

    return timed(b, "study: PatientName fuzzy", make, "case-insensitive, mixed", fuzzy=True)


def _month(r: random.Random) -> Dataset:
    start = FIRST_DAY + r.randrange(DAYS - 31) * 86400
    a = time.strftime("%Y%m%d", time.localtime(start))
    z = time.strftime("%Y%m%d", time.localtime(start + 30 * 86400))
    return study_query(StudyDate=f"{a}-{z}")


def row_date_range(b: Bench) -> Row:
    return timed(b, "study: StudyDate 1 month", _month, "range")


def row_modality_month(b: Bench) -> Row:
    def make(r: random.Random) -> Dataset:
        ds = _month(r)
        ds.ModalitiesInStudy = r.choice(list(MODALITIES))
        return ds

    return timed(b, "study: Modality + 1 month", make, "the usual worklist-style query")


def row_modality(b: Bench) -> Row:
    return timed(b, "study: ModalitiesInStudy", lambda r: study_query(
        ModalitiesInStudy=r.choice(list(MODALITIES))), "one of five, every match returned")  # fmt: skip


ROWS: list[Callable[[Bench], Row]] = [
    row_patient_id,
    row_name_wildcard,
    row_date_range,
    row_modality,
    row_modality_month,
    row_name_fuzzy,
]
TARGET_ROWS = {"study: PatientID", "study: PatientName SMITH*", "study: StudyDate 1 month",
               "study: ModalitiesInStudy"}  # fmt: skip


# -- through DIMSE: findscu, and C-MOVE against Orthanc ---------------------------------------
def findscu_args(port: int, identifier: Dataset) -> list[str]:
    args = [dcmtk("findscu"), "-aet", "BENCH", "-aec", "GATEWAY", "-S"]
    for elem in identifier:
        args += ["-k", f"{elem.keyword}={elem.value}" if elem.value != "" else elem.keyword]
    return [*args, "127.0.0.1", str(port)]


def dimse_rows(bench: Bench, port: int) -> list[Row]:
    """The target queries through findscu: connect, query, every response, release."""
    makers = {
        "DIMSE: PatientID": lambda r: study_query(PatientID=r.choice(bench.patient_ids)),
        "DIMSE: PatientName SMITH*": lambda r: study_query(PatientName="SMITH*"),
        "DIMSE: StudyDate 1 month": _month,
        "DIMSE: ModalitiesInStudy": lambda r: study_query(
            ModalitiesInStudy=r.choice(list(MODALITIES))
        ),
    }
    rows = []
    for name, make in makers.items():
        times = []
        for _ in range(bench.runs + 1):
            args = findscu_args(port, make(bench.rng))
            t0 = time.perf_counter()
            out = subprocess.run(args, env=PEER_ENV, capture_output=True, timeout=300)
            times.append((time.perf_counter() - t0) * 1000)
            if out.returncode != 0:
                raise RuntimeError(f"findscu failed: {out.stderr[-500:]!r}")
        times = times[1:]  # the first warms the caches
        rows.append(Row(name, len(times), statistics.median(times), _p95(times), 0.0, 0.0,
                        "findscu process, association and every response"))  # fmt: skip
    return rows


def move_seconds(port: int, aec: str, dest: str, study_uid: str) -> float:
    args = [dcmtk("movescu"), "-aet", "BENCH", "-aec", aec, "-aem", dest, "-S",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
            "127.0.0.1", str(port)]  # fmt: skip
    t0 = time.perf_counter()
    out = subprocess.run(args, env=PEER_ENV, capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t0
    if out.returncode != 0 or "Failed" in out.stderr:
        raise RuntimeError(f"movescu to {aec} failed: {out.stderr[-500:]}")
    return took


def run_dimse(bench: Bench, work: Path, count: int) -> tuple[list[Row], dict]:
    """Start the gateway on the bench index; findscu rows; C-MOVE gateway vs Orthanc."""
    scp = start_storescp(work / "moved", ae_title="MOVEDEST")
    cfg = gateway_config(
        work / "gw",
        {"archive": {"type": "archive"}},
        data_dir=str(work),
        move_destinations={"MOVEDEST": {"host": "127.0.0.1", "port": scp.port}},
    )
    cfg["dimse"]["allowed_calling_aets"] = ["*"]
    (work / "gw").mkdir(exist_ok=True)
    gw = Gateway(work / "gw", cfg, [{"name": "all", "forward": ["archive"]}])
    orthanc = None
    try:
        gw.start()
        rows = dimse_rows(bench, gw.port)
        files = ct_series(work / "move-study", count)
        study_uid = str(dcmread(files[0], stop_before_pixels=True)
                        .StudyInstanceUID)  # fmt: skip
        out = storescu(gw.port, files)
        if out.returncode != 0:
            raise RuntimeError(f"storescu to the gateway failed: {out.stderr[-500:]}")
        deadline = time.time() + 300
        while '"instances": {}' not in gw.cli("queue", "status", "--json").stdout.replace("\n", ""):
            if time.time() > deadline:
                raise RuntimeError("the gateway did not archive the study in 5 minutes")
            time.sleep(0.5)
        orthanc = start_orthanc(
            work / "orthanc",
            DicomModalities={"dest": ["MOVEDEST", "127.0.0.1", scp.port]},
            DicomAlwaysAllowMove=True,  # the bench's movescu is not one of its modalities
        )
        out = storescu(orthanc.dicom_port, files, aec="ORTHANC")
        if out.returncode != 0:
            raise RuntimeError(f"storescu to Orthanc failed: {out.stderr[-500:]}")
        moves = {}
        for name, port, aec in (("gateway", gw.port, "GATEWAY"),
                                ("orthanc", orthanc.dicom_port, "ORTHANC")):  # fmt: skip
            best = min(move_seconds(port, aec, "MOVEDEST", study_uid) for _ in range(2))
            moves[name] = count / best
        return rows, moves
    finally:
        if orthanc is not None:
            orthanc.stop()
        if gw.proc is not None:
            gw.stop()
        scp.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--studies", type=int, default=10_000, help="studies (10,000)")
    ap.add_argument("--per-study", type=int, default=100, help="instances per study (100)")
    ap.add_argument("--runs", type=int, default=40, help="queries per row (40)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gateway-bench-qr")
    ap.add_argument("--rebuild", action="store_true", help="make the index again")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--no-dimse", action="store_true", help="only the index rows")
    ap.add_argument("--move-count", type=int, default=500, help="instances moved (500)")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    db = args.work / "gateway.db"
    params = {"studies": args.studies, "per_study": args.per_study, "schema": 1}
    meta = args.work / "params.json"
    if (
        args.rebuild
        or not db.exists()
        or not meta.exists()
        or json.loads(meta.read_text()) != params
    ):
        for f in args.work.glob("gateway.db*"):
            f.unlink()
        t0 = time.time()
        print(f"building {args.studies * args.per_study:,} instances in {db} ...", file=sys.stderr)
        build(db, args.studies, args.per_study)
        meta.write_text(json.dumps(params))
        print(f"built in {time.time() - t0:.0f} s", file=sys.stderr)
    index = ArchiveIndex(db)
    counts = index.counts()
    patient_ids = [r[0] for r in index.conn.execute("SELECT patient_id FROM archive_patients")]
    bench = Bench(index, args.runs, random.Random(1), patient_ids)
    rows = [row(bench) for row in ROWS]
    index.close()
    moves: dict[str, float] = {}
    if not args.no_dimse:
        dimse, moves = run_dimse(bench, args.work, args.move_count)
        rows += dimse
    size_mb = sum(f.stat().st_size for f in args.work.glob("gateway.db*")) / 1e6
    print(f"index: {counts['instances']:,} instances, {counts['series']:,} series, "
          f"{counts['studies']:,} studies, {counts['patients']:,} patients; "
          f"database {size_mb:,.0f} MB")  # fmt: skip
    print(f"{'row':28} {'runs':>5} {'p50 ms':>8} {'p95 ms':>8} {'1st p95':>8} {'matches':>8}  note")
    for r in rows:
        print(f"{r.name:28} {r.runs:5d} {r.p50_ms:8.1f} {r.p95_ms:8.1f} {r.first_p95_ms:8.1f}"
              f" {r.matches:8.0f}  {r.note}")  # fmt: skip
    worst = max(r.p95_ms for r in rows if r.name in TARGET_ROWS)
    verdict = "ok" if worst < TARGET_P95_MS else "MISS"
    print(f"target: study-level C-FIND p95 < {TARGET_P95_MS:.0f} ms (patient ID, name wildcard,"
          f" date range, modality): worst p95 {worst:.1f} ms: {verdict}")  # fmt: skip
    if moves:
        ratio = moves["gateway"] / moves["orthanc"]
        print(f"C-MOVE of a {args.move_count}-instance CT study to storescp (movescu to final"
              f" response, best of 2): gateway {moves['gateway']:.0f} instances/s, Orthanc"
              f" {moves['orthanc']:.0f} instances/s: {ratio:.2f}x"
              f" (target >= 1x: {'ok' if ratio >= 1 else 'MISS'})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "rows": [asdict(r) for r in rows],
                                         "worst_p95_ms": worst, "verdict": verdict,
                                         "move_per_s": moves}, indent=2))  # fmt: skip
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
