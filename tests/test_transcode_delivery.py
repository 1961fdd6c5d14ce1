"""On-the-fly transcoding in the C-STORE destination, against real dcmtk: compressed
instances reach a storescp that accepts only uncompressed syntaxes, with the same pixels and
SOP Instance UIDs; one that cannot be decoded is dead-lettered with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

import gateway.transcode  # noqa: F401 - registers the JPEG decoder the comparisons use
from tests.conftest import dicom_dest, wait_for
from tests.peers import corpus_dir, send_by_ts
from tests.test_delivery import jobs_in, queue_json

ALL = [{"name": "all", "match": {}, "forward": ["pacs"]}]
COMPRESSED = [
    "pydicom-data/US1_J2KR.dcm",  # JPEG 2000 lossless, RGB as YBR_RCT
    "pydicom/test_files/693_J2KI.dcm",  # JPEG 2000, 16-bit
    "pydicom-data/emri_small_jpeg_ls_lossless.dcm",  # JPEG-LS, 12-bit, 10 frames
    "pydicom/test_files/SC_rgb_jls_lossy_sample.dcm",  # JPEG-LS near-lossless, RGB
    "pydicom/test_files/MR_small_RLE.dcm",  # RLE, 16-bit signed
    "pydicom/test_files/SC_rgb_rle_16bit.dcm",  # RLE, 16-bit RGB
    "pydicom/test_files/examples_ybr_color.dcm",  # JPEG baseline YBR_FULL_422, 30 frames
    "pydicom/test_files/SC_rgb_dcmtk_+eb+cy+s2.dcm",  # JPEG baseline
    "pydicom-data/JPEG-LL.dcm",  # JPEG lossless SV1, 16-bit signed
]


def test_compressed_instances_reach_an_uncompressed_only_peer(
    tmp_path: Path, gateway_factory, storescp_factory
) -> None:
    scp = storescp_factory(accept=None)  # storescp's default: uncompressed syntaxes only
    gw = gateway_factory({"pacs": dicom_dest(scp)}, ALL).start()
    files = [corpus_dir() / name for name in COMPRESSED]
    uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert len(uids) == len(files)  # storescp names its files by SOP Instance UID
    out = send_by_ts(gw.port, files)
    assert "fail=0" in out.stdout, out.stdout + out.stderr
    wait_for(lambda: len(scp.files()) == len(files), 90, "every instance at storescp")
    wait_for(lambda: not queue_json(gw)["destinations"], 30, "queue to drain")
    received = {str(ds.SOPInstanceUID): ds for ds in map(dcmread, scp.files())}
    for path in files:
        original = dcmread(path)
        got = received.pop(str(original.SOPInstanceUID))  # the UID is kept
        assert got.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        assert np.array_equal(pixel_array(got), pixel_array(original)), path.name
    assert not received
    logs = gw.logs()
    assert logs.count("sending it transcoded to Explicit VR Little Endian") == len(files)
    assert "Traceback" not in logs
    assert gw.stop() == 0


def test_an_instance_that_cannot_be_transcoded_is_dead_lettered_with_the_reason(
    tmp_path: Path, gateway_factory, storescp_factory
) -> None:
    broken = tmp_path / "broken.dcm"
    ds = dcmread(corpus_dir() / "pydicom/test_files/SC_rgb_dcmtk_+eb+cy+s2.dcm")
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(200)])  # a JPEG that is not one
    ds.save_as(broken)
    scp = storescp_factory(accept=None)
    gw = gateway_factory({"pacs": dicom_dest(scp)}, ALL).start()
    assert "fail=0" in send_by_ts(gw.port, [broken]).stdout
    wait_for(lambda: jobs_in(gw, "dead") == 1, 60, "the broken instance to dead-letter")
    (dead,) = json.loads(gw.cli("queue", "dead", "--json").stdout)
    assert dead["attempts"] == 1  # permanent: not retried
    assert "accepts no context" in dead["last_error"]
    assert "cannot decode JPEG Baseline" in dead["last_error"]
    assert not scp.files()
    assert gw.stop() == 0


def test_each_file_proposes_its_own_syntax_first_and_batches_keep_to_128_contexts() -> None:
    from gateway.destinations.dicom import MAX_CONTEXTS, _by_context_limit, _contexts
    from gateway.queue import Job

    def job(n: int, sop_class: str, ts: str) -> Job:
        return Job(n, n, "pacs", "", 0, 0.0, "", f"1.2.3.{n}", sop_class, ts, "", "", 0.0)

    jpeg = job(0, "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.4.50")
    assert _contexts(jpeg) == [
        (jpeg.sop_class_uid, "1.2.840.10008.1.2.4.50"),  # its own first, then one per fallback
        (jpeg.sop_class_uid, ExplicitVRLittleEndian),
        (jpeg.sop_class_uid, ImplicitVRLittleEndian),
    ]
    assert len(_contexts(job(1, "1.2.3", ImplicitVRLittleEndian))) == 2  # no duplicate
    # 100 SOP classes, each in JPEG: 3 contexts each, so 42 jobs an association at most
    jobs = [job(n, f"1.2.3.4.{n}", "1.2.840.10008.1.2.4.50") for n in range(100)]
    chunks = _by_context_limit(jobs)
    assert [len(c) for c in chunks] == [42, 42, 16]
    for chunk in chunks:
        assert len({key for j in chunk for key in _contexts(j)}) <= MAX_CONTEXTS
