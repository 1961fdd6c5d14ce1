"""The storage data phase (gateway.ul, gateway.requestor) against pydicom and pynetdicom."""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread
from pynetdicom import AE, build_role
from pynetdicom.sop_class import CTImageStorage, Verification

from gateway import ul
from gateway.requestor import NotPart10, dataset_offset
from tests.conftest import wait_for
from tests.synth import ct_series

ARCHIVE = {"archive": {"type": "archive"}}
TO_ARCHIVE = [{"name": "all", "match": {}, "forward": ["archive"]}]


def test_command_sets_round_trip():
    rq = ul.decode_command(ul.store_rq(7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"))
    assert ul.us(rq, ul.COMMAND_FIELD) == ul.C_STORE_RQ
    assert ul.us(rq, ul.MESSAGE_ID) == 7
    assert ul.ui(rq, ul.AFFECTED_SOP_INSTANCE) == "1.2.3.4.5"  # odd length: NUL-padded
    raw = ul.response(ul.C_STORE_RSP, 7, "1.2.840.10008.5.1.4.1.1.2", 0xA700, "1.2.3", "a\\b")
    rsp = ul.decode_command(raw)
    assert ul.us(rsp, ul.STATUS) == 0xA700
    assert ul.us(rsp, ul.MESSAGE_ID_RESPONDED) == 7
    assert rsp[ul.ERROR_COMMENT].strip() == b"a/b"  # backslash is a delimiter in LO
    assert int.from_bytes(rsp[0x0000], "little") == len(raw) - 12  # group length


def test_malformed_command_set_is_a_protocol_error():
    good = ul.store_rq(1, "1.2", "1.3")
    with pytest.raises(ul.ProtocolError):
        ul.decode_command(good[:-3])
    with pytest.raises(ul.ProtocolError):
        ul.us({}, ul.COMMAND_FIELD)


def test_file_meta_makes_a_file_pydicom_reads(tmp_path):
    src = ct_series(tmp_path / "s", 1, rows=16, cols=16)[0]
    raw = src.read_bytes()
    start = dataset_offset(io.BytesIO(raw))
    ds = dcmread(src)
    meta = ul.file_meta(
        ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID, "1.2.3", "GW_1", "SCU"
    )
    out = tmp_path / "out.dcm"
    out.write_bytes(meta + raw[start:])
    again = dcmread(out)
    assert again.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert again.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert again.file_meta.SourceApplicationEntityTitle == "SCU"
    assert again.PixelData == ds.PixelData
    assert dataset_offset(io.BytesIO(out.read_bytes())) == len(meta)
    with pytest.raises(NotPart10):
        dataset_offset(io.BytesIO(raw[start:]))


def test_pynetdicom_as_sender_with_role_selection(tmp_path, gateway_factory):
    """A second, independent DICOM implementation negotiates with the gateway: contexts,
    an SCP/SCU role selection item, C-ECHO and C-STORE, then an orderly release."""
    gw = gateway_factory(ARCHIVE, TO_ARCHIVE).start()
    files = ct_series(tmp_path / "s", 3, rows=32, cols=32)
    ae = AE(ae_title="GWTEST")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate(
        "127.0.0.1",
        gw.port,
        ae_title="GATEWAY",
        ext_neg=[build_role(CTImageStorage, scu_role=True)],
    )
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    for f in files:
        assert assoc.send_c_store(dcmread(f)).Status == 0
    assoc.release()
    assert not assoc.is_established
    archive = gw.data_dir / "archive"
    wait_for(lambda: len(list(archive.rglob("*.dcm"))) == 3, 30, "three archived files")
    for f in files:
        ds = dcmread(f)
        kept = archive / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert dcmread(kept).PixelData == ds.PixelData
    assert gw.stop() == 0
