"""gateway.transcode on the real corpus: bit-exact lossless round trips to every lossless
target, lossy bookkeeping, colour and byte order, checked by reading the output back with
pydicom (and with dcmtk for Big Endian)."""

from __future__ import annotations

import csv
import functools
import io
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.uid import UID, JPEGBaseline8Bit

from gateway.transcode import (
    ENCODABLE,
    SYNTAXES,
    TranscodeError,
    TranscodeSpec,
    can_decode,
    parse_spec,
    part10_bytes,
    transcode,
)
from tests.peers import PEER_ENV, corpus_dir, dcmtk
from tests.synth import ct_series

NATIVE = ["explicit-le", "implicit-le", "deflated", "big-endian"]
LOSSLESS = [*NATIVE, "rle", "jpeg-ls-lossless", "j2k-lossless", "htj2k-lossless"]
LOSSLESS += ["jpeg-lossless-sv1"]
LOSSY = ["jpeg-baseline", "j2k", "jpeg-ls-near-lossless"]
#: Decoded bytes above which an image's round trips run only in the slow variant.
LARGE = 32 << 20
#: Corpus files pydicom decodes but cannot write back even unchanged (a bad VR).
UNWRITABLE = {"pydicom/test_files/SC_rgb_jpeg.dcm"}


def test_every_target_is_tested() -> None:
    assert sorted(LOSSLESS + LOSSY) == sorted(SYNTAXES)
    assert set(SYNTAXES.values()) == ENCODABLE


# -- the corpus --------------------------------------------------------------------------
@dataclass(frozen=True)
class Image:
    name: str
    path: Path
    syntax: str
    sop_uid: str
    photometric: str
    samples: int
    frames: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    raw: np.ndarray  # decoded, colour space as stored (as_rgb=False)

    @property
    def size(self) -> int:
        return self.raw.size * self.raw.itemsize


@functools.cache
def corpus_images() -> tuple[Image, ...]:
    """Every corpus image with pixel data that pydicom (with our JPEG plugin) decodes."""
    root = corpus_dir()
    out = []
    with open(root / "MANIFEST.tsv", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if not row["rows"] or row["status"].startswith("read-error"):
                continue
            ds = dcmread(root / row["name"])
            ts = ds.file_meta.get("TransferSyntaxUID")
            if "PixelData" not in ds or not ts or not can_decode(ts):
                continue
            try:
                raw = pixel_array(ds, as_rgb=False)
            except Exception:  # damaged files: the MANIFEST says decode-error
                assert "decode-error" in row["status"], row["name"]
                continue
            if row["name"] in UNWRITABLE:
                continue
            out.append(
                Image(
                    row["name"],
                    root / row["name"],
                    str(ts),
                    str(ds.SOPInstanceUID),
                    str(ds.PhotometricInterpretation),
                    int(ds.SamplesPerPixel),
                    int(ds.get("NumberOfFrames") or 1),
                    int(ds.BitsAllocated),
                    int(ds.BitsStored),
                    int(ds.PixelRepresentation) == 1,
                    raw,
                )
            )
    return tuple(out)


def test_corpus_covers_the_hard_cases() -> None:
    images = corpus_images()
    assert len(images) > 150
    assert any(i.frames > 1 for i in images)
    assert any(i.signed for i in images)
    assert any(i.bits_allocated == 16 and i.bits_stored == 12 for i in images)
    assert {"RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR"} <= {i.photometric for i in images}
    assert {8, 16, 32, 1} <= {i.bits_allocated for i in images}
    decodable = {str(dcmread(i.path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                 for i in images}  # fmt: skip
    assert set(SYNTAXES.values()) - decodable == {"1.2.840.10008.1.2.4.201"}  # no HTJ2K file
    # the files pydicom writes back wrong are known, not silently dropped
    for name in UNWRITABLE:
        with pytest.raises(TranscodeError, match="cannot be written"):
            part10_bytes(dcmread(corpus_dir() / name))


def must_refuse(image: Image, name: str) -> bool:
    """The limits of the lossless codecs, stated independently of the implementation."""
    if name in NATIVE:
        return False
    if image.bits_allocated == 1:
        return True  # bit-packed pixel data is not encapsulated here
    if name == "rle":
        return False  # 8, 16 and 32 bits
    if name == "j2k-lossless":
        return image.bits_stored > 24  # OpenJPEG's encoder limit
    return image.bits_stored > 16  # JPEG-LS, JPEG lossless, HTJ2K


def round_trip(image: Image, name: str) -> Dataset:
    """Transcode, write, read back."""
    ds = dcmread(image.path)
    transcode(ds, TranscodeSpec(SYNTAXES[name]))
    return dcmread(io.BytesIO(part10_bytes(ds)))


def check_lossless(image: Image, name: str) -> str:
    """'' when the round trip through `name` is right, else what is wrong."""
    try:
        out = round_trip(image, name)
    except TranscodeError as exc:
        return "" if must_refuse(image, name) else f"refused: {exc}"
    if must_refuse(image, name):
        return "expected a refusal"
    problems = []
    if out.file_meta.TransferSyntaxUID != SYNTAXES[name]:
        problems.append(f"syntax {out.file_meta.TransferSyntaxUID}")
    if out.SOPInstanceUID != image.sop_uid or out.file_meta.MediaStorageSOPInstanceUID != (
        image.sop_uid
    ):
        problems.append("SOP Instance UID changed")
    # Pixels that were decoded: full resolution, PS3.5's Planar Configuration for the syntax.
    # (Native to native is not decoded; the same syntax is not touched.)
    decoded = SYNTAXES[name] != image.syntax and not (
        name in NATIVE and image.syntax in [SYNTAXES[n] for n in NATIVE]
    )
    if decoded and out.PhotometricInterpretation == "YBR_FULL_422":
        problems.append("full-resolution pixels labelled YBR_FULL_422")
    planar = 1 if name == "rle" else 0  # PS3.5 G.2 (RLE: by plane), 8.2 (by pixel)
    if decoded and image.samples == 3 and out.PlanarConfiguration != planar:
        problems.append(f"Planar Configuration {out.PlanarConfiguration}")
    arr = pixel_array(out, as_rgb=False)
    if arr.shape != image.raw.shape or not np.array_equal(arr, image.raw):
        problems.append("pixels differ")
    elif (  # and what a viewer shows, as RGB
        image.samples == 3
        and image.size <= LARGE
        and not np.array_equal(pixel_array(out), pixel_array(dcmread(image.path)))
    ):
        problems.append("pixels differ after conversion to RGB (a colour label is wrong)")
    return "; ".join(problems)


def lossless_failures(name: str, large: bool) -> list[str]:
    images = [i for i in corpus_images() if (i.size > LARGE) == large]
    assert images
    return [f"{i.name}: {p}" for i in images if (p := check_lossless(i, name))]


@pytest.mark.parametrize("name", LOSSLESS)
def test_lossless_round_trip_is_bit_exact_on_every_corpus_image(name: str) -> None:
    assert lossless_failures(name, large=False) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", LOSSLESS)
def test_lossless_round_trip_large_corpus_images(name: str) -> None:
    assert lossless_failures(name, large=True) == []


def corpus(name: str) -> Image:
    return next(i for i in corpus_images() if i.name == name)


ENCAPSULATED_LOSSLESS = [n for n in LOSSLESS if n not in NATIVE]


@pytest.mark.parametrize("signed", [True, False])
def test_12_bit_samples_signed_or_with_bits_above_bits_stored(signed: bool) -> None:
    """The corpus has no signed 12-of-16-bit image, nor one with set bits above Bits
    Stored: signed values must keep their sign, and the unused bits must not reach a codec
    whose precision is 12 bits (pydicom ignores them on decoding, PS3.5 8.1.1)."""
    ds = ct_dataset()  # 12 of 16 bits
    rng = np.random.default_rng(7)
    if signed:
        ds.PixelRepresentation = 1
        ds.PixelData = rng.integers(-2048, 2048, (64, 64)).astype(np.int16).tobytes()
    else:
        noisy = rng.integers(0, 4096, (64, 64)).astype(np.uint16) | np.uint16(0xF000)
        ds.PixelData = noisy.tobytes()
    source = part10_bytes(ds)
    expected = pixel_array(dcmread(io.BytesIO(source)))
    assert expected.min() < 0 if signed else expected.max() < 4096
    for name in ENCAPSULATED_LOSSLESS + ["big-endian"]:
        ds = dcmread(io.BytesIO(source))
        transcode(ds, TranscodeSpec(SYNTAXES[name]))
        out = pixel_array(dcmread(io.BytesIO(part10_bytes(ds))))
        assert np.array_equal(out, expected), name


# -- lossy -------------------------------------------------------------------------------
LOSSY_CASES = [  # (image, target, knob): 8-bit grey, signed CT, 12-bit multi-frame, RGB
    ("pydicom-data/vlut_04.dcm", "jpeg-baseline", {"quality": 80}),
    ("pydicom/test_files/examples_rgb_color.dcm", "jpeg-baseline", {}),
    ("pydicom/test_files/CT_small.dcm", "j2k", {"ratio": 8}),
    ("pydicom-data/emri_small.dcm", "j2k", {}),
    ("pydicom/test_files/examples_rgb_color.dcm", "j2k", {"ratio": 20}),
    ("pydicom/test_files/CT_small.dcm", "jpeg-ls-near-lossless", {"near_lossless": 3}),
    ("pydicom-data/emri_small.dcm", "jpeg-ls-near-lossless", {}),
    ("pydicom/test_files/examples_rgb_color.dcm", "jpeg-ls-near-lossless", {"near_lossless": 1}),
]
METHOD = {"jpeg-baseline": "ISO_10918_1", "j2k": "ISO_15444_1"}
METHOD["jpeg-ls-near-lossless"] = "ISO_14495_1"


@pytest.mark.parametrize(("name", "target", "knob"), LOSSY_CASES)
def test_lossy_output_records_lossy_compression(name: str, target: str, knob: dict) -> None:
    image = corpus(name)
    ds = dcmread(image.path)
    transcode(ds, parse_spec({"syntax": target, **knob}))
    out = dcmread(io.BytesIO(part10_bytes(ds)))
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == METHOD[target]
    ratio = float(out.LossyImageCompressionRatio)
    assert ratio > 1.5
    raw_size = image.raw.size * image.raw.itemsize
    encoded = sum(len(f) for f in _frames(out))
    assert ratio == pytest.approx(raw_size / encoded, rel=0.02)
    assert out.SOPInstanceUID == image.sop_uid
    decoded = pixel_array(out).astype(np.float64)
    original = pixel_array(dcmread(image.path)).astype(np.float64)
    error = np.abs(decoded - original)
    if target == "jpeg-ls-near-lossless" and image.photometric != "RGB":
        assert error.max() <= knob.get("near_lossless", 2)  # NEAR bounds every sample
    peak = 2**image.bits_stored - 1
    psnr = 10 * np.log10(peak**2 / max(float((error**2).mean()), 1e-9))
    assert psnr > 30, psnr
    if target == "j2k":  # OpenJPEG's rate counts Bits Stored; the ratio, Bits Allocated
        wanted = knob.get("ratio", 10) * image.bits_allocated / image.bits_stored
        assert ratio == pytest.approx(wanted, rel=0.25)
        assert out.PhotometricInterpretation == (
            "YBR_ICT" if image.photometric == "RGB" else image.photometric
        )
    if target == "jpeg-baseline" and image.samples == 3:
        assert out.PhotometricInterpretation == "YBR_FULL_422"


def _frames(ds: Dataset) -> list[bytes]:
    from pydicom.encaps import generate_frames

    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))


def test_lossy_knobs_change_the_result() -> None:
    image = corpus("pydicom-data/vlut_04.dcm")
    sizes = {}
    for quality in (30, 95):
        ds = dcmread(image.path)
        transcode(ds, TranscodeSpec(SYNTAXES["jpeg-baseline"], quality=quality))
        sizes[quality] = len(ds.PixelData)
    assert sizes[30] < sizes[95] * 0.7


def test_lossy_ratio_and_method_are_appended_and_never_downgraded() -> None:
    # JPEG baseline with Lossy Image Compression "01", ratio 17.401, method ISO_10918_1
    image = corpus("pydicom/test_files/SC_rgb_jpeg_dcmtk.dcm")
    ds = dcmread(image.path)
    transcode(ds, TranscodeSpec(SYNTAXES["j2k"], ratio=12))
    assert ds.LossyImageCompression == "01"
    assert [float(r) for r in ds.LossyImageCompressionRatio][0] == pytest.approx(17.401)
    assert len(ds.LossyImageCompressionRatio) == 2
    assert list(ds.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_15444_1"]
    transcode(ds, TranscodeSpec(SYNTAXES["j2k-lossless"]))  # lossless now: still "01"
    out = dcmread(io.BytesIO(part10_bytes(ds)))
    assert out.LossyImageCompression == "01"
    assert len(out.LossyImageCompressionRatio) == 2


def test_an_unrecorded_lossy_source_is_recorded() -> None:
    # JPEG baseline whose header says Lossy Image Compression "01" with no ratio: kept as is;
    # one that says nothing about it gets "01", its ratio and method.
    ds = dcmread(corpus("pydicom/test_files/SC_rgb_dcmtk_+eb+cr.dcm").path)
    del ds.LossyImageCompression
    ds.pop("LossyImageCompressionRatio", None)
    ds.pop("LossyImageCompressionMethod", None)
    size = len(ds.PixelData)
    transcode(ds, TranscodeSpec(SYNTAXES["explicit-le"]))
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(ds.LossyImageCompressionRatio) == pytest.approx(100 * 100 * 3 / size, rel=0.01)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("pydicom/test_files/CT_small.dcm", "8-bit unsigned samples only"),  # 16-bit
        ("pydicom/test_files/examples_palette.dcm", "PALETTE COLOR"),
        ("pydicom/test_files/liver_1frame.dcm", "Bits Allocated 1"),
    ],
)
def test_jpeg_baseline_refuses_what_it_cannot_hold(name: str, why: str) -> None:
    ds = dcmread(corpus(name).path)
    before = (ds.file_meta.TransferSyntaxUID, ds.PixelData)
    with pytest.raises(TranscodeError, match=why):
        transcode(ds, TranscodeSpec(JPEGBaseline8Bit))
    assert (ds.file_meta.TransferSyntaxUID, ds.PixelData) == before  # left as it was


def test_jpeg_ls_near_lossless_refuses_signed_values_that_could_flip_sign() -> None:
    ds = ct_dataset()
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
    arr = np.full((64, 64), -(2**15), dtype=np.int16)  # the lowest value: -NEAR wraps
    ds.PixelData = arr.tobytes()
    with pytest.raises(TranscodeError, match="signed integers"):
        transcode(ds, TranscodeSpec(SYNTAXES["jpeg-ls-near-lossless"], near_lossless=2))


# -- colour ------------------------------------------------------------------------------
def test_ybr_full_422_from_jpeg_is_labelled_for_full_resolution() -> None:
    image = corpus("pydicom/test_files/examples_ybr_color.dcm")  # JPEG baseline, 30 frames
    assert image.photometric == "YBR_FULL_422" and image.frames == 30
    for name in ("explicit-le", "rle", "j2k-lossless"):
        out = round_trip(image, name)
        assert out.PhotometricInterpretation == "YBR_FULL", name
        assert np.array_equal(pixel_array(out), pixel_array(dcmread(image.path)))  # as RGB


@pytest.mark.parametrize("name", ["j2k-lossless", "htj2k-lossless"])
def test_rgb_to_jpeg_2000_lossless_uses_the_reversible_colour_transform(name: str) -> None:
    image = corpus("pydicom/test_files/examples_rgb_color.dcm")
    out = round_trip(image, name)
    assert out.PhotometricInterpretation == "YBR_RCT"
    cod = _frames(out)[0].index(b"\xff\x52")
    assert _frames(out)[0][cod + 8] == 1  # COD SGcod: multiple component transform used
    assert np.array_equal(pixel_array(out), image.raw)


def test_jpeg_lossless_sv1_is_process_14_selection_value_1() -> None:
    out = round_trip(corpus("pydicom/test_files/CT_small.dcm"), "jpeg-lossless-sv1")
    frame = _frames(out)[0]
    assert b"\xff\xc3" in frame  # SOF3: lossless, Huffman
    sos = frame.index(b"\xff\xda")
    length = int.from_bytes(frame[sos + 2 : sos + 4], "big")
    assert frame[sos + 2 + length - 3] == 1  # Ss: predictor (selection value) 1
    assert frame[sos + 2 + length - 1] == 0  # Al: point transform 0


def test_palette_images_keep_their_lookup_tables() -> None:
    for name in ("pydicom/test_files/examples_palette.dcm", "pydicom-data/gdcm-US-ALOKA-16.dcm"):
        original = dcmread(corpus(name).path)
        for target in ("rle", "jpeg-ls-lossless", "jpeg-lossless-sv1"):  # Big Endian: below
            out = round_trip(corpus(name), target)
            assert out.PhotometricInterpretation == "PALETTE COLOR"
            shown = apply_color_lut(pixel_array(out), out)
            assert np.array_equal(shown, apply_color_lut(original.pixel_array, original)), target


# -- big endian --------------------------------------------------------------------------
BIG_ENDIAN_CASES = [
    "pydicom/test_files/CT_small.dcm",  # 16-bit signed
    "pydicom-data/emri_small.dcm",  # 12 of 16 bits, 10 frames
    "pydicom/test_files/examples_overlay.dcm",  # overlay (OW) and an icon image
    "pydicom/test_files/examples_palette.dcm",  # LUT data (OW)
    "pydicom-data/SC_rgb_16bit_2frame.dcm",
    "pydicom/test_files/JPEG2000.dcm",  # compressed source
    "pydicom/test_files/liver_1frame.dcm",  # 1-bit
]


@pytest.mark.parametrize("name", BIG_ENDIAN_CASES)
def test_big_endian_output_reads_back_the_same_in_dcmtk(name: str, tmp_path: Path) -> None:
    """dcmtk converts our Big Endian file to Little Endian: the same pixels, overlays and
    icon as the source (pydicom alone would have written 16-bit data unswapped)."""
    image = corpus(name)
    be = tmp_path / "be.dcm"
    be.write_bytes(part10_bytes(_transcoded(image.path, "big-endian")))
    dump = subprocess.run([dcmtk("dcmdump"), "-q", str(be)], env=PEER_ENV, capture_output=True)
    assert dump.returncode == 0 and b"BigEndianExplicit" in dump.stdout, dump.stderr
    le = tmp_path / "le.dcm"
    conv = subprocess.run(
        [dcmtk("dcmconv"), "+te", str(be), str(le)], env=PEER_ENV, capture_output=True
    )
    assert conv.returncode == 0, conv.stderr
    back, original = dcmread(le), dcmread(image.path)
    assert np.array_equal(pixel_array(back, as_rgb=False), image.raw)
    assert word_values(back) == word_values(original)  # LUTs, overlays, icon pixels
    if "IconImageSequence" in original:
        icon, icon0 = back.IconImageSequence[0], original.IconImageSequence[0]
        size = icon0.Rows * icon0.Columns * icon0.SamplesPerPixel * icon0.BitsAllocated // 8
        assert icon.PixelData[:size] == icon0.PixelData[:size]  # both Little Endian again


def word_values(ds: Dataset) -> dict[str, bytes]:
    """Values pydicom keeps as raw bytes whose byte order depends on the syntax: OW/OF/OD/OL
    other than Pixel Data (icons are compared as pixels), by path, in sequences too."""
    out: dict[str, bytes] = {}

    def walk(node: Dataset, path: str) -> None:
        for elem in node:
            where = f"{path}{elem.tag}"
            if elem.VR == "SQ":
                for n, item in enumerate(elem.value):
                    walk(item, f"{where}[{n}].")
            elif elem.VR in ("OW", "OF", "OD", "OL") and elem.tag != 0x7FE00010:
                out[where] = bytes(elem.value)

    walk(ds, "")
    return out


def _transcoded(path: Path, name: str) -> Dataset:
    ds = dcmread(path)
    transcode(ds, TranscodeSpec(SYNTAXES[name]))
    return ds


def test_big_endian_32_bit_pixels_are_whole_32_bit_values() -> None:
    """pydicom reads 32-bit Big Endian pixel data as 32-bit values, as the corpus' own Big
    Endian RT Dose shows; dcmtk swaps OW in 16-bit words and disagrees (left as is)."""
    le, be = corpus("pydicom/test_files/rtdose.dcm"), corpus("pydicom/test_files/rtdose_expb.dcm")
    assert np.array_equal(le.raw, be.raw)
    ours = _transcoded(le.path, "big-endian")
    assert bytes(ours.PixelData) == bytes(dcmread(be.path).PixelData)


# -- the API -----------------------------------------------------------------------------
def test_parse_spec_accepts_names_uids_and_mappings() -> None:
    assert parse_spec("j2k-lossless") == TranscodeSpec("1.2.840.10008.1.2.4.90")
    assert parse_spec("JPEG-Baseline").syntax == JPEGBaseline8Bit
    assert parse_spec("1.2.840.10008.1.2.5") == TranscodeSpec("1.2.840.10008.1.2.5")
    assert parse_spec({"syntax": "jpeg-baseline", "quality": 75}).quality == 75
    assert parse_spec({"syntax": "j2k", "ratio": 15}).ratio == 15.0
    assert parse_spec({"syntax": "jpeg-ls-near-lossless", "near_lossless": 4}).near_lossless == 4
    assert parse_spec({"syntax": "j2k", "ratio": None}) == TranscodeSpec(SYNTAXES["j2k"])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("jpeg2000", "unknown transfer syntax 'jpeg2000'"),
        ("1.2.840.10008.1.2.4.100", "unknown transfer syntax"),  # MPEG-2: not encodable
        (42, "expected a syntax name or a mapping"),
        ({"quality": 80}, "syntax: required"),
        ({"syntax": "nope"}, "syntax: unknown transfer syntax"),
        ({"syntax": "j2k", "qualty": 80}, "qualty: unknown key"),
        ({"syntax": "j2k", "quality": 80}, "quality: applies to jpeg-baseline only"),
        ({"syntax": "jpeg-baseline", "quality": 0}, "quality: must be an integer from 1"),
        ({"syntax": "jpeg-baseline", "quality": 90.5}, "quality: must be an integer"),
        ({"syntax": "jpeg-baseline", "quality": True}, "quality: must be an integer"),
        ({"syntax": "j2k", "ratio": 1}, "ratio: must be a number greater than 1"),
        ({"syntax": "j2k", "ratio": "10"}, "ratio: must be a number"),
        ({"syntax": "rle", "near_lossless": 2}, "near_lossless: applies to"),
        ({"syntax": "jpeg-ls-near-lossless", "near_lossless": 0}, "near_lossless: must be"),
    ],
)
def test_parse_spec_names_the_bad_key(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_spec(raw)


def ct_dataset() -> Dataset:
    return dcmread(ct_series(Path(_tmp()), 1, rows=64, cols=64)[0])


@functools.cache
def _tmp() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="transcode-")


def test_same_syntax_is_a_no_op_and_uids_are_kept() -> None:
    ds = ct_dataset()
    before = part10_bytes(ds)
    transcode(ds, TranscodeSpec(SYNTAXES["explicit-le"], quality=None))
    assert part10_bytes(ds) == before
    uid = ds.SOPInstanceUID
    transcode(ds, TranscodeSpec(SYNTAXES["jpeg-ls-lossless"]))
    transcode(ds, TranscodeSpec(SYNTAXES["explicit-le"]))
    assert ds.SOPInstanceUID == uid == ds.file_meta.MediaStorageSOPInstanceUID


def test_datasets_without_pixels_change_encoding_only() -> None:
    ds = ct_dataset()
    del ds.PixelData
    transcode(ds, TranscodeSpec(SYNTAXES["big-endian"]))
    assert dcmread(io.BytesIO(part10_bytes(ds))).PatientID == "SYN0001"
    with pytest.raises(TranscodeError, match="no Pixel Data"):
        transcode(ds, TranscodeSpec(SYNTAXES["rle"]))


def test_an_undecodable_source_is_a_clear_error() -> None:
    from pydicom.encaps import encapsulate

    ds = dcmread(corpus("pydicom/test_files/SC_rgb_dcmtk_+eb+cr.dcm").path)
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(200)])  # SOI, then nothing valid
    with pytest.raises(TranscodeError, match="cannot decode JPEG Baseline"):
        transcode(ds, TranscodeSpec(SYNTAXES["explicit-le"]))
    assert not can_decode("1.2.840.10008.1.2.4.100")  # MPEG-2
    assert can_decode(SYNTAXES["big-endian"]) and can_decode(str(UID("1.2.840.10008.1.2.4.70")))
