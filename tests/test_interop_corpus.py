"""Interop over the shared corpus: dcmtk storescu -> gateway -> Orthanc and dcmtk storescp.

Every corpus file (MANIFEST.tsv, broken ones included) is sent to the gateway with the
shared client send_by_ts.sh (dcmtk storescu, the file's own transfer syntax). The gateway
forwards each instance over C-STORE to a dcmtk storescp and to an Orthanc. Each file that
got in must arrive at both, with the same SOP Instance UID and transfer syntax, the same
dataset after decoding and identical pixel data. Files that storescu refuses to send (it
checks before opening an association) go in with the gateway's own `send` instead.

The corpus reuses SOP Instance UIDs (MR_small in 9 encodings, SC_rgb in 19, ...), and both
peers keep one instance per UID. So files go in rounds in which no UID repeats; after each
round the queue drains, the arrivals are compared and both peers are emptied.
"""

from __future__ import annotations

import csv
import json
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.tag import Tag

from tests.peers import (
    PEER_ENV,
    ROOT,
    Gateway,
    Orthanc,
    StoreSCP,
    corpus_dir,
    dcmtk,
    gateway_config,
    send_by_ts,
    start_orthanc,
    start_storescp,
    storescu,
)

ROUND_DRAIN_S = 90.0
PIXEL_DATA = Tag(0x7FE0, 0x0010)

# Files pydicom reads (status ok) that get into the gateway with neither client. storescu
# refuses each before any network traffic (it needs the SOP Class and Instance UIDs in the
# dataset and a dataset it can parse); the gateway's own `send` (UIDs from the file meta)
# then fails with an error matching the pattern.  {files: (error, why)}
GATEWAY_REFUSED = r"C-STORE status 0xC210"
CLIENT_GAVE_UP = r"gateway send: (not sent|cannot send spool file)"
NO_CONTEXT = r"GATEWAY accepts no context"
NOT_SENDABLE = {
    r"pydicom/dicomdir/(.*/)?DICOMDIR.*": (
        NO_CONTEXT,
        "Media Storage Directory (DICOMDIR) is a media-only SOP class (PS3.10), not a network"
        " storage class: the gateway accepts no presentation context for it",
    ),
    r"worklist/wklist\d+\.wl": (
        NO_CONTEXT,
        "Modality Worklist dataset under dcmtk's private pseudo SOP class"
        " 1.2.276.0.7230010.3.1.0.1, not a storage object: refused by policy"
        " (dimse.accept_unknown_sop_classes is false)",
    ),
    r"pydicom/test_files/empty_charset_LEI\.dcm": (
        r"gateway send: not sent: no SOP Class UID or SOP Instance UID",
        "no SOP Class or Instance UID anywhere (file meta or dataset): no C-STORE request"
        " can be built",
    ),
    r"pydicom/charsets/chrSQEncoding1?\.dcm|pydicom/test_files/(priv_SQ|no_meta_group_length"
    r"|UN_sequence)\.dcm": (
        GATEWAY_REFUSED,
        "SOP Class/Instance UID only in the file meta, not in the dataset: the gateway"
        " answers 0xC210, as dcmtk storescp and Orthanc answer 0xC000",
    ),
    r"pydicom-data/emri_small_jpeg_2k_lossless_too_short\.dcm": (
        GATEWAY_REFUSED,
        "truncated: encapsulated Pixel Data without its sequence delimiter; the gateway"
        " answers 0xC210 (storescp would abort, Orthanc would stop answering)",
    ),
    r"pydicom/test_files/rtplan_truncated\.dcm": (
        GATEWAY_REFUSED,
        "truncated inside a sequence, and its file meta names another SOP Instance UID than"
        " its dataset: the gateway answers 0xC210",
    ),
    r"pydicom/test_files/SC_rgb_jpeg\.dcm": (
        GATEWAY_REFUSED,
        "dataset encoded Implicit VR under a file meta saying JPEG Baseline (explicit VR):"
        " dcmtk cannot parse it, the gateway answers 0xC210",
    ),
}

# Instances the gateway accepted and forwarded that a peer refuses: each dead-letters at
# that peer with an error matching the pattern.  (files, peers, error, why)
PEER_REFUSES = [
    (
        r"pydicom/palettes/.*\.dcm",
        ("storescp", "orthanc"),
        r"accept|context",
        "Color Palette Storage (1.2.840.10008.5.1.4.39.1): dcmtk 3.6.7 and Orthanc 1.10 know"
        " the UID but not as a storage class, so even promiscuous mode (storescp -pm,"
        " UnknownSopClassAccepted) rejects the presentation context",
    ),
    (
        r"pydicom-data/explicit_VR-UN\.dcm|pydicom/test_files/rtdose_rle(_1frame)?\.dcm",
        ("storescp", "orthanc"),
        r"0xC000",
        "SOP Class/Instance UID (among others) encoded with VR UN: dcmtk does not resolve UN"
        " to the dictionary VR, finds no SOP UIDs and answers 0xC000 (storescu will not send"
        " it either); pydicom does, so the gateway accepts it",
    ),
    (
        r"pydicom/test_files/(JPEGLSNearLossless_(08|16)|SC_rgb_jls_lossy_(line|sample))\.dcm",
        ("orthanc",),
        r"0xA700",
        "no Study/Series Instance UID: Orthanc cannot index it and answers 0xA700",
    ),
]


# -- the corpus --------------------------------------------------------------------------
@dataclass
class CorpusFile:
    name: str
    path: Path
    status: str  # MANIFEST.tsv: "ok" when pydicom reads and decodes it
    uids: set[str]  # SOP Instance UIDs in the file meta and in the dataset

    @property
    def readable(self) -> bool:
        return self.status == "ok"


def load_corpus() -> list[CorpusFile]:
    root = corpus_dir()
    manifest = root / "MANIFEST.tsv"
    if not manifest.exists():
        pytest.fail(f"shared corpus not built at {root}: bash ../shared/corpus/build.sh")
    out = []
    with manifest.open(newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            path = root / row["name"]
            ds = dcmread(path, stop_before_pixels=True, force=True)
            uids = {
                str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")),
                str(ds.get("SOPInstanceUID", "")),
            } - {""}
            out.append(CorpusFile(row["name"], path, row["status"], uids))
    return out


def rounds(files: list[CorpusFile]) -> list[list[CorpusFile]]:
    """Greedy split so that no SOP Instance UID occurs twice in one round."""
    out: list[tuple[set[str], list[CorpusFile]]] = []
    for f in files:
        for used, members in out:
            if not (f.uids & used):
                used |= f.uids
                members.append(f)
                break
        else:
            out.append((set(f.uids), [f]))
    return [members for _, members in out]


def not_sendable(name: str) -> tuple[str, str] | None:
    """(error pattern, why) when no client gets this file into the gateway."""
    for pattern, expected in NOT_SENDABLE.items():
        if re.fullmatch(pattern, name):
            return expected
    return None


def peer_refusal(name: str, peer: str) -> tuple[str, str] | None:
    """(error pattern, why) when `peer` is known to refuse this file."""
    for pattern, peers, error, why in PEER_REFUSES:
        if peer in peers and re.fullmatch(pattern, name):
            return error, why
    return None


# -- comparing ---------------------------------------------------------------------------
def _frames(ds: Dataset) -> list[bytes]:
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))


def pixel_diff(orig: Dataset, got: Dataset) -> list[str]:
    if (PIXEL_DATA in orig) != (PIXEL_DATA in got):
        return [f"PixelData present: sent {PIXEL_DATA in orig}, received {PIXEL_DATA in got}"]
    if PIXEL_DATA not in orig or orig.PixelData == got.PixelData:
        return []
    if orig.file_meta.TransferSyntaxUID.is_encapsulated:
        try:
            if _frames(orig) == _frames(got):
                return []  # same frames, fragments or offset table laid out differently
        except Exception as exc:  # noqa: BLE001 - report, do not crash the comparison
            return [f"PixelData differs and frames unreadable: {exc}"]
    return [f"PixelData differs ({len(orig.PixelData)} vs {len(got.PixelData)} bytes)"]


# dcmtk storescu drops Data Set Trailing Padding when it sends (PS3.10 7.2: no meaning).
TRAILING_PADDING = Tag(0xFFFC, 0xFFFC)
# Orthanc 1.10 discards group 0007 on store, which PS3.5 7.8.1 forbids ("(0007,xxxx) shall
# not be used"; ctbrain2.dcm has six SQs there); storescp keeps them.
DROPPED_BY = {"storescp": set(), "orthanc": {0x0007}}


def _same_value(a: object, b: object) -> bool:
    if a == b:
        return True
    # dcmtk storescu pads an odd-length binary value to even length (PS3.5 7.1.1).
    return isinstance(a, bytes) and len(a) % 2 == 1 and b == a + b"\x00"


def dataset_diff(
    orig: Dataset, got: Dataset, where: str = "", dropped: set[int] = frozenset()
) -> list[str]:
    """Differences after decoding, group 0002 and group lengths (gggg,0000) aside."""
    out = []
    for tag in sorted(set(orig.keys()) | set(got.keys())):
        if tag.group == 0x0002 or tag.element == 0x0000 or tag in (PIXEL_DATA, TRAILING_PADDING):
            continue
        if tag not in got:
            if tag.group not in dropped:
                out.append(f"{where}{tag} missing")
            continue
        if tag not in orig:
            out.append(f"{where}{tag} added")
            continue
        a, b = orig[tag], got[tag]
        if a.VR == "SQ" and b.VR == "SQ":
            if len(a.value) != len(b.value):
                out.append(f"{where}{tag} {len(a.value)} vs {len(b.value)} items")
                continue
            for i, (x, y) in enumerate(zip(a.value, b.value, strict=True)):
                out += dataset_diff(x, y, f"{where}{tag}[{i}].", dropped)
        elif a.VR != b.VR or not _same_value(a.value, b.value):
            out.append(f"{where}{tag} {a.VR} {a.value!r:.60} != {b.VR} {b.value!r:.60}")
    return out


def compare(f: CorpusFile, received: Path, peer: str) -> list[str]:
    orig = dcmread(f.path, force=True)
    got = dcmread(received)
    out = []
    if got.get("SOPInstanceUID") != orig.get("SOPInstanceUID"):
        out.append(f"SOP Instance UID {got.get('SOPInstanceUID')} != {orig.get('SOPInstanceUID')}")
    ts = orig.file_meta.get("TransferSyntaxUID")
    if ts is not None and got.file_meta.TransferSyntaxUID != ts:
        out.append(f"transfer syntax {got.file_meta.TransferSyntaxUID} != {ts}")
    return out + dataset_diff(orig, got, dropped=DROPPED_BY[peer]) + pixel_diff(orig, got)


# -- the rig -----------------------------------------------------------------------------
@dataclass
class Outcome:
    file: CorpusFile
    round: int
    client: str = "storescu"  # or "gateway send"
    accepted: bool = False
    why: str = ""  # why it did not get in
    refused_by_gateway: bool = False  # the gateway answered with a failure status
    arrived: dict[str, Path] = field(default_factory=dict)  # peer -> copy of what arrived
    diffs: dict[str, list[str]] = field(default_factory=dict)  # peer -> differences


@dataclass
class Rig:
    work: Path
    gw: Gateway
    scp: StoreSCP
    orthanc: Orthanc
    corpus: list[CorpusFile]
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0


def storescu_local_refusal(path: Path) -> str | None:
    """storescu's reason if it refuses `path` before connecting; None if it tries to
    connect (to a port bound but not listening, so refused and nothing is sent)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        r = subprocess.run(
            [dcmtk("storescu"), "-R", "127.0.0.1", str(port), str(path)],
            env=PEER_ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
    text = r.stdout + r.stderr
    if "Association Request Failed" in text:
        return None
    return "; ".join(line for line in text.splitlines() if line.startswith(("F:", "E:")))


def gateway_send(port: int, paths: list[Path]) -> dict[Path, str]:
    """The gateway's own C-STORE client; returns {file: error} for what it could not store."""
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "send", f"127.0.0.1:{port}", "--aet", "STORESCU"]
        + [str(p) for p in paths],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    errors = {}
    for p in paths:
        for line in r.stderr.splitlines():
            if line.startswith(f"{p}: "):
                errors[p] = line[len(f"{p}: ") :]
    assert r.returncode == (1 if errors else 0), r.stdout + r.stderr
    return errors


def metrics(gw: Gateway) -> dict[str, float]:
    out = {}
    for line in gw.http("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def wait_drained(gw: Gateway, timeout: float) -> None:
    """Until no job is pending or leased and no instance waits for routing."""
    busy = re.compile(
        r'gateway_(queue_depth\{.*state="(pending|leased)"|spool_instances\{state="new")'
    )
    deadline = time.monotonic() + timeout
    while True:
        waiting = {k: v for k, v in metrics(gw).items() if busy.match(k) and v}
        if not waiting:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"queue not drained after {timeout} s: {waiting}")
        time.sleep(0.2)


def collect_storescp(scp: StoreSCP, dest: Path) -> dict[str, Path]:
    """Move what storescp wrote into `dest`; by SOP Instance UID."""
    dest.mkdir(parents=True)
    out = {}
    for p in scp.files():
        moved = p.rename(dest / p.name)
        meta = dcmread(moved, stop_before_pixels=True).file_meta
        out[str(meta.MediaStorageSOPInstanceUID)] = moved
    return out


def collect_orthanc(orthanc: Orthanc, uids: set[str], dest: Path) -> dict[str, Path]:
    """Download what Orthanc stored for `uids`, then delete everything it holds."""
    dest.mkdir(parents=True)
    out = {}
    with orthanc.client() as c:
        for uid in sorted(uids):
            hits = [
                h for h in c.post("/tools/lookup", content=uid).json() if h["Type"] == "Instance"
            ]
            if hits:
                assert len(hits) == 1, (uid, hits)
                target = dest / f"{hits[0]['ID']}.dcm"
                target.write_bytes(c.get(f"/instances/{hits[0]['ID']}/file").content)
                out[uid] = target
        for oid in c.get("/instances").json():
            c.delete(f"/instances/{oid}").raise_for_status()
    return out


def run_round(rig: Rig, n: int, files: list[CorpusFile]) -> list[Outcome]:
    by_path = {f.path: Outcome(f, n) for f in files}
    r = send_by_ts(rig.gw.port, [f.path for f in files])
    assert f"sent ok={len(files) - r.stdout.count('FAIL(')} " in r.stdout, r.stdout + r.stderr
    failed = {Path(p) for p in re.findall(r"^FAIL\([^)]*\) (.+)$", r.stdout, re.M)}
    fallback = []
    for path, o in by_path.items():
        if path not in failed:
            o.accepted = True
        elif (why := storescu_local_refusal(path)) is None:
            o.why = "the gateway answered storescu with a failure status"
            o.refused_by_gateway = True
        else:
            o.client, o.why = "gateway send", f"storescu: {why}"
            fallback.append(path)
    if fallback:
        errors = gateway_send(rig.gw.port, fallback)
        for path in fallback:
            o = by_path[path]
            if path in errors:
                o.why += f"; gateway send: {errors[path]}"
                o.refused_by_gateway = bool(re.search(f"{GATEWAY_REFUSED}|{NO_CONTEXT}", o.why))
            else:
                o.accepted, o.why = True, ""
    wait_drained(rig.gw, ROUND_DRAIN_S)

    accepted = [o for o in by_path.values() if o.accepted]
    at_scp = collect_storescp(rig.scp, rig.work / "arrived" / f"round{n}" / "storescp")
    at_orthanc = collect_orthanc(
        rig.orthanc,
        {u for o in accepted for u in o.file.uids},
        rig.work / "arrived" / f"round{n}" / "orthanc",
    )
    for o in accepted:
        for peer, got in (("storescp", at_scp), ("orthanc", at_orthanc)):
            hit = next((got[u] for u in o.file.uids if u in got), None)
            if hit is not None:
                o.arrived[peer] = hit
                o.diffs[peer] = compare(o.file, hit, peer)
    return list(by_path.values())


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory):
    corpus = load_corpus()
    work = tmp_path_factory.mktemp("interop-corpus")
    started: list = []
    try:
        scp = start_storescp(work / "storescp", ae_title="STORESCP")
        started.append(scp)
        orthanc = start_orthanc(work / "orthanc", ae_title="ORTHANC")
        started.append(orthanc)
        # Quick retries: a peer's refusal (0xA700 from Orthanc) dead-letters within a round.
        retry = {"max_attempts": 4, "initial_backoff": 0.5, "max_backoff": 2, "jitter": 0.2}
        # A lost response (PITFALLS: pynetdicom race) costs this, not a minute, per round.
        timeouts = {"connect_timeout": 10, "dimse_timeout": 15}
        destinations = {
            "storescp": {
                "type": "dicom",
                "ae_title": "STORESCP",
                "host": "127.0.0.1",
                "port": scp.port,
                "retry": retry,
                **timeouts,
            },
            "orthanc": {
                "type": "dicom",
                "ae_title": "ORTHANC",
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "retry": retry,
                **timeouts,
            },
        }
        rules = [{"name": "all", "match": {}, "forward": ["storescp", "orthanc"]}]
        gw = Gateway(work / "gw", gateway_config(work / "gw", destinations), rules)
        (work / "gw").mkdir()
        gw.start()
        started.append(gw)
        rig = Rig(work, gw, scp, orthanc, corpus)
        t0 = time.monotonic()
        for n, files in enumerate(rounds(corpus)):
            rig.outcomes += run_round(rig, n, files)
        rig.seconds = time.monotonic() - t0
        yield rig
    finally:
        for peer in reversed(started):
            peer.stop()


# -- the checks --------------------------------------------------------------------------
def test_every_corpus_file_was_sent(rig: Rig):
    assert sorted(o.file.name for o in rig.outcomes) == sorted(f.name for f in rig.corpus)
    n = len(rig.outcomes)
    accepted = [o for o in rig.outcomes if o.accepted]
    print(f"\n{n} files in {rig.seconds:.0f} s; {len(accepted)} accepted", end="")
    print(f" ({sum(o.client != 'storescu' for o in accepted)} by the gateway's own send);", end="")
    for peer in ("storescp", "orthanc"):
        print(f" {sum(peer in o.arrived for o in rig.outcomes)} arrived at {peer};", end="")
    print()
    for o in rig.outcomes:
        if not o.accepted or len(o.arrived) < 2:
            got = f"arrived at {sorted(o.arrived)}" if o.accepted else o.why
            print(f"  {o.file.name} [{o.file.status[:12]}] {o.client}: {got}")


def test_readable_files_get_in(rig: Rig):
    """Every file pydicom reads is accepted, bar the listed ones nothing can send."""
    problems = []
    for o in rig.outcomes:
        if not o.file.readable:
            continue
        listed = not_sendable(o.file.name)
        if o.accepted and listed:
            problems.append(f"{o.file.name}: listed as not sendable ({listed[1]}) but got in")
        elif not o.accepted and not listed:
            problems.append(f"{o.file.name}: not accepted: {o.why}")
        elif listed and not re.search(listed[0], o.why):
            problems.append(f"{o.file.name}: expected /{listed[0]}/, got: {o.why}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("peer", ["storescp", "orthanc"])
def test_accepted_files_arrive_identical(rig: Rig, peer: str):
    """Same SOP Instance UID, transfer syntax, decoded dataset and pixel data."""
    problems = []
    for o in rig.outcomes:
        if not o.accepted:
            continue
        refused = peer_refusal(o.file.name, peer)
        if peer not in o.arrived:
            if refused is None:
                problems.append(f"{o.file.name}: never arrived at {peer}")
        elif refused is not None:
            problems.append(f"{o.file.name}: listed as refused by {peer} but arrived")
        elif o.diffs[peer]:
            problems.append(f"{o.file.name} at {peer}: " + "; ".join(o.diffs[peer][:10]))
    assert not problems, "\n".join(problems)


def test_broken_files_are_refused_or_kept_as_is(rig: Rig):
    """A broken file gets a failure status, or goes through unchanged; some no client
    can send at all (storescu and the gateway's `send` both give up before sending)."""
    problems = []
    broken = [o for o in rig.outcomes if not o.file.readable]
    assert broken
    for o in broken:
        if o.accepted:
            for peer in ("storescp", "orthanc"):
                if peer not in o.arrived:
                    problems.append(f"{o.file.name}: accepted, never arrived at {peer}")
                elif o.diffs[peer]:
                    problems.append(f"{o.file.name} at {peer}: " + "; ".join(o.diffs[peer][:5]))
        elif not (o.refused_by_gateway or re.search(CLIENT_GAVE_UP, o.why)):
            problems.append(f"{o.file.name}: neither accepted nor refused: {o.why}")
    assert not problems, "\n".join(problems)


def test_dead_letters_are_exactly_the_known_peer_refusals(rig: Rig):
    r = rig.gw.cli("queue", "dead", "--json")
    assert r.returncode == 0, r.stderr
    dead = json.loads(r.stdout)
    print("\ndead letters:", *(f"  {d['destination']}: {d['last_error']}" for d in dead), sep="\n")
    refused = [
        (o, peer)
        for o in rig.outcomes
        for peer in ("storescp", "orthanc")
        if o.accepted and peer_refusal(o.file.name, peer)
    ]
    problems = []
    for d in dead:  # each dead letter takes one refused (file, peer) with its UID
        match = next(
            (
                (o, peer)
                for o, peer in refused
                if peer == d["destination"] and d["sop_instance_uid"] in o.file.uids
            ),
            None,
        )
        if match is None:
            problems.append(f"unexpected dead letter: {d}")
            continue
        refused.remove(match)
        error, _why = peer_refusal(match[0].file.name, match[1])
        if not re.search(error, d["last_error"] or ""):
            problems.append(f"{match[0].file.name} at {match[1]}: {d['last_error']}")
    problems += [f"{o.file.name}: no dead letter at {peer}" for o, peer in refused]
    assert not problems, "\n".join(problems)


def test_gateway_keeps_serving(rig: Rig):
    gw = rig.gw
    assert gw.proc is not None and gw.proc.poll() is None, "gateway exited"
    echo = subprocess.run(
        [dcmtk("echoscu"), "-aet", "ECHOSCU", "-aec", "GATEWAY", "127.0.0.1", str(gw.port)],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert echo.returncode == 0, echo.stdout + echo.stderr
    good = corpus_dir() / "pydicom/test_files/CT_small.dcm"
    sent = storescu(gw.port, [good])
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_drained(gw, ROUND_DRAIN_S)
    uid = str(dcmread(good, stop_before_pixels=True).SOPInstanceUID)
    arrived = collect_storescp(rig.scp, rig.work / "arrived" / "after")
    assert uid in arrived
    assert "Traceback" not in gw.logs()
