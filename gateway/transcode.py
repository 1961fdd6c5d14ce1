"""Transfer syntax conversion: decode what the libraries can read, encode what a peer takes.

Called by the rule engine (a transcode action) and by the C-STORE destination when a peer
accepts none of an instance's own syntax. Codecs, all without GPL:

- decoding: pydicom's decoders (pylibjpeg-openjpeg, pylibjpeg-rle, pyjpegls), plus imagecodecs'
  libjpeg-turbo for the JPEG family, registered below as a pydicom decoding plugin (the usual
  plugin, pylibjpeg-libjpeg, is GPLv3);
- encoding: pydicom with pyjpegls (JPEG-LS) and pylibjpeg-openjpeg (JPEG 2000); pylibjpeg-rle
  called directly (pydicom's RLE profile stops at 16 bits; the corpus has 32-bit RLE);
  imagecodecs for what pydicom cannot encode: JPEG baseline and JPEG lossless SV1
  (libjpeg-turbo), HTJ2K (OpenJPH), JPEG 2000 lossless of images under 32 pixels a side
  (pylibjpeg-openjpeg always uses 6 wavelet levels and fails on them) and JPEG-LS where
  pyjpegls fails (its output buffer is too small for tiny or incompressible images).

What a transcode keeps true:
- the SOP Instance UID never changes (pydicom's compress()/decompress() make a new one unless
  told not to);
- lossy output sets Lossy Image Compression "01" and appends its ratio and method; an image
  that was lossy stays "01" whatever it is encoded to next;
- decoded colour stays in its colour space (YBR_FULL is not rounded through RGB), but pixel
  data at full resolution is never labelled YBR_FULL_422;
- Explicit VR Big Endian: pydicom writes OW/OF/OL/OD/OV values and pixel data in the byte
  order they were read in, so they are swapped here: pixel data by Bits Allocated (32-bit
  pixels as whole 32-bit values, which is how pydicom reads them back), the others by their
  VR. UN values of unknown structure cannot be swapped and are left as they are.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from itertools import chain

import imagecodecs
import numpy as np
from pydicom import dcmwrite
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.pixels import as_pixel_options, get_decoder, get_encoder, pack_bits
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.pixels.encoders.base import ENCODING_PROFILES
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pydicom.valuerep import VR
from rle.utils import encode_pixel_data as rle_encode

#: Friendly names for configuration and rules -> Transfer Syntax UID.
SYNTAXES: dict[str, str] = {
    "explicit-le": ExplicitVRLittleEndian,
    "implicit-le": ImplicitVRLittleEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "big-endian": ExplicitVRBigEndian,
    "rle": RLELossless,
    "jpeg-ls-lossless": JPEGLSLossless,
    "jpeg-ls-near-lossless": JPEGLSNearLossless,
    "j2k-lossless": JPEG2000Lossless,
    "j2k": JPEG2000,
    "htj2k-lossless": HTJ2KLossless,
    "jpeg-baseline": JPEGBaseline8Bit,
    "jpeg-lossless-sv1": JPEGLosslessSV1,
}
ENCODABLE: frozenset[str] = frozenset(SYNTAXES.values())
NATIVE: frozenset[str] = frozenset(
    (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
    )
)
#: Lossy targets -> Lossy Image Compression Method (PS3.3 C.7.6.1.1.5.1).
LOSSY_METHODS: dict[str, str] = {
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEG2000: "ISO_15444_1",
    JPEGLSNearLossless: "ISO_14495_1",
}
#: Sources that are lossy whatever their header says (the others may be lossless).
_ALWAYS_LOSSY = {JPEGBaseline8Bit: "ISO_10918_1", JPEGExtended12Bit: "ISO_10918_1"}

DEFAULT_QUALITY = 90  # JPEG baseline, libjpeg quality 1..100
DEFAULT_RATIO = 10.0  # JPEG 2000 lossy, compression ratio
DEFAULT_NEAR = 2  # JPEG-LS near-lossless, largest error per sample

_NAMES = {uid: name for name, uid in SYNTAXES.items()}
_KNOBS = {"quality": JPEGBaseline8Bit, "ratio": JPEG2000, "near_lossless": JPEGLSNearLossless}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_OPENJPEG_MIN_SIDE = 32  # 6 decomposition levels; pylibjpeg-openjpeg does not lower them
_OPENJPEG_MAX_BITS = 24


class TranscodeError(Exception):
    """The instance cannot be brought to the target syntax; the message says why."""


@dataclass(frozen=True)
class TranscodeSpec:
    """A target syntax and its lossy knob, if any (None: the codec's default here)."""

    syntax: str  # Transfer Syntax UID
    quality: int | None = None  # jpeg-baseline: 1..100
    ratio: float | None = None  # j2k: compression ratio, > 1
    near_lossless: int | None = None  # jpeg-ls-near-lossless: NEAR, 1..255


def parse_spec(raw: object) -> TranscodeSpec:
    """A spec from YAML: a syntax name or UID, or {syntax: ..., quality/ratio/near_lossless}.

        j2k-lossless                                # a name from SYNTAXES
        1.2.840.10008.1.2.4.80                      # or a UID in ENCODABLE
        {syntax: jpeg-baseline, quality: 85}        # libjpeg quality, 1..100 (default 90)
        {syntax: j2k, ratio: 15}                    # compression ratio > 1 (default 10)
        {syntax: jpeg-ls-near-lossless, near_lossless: 3}  # error per sample (default 2)

    ValueError("key: reason") names the offending key, so config errors point at the line.
    """
    if isinstance(raw, str):
        return TranscodeSpec(_syntax(raw))
    if not isinstance(raw, Mapping):
        raise ValueError(f"expected a syntax name or a mapping, got {type(raw).__name__}")
    allowed = ("syntax", *_KNOBS)
    for key in raw:
        if key not in allowed:
            raise ValueError(f"{key}: unknown key (expected one of {', '.join(allowed)})")
    if raw.get("syntax") is None:
        raise ValueError("syntax: required")
    try:
        syntax = _syntax(raw["syntax"])
    except ValueError as exc:
        raise ValueError(f"syntax: {exc}") from None
    knobs: dict[str, int | float] = {}
    for key, uid in _KNOBS.items():
        value = raw.get(key)
        if value is None:
            continue
        if syntax != uid:
            raise ValueError(f"{key}: applies to {_NAMES[uid]} only, not {_NAMES[syntax]}")
        knobs[key] = _knob(key, value)
    return TranscodeSpec(syntax, **knobs)  # type: ignore[arg-type]


def _syntax(value: object) -> str:
    if isinstance(value, str):
        name = value.strip()
        if name.lower() in SYNTAXES:
            return SYNTAXES[name.lower()]
        if name in ENCODABLE:
            return name
    raise ValueError(f"unknown transfer syntax {value!r}; one of {', '.join(SYNTAXES)}")


def _knob(key: str, value: object) -> int | float:
    if key == "ratio":
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 1:
            raise ValueError("ratio: must be a number greater than 1")
        return float(value)
    low, high = (1, 100) if key == "quality" else (1, 255)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key}: must be an integer from {low} to {high}")
    return value


def can_decode(ts_uid: str) -> bool:
    """Whether pixel data in this syntax can be decoded here (native syntaxes always)."""
    if ts_uid in NATIVE:
        return True
    try:
        return get_decoder(ts_uid).is_available
    except NotImplementedError:  # a syntax pydicom has no decoder for
        return False


def transcode(ds: Dataset, spec: TranscodeSpec) -> None:
    """Re-encode `ds` in place to spec.syntax and update its file meta; TranscodeError if it
    cannot be (undecodable source, a codec that cannot hold these pixels). A no-op when the
    dataset is already in the target syntax."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise TranscodeError("the dataset has no Transfer Syntax UID in its file meta")
    source, target = UID(str(meta.TransferSyntaxUID)), UID(spec.syntax)
    if target not in ENCODABLE:
        raise TranscodeError(f"cannot encode to {target} ({target.name})")
    if source == target:
        return
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword != "PixelData" or (source in NATIVE and target in NATIVE):
        if target not in NATIVE:
            what = f"{keyword} (floating point)" if keyword else "no Pixel Data"
            raise TranscodeError(f"{what}: nothing to compress to {target.name}")
        if source not in NATIVE and keyword:
            raise TranscodeError(f"{source.name} with {keyword} is not supported")
        _reencode_native(ds, source, target)
        return
    if not can_decode(source):
        raise TranscodeError(f"no decoder here for {source.name} ({source})")
    attrs = _Attrs.of(ds)
    reason = _refusal(target, attrs)
    if reason:
        raise TranscodeError(f"cannot encode to {target.name}: {reason}")
    earlier = _unrecorded_lossy(ds, source, attrs)  # while the source's size is known
    decoded = _decoded_frames(ds, source, attrs)
    first, photometric = next(decoded, (None, ""))
    if first is None:
        raise TranscodeError(f"no frames in the {source.name} pixel data")
    if photometric != attrs.photometric:  # pydicom read the codestream's colour markers
        attrs = replace(attrs, photometric=photometric)
        reason = _refusal(target, attrs)
        if reason:
            raise TranscodeError(f"cannot encode to {target.name}: {reason}")
    frames = chain([first], (frame for frame, _ in decoded))
    ratio = 0.0
    if target in NATIVE:
        _set_native(ds, frames, attrs, target)
    else:
        ratio = _set_encapsulated(ds, frames, attrs, target, spec)
    # Nothing changed in ds before this point: a TranscodeError leaves it as it was.
    _swap_words(ds, source.is_little_endian, target.is_little_endian, top_pixels=False)
    if earlier:
        _append_lossy(ds, *earlier)
    if target in LOSSY_METHODS:
        _append_lossy(ds, ratio, LOSSY_METHODS[target])
    meta.TransferSyntaxUID = target


def part10_bytes(ds: Dataset) -> bytes:
    """ds as a DICOM file encoded in its file meta's Transfer Syntax. FileDataset.save_as()
    refuses to change the byte order of a dataset read from a file; dcmwrite() does not.
    TranscodeError when an element cannot be encoded (a bad value read from the source)."""
    buf = io.BytesIO()
    try:
        dcmwrite(buf, ds, enforce_file_format=True)
    except Exception as exc:  # pydicom raises many types, each about the data
        ts = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
        raise TranscodeError(f"cannot be written in {ts.name}: {_first_line(exc)}") from exc
    return buf.getvalue()


# -- what the pixels are ----------------------------------------------------------------
@dataclass(frozen=True)
class _Attrs:
    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str  # as decoded: YBR_FULL_422/RCT/ICT already resolved

    @classmethod
    def of(cls, ds: Dataset) -> _Attrs:
        try:
            photometric = str(ds.PhotometricInterpretation).strip()
            return cls(
                int(ds.Rows),
                int(ds.Columns),
                int(ds.get("NumberOfFrames") or 1),
                int(ds.SamplesPerPixel),
                int(ds.BitsAllocated),
                int(ds.BitsStored),
                int(ds.get("PixelRepresentation", 0)) == 1,
                _DECODED_AS.get(photometric, photometric),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise TranscodeError(f"the Image Pixel module is incomplete: {exc}") from exc

    @property
    def dtype(self) -> np.dtype:
        if self.bits_allocated == 1:
            return np.dtype("u1")
        return np.dtype(f"<{'i' if self.signed else 'u'}{self.bits_allocated // 8}")

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.samples * self.bits_allocated // 8


# JPEG 2000 decoders undo the colour transform; decoded YBR_FULL_422 is full resolution.
_DECODED_AS = {"YBR_RCT": "RGB", "YBR_ICT": "RGB", "YBR_FULL_422": "YBR_FULL"}


def _encoded_photometric(target: str, photometric: str) -> str:
    """Photometric Interpretation of the output: the colour transform each codec applies."""
    if target == JPEGBaseline8Bit and photometric in ("RGB", "YBR_FULL"):
        return "YBR_FULL_422"  # libjpeg converts to YCbCr and halves chroma horizontally
    if photometric == "RGB" and target in (JPEG2000Lossless, HTJ2KLossless):
        return "YBR_RCT"
    if photometric == "RGB" and target == JPEG2000:
        return "YBR_ICT"
    return photometric


def _refusal(target: str, a: _Attrs) -> str:
    """Why these pixels cannot go to `target`, or '' when they can."""
    if target in NATIVE:
        return ""
    if a.bits_allocated == 1:
        return "Bits Allocated 1 (bit-packed) pixel data is sent in native syntaxes only"
    if a.samples not in (1, 3):
        return f"Samples per Pixel {a.samples}"
    if a.signed and (a.samples != 1 or a.photometric == "PALETTE COLOR"):
        return "signed colour or palette pixel data"
    if target == RLELossless:
        if a.bits_allocated not in (8, 16, 32):
            return f"RLE takes Bits Allocated 8, 16 or 32, not {a.bits_allocated}"
        return ""
    if target == JPEGBaseline8Bit and (a.bits_allocated, a.bits_stored, a.signed) != (8, 8, 0):
        return (
            f"JPEG baseline takes 8-bit unsigned samples only; these are {a.bits_stored}-bit "
            f"{'signed' if a.signed else 'unsigned'} in {a.bits_allocated} (use j2k, "
            "jpeg-ls-near-lossless or a lossless syntax)"
        )
    if target in (JPEG2000Lossless, JPEG2000, HTJ2KLossless):
        limit = 16 if target == HTJ2KLossless else _OPENJPEG_MAX_BITS
        if a.bits_stored > limit:
            return f"Bits Stored {a.bits_stored}: at most {limit} here"
        if target == JPEG2000 and min(a.rows, a.columns) < _OPENJPEG_MIN_SIDE:
            return f"{a.rows}x{a.columns} is under {_OPENJPEG_MIN_SIDE} pixels a side"
    if target in (JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless) and a.bits_stored < 2:
        return "Bits Stored 1: these codecs need at least 2 bits"
    profile = ENCODING_PROFILES.get(UID(JPEG2000Lossless if target == HTJ2KLossless else target))
    photometric = _encoded_photometric(target, a.photometric)
    for pi, spp, signs, allocated, stored in profile or []:
        if (
            pi == photometric
            and spp == a.samples
            and int(a.signed) in signs
            and a.bits_allocated in allocated
            and a.bits_stored in stored
        ):
            return ""
    return (
        f"{photometric} with {a.samples} sample(s), {a.bits_stored} of {a.bits_allocated} "
        f"bits, {'signed' if a.signed else 'unsigned'} is not allowed (PS3.5 section 8.2)"
    )


# -- decoding --------------------------------------------------------------------------
def _decoded_frames(ds: Dataset, source: UID, a: _Attrs) -> Iterator[tuple[np.ndarray, str]]:
    """(frame, its Photometric Interpretation) for each frame: the array in the dataset's own
    container (Bits Allocated, sign), its colour space kept as stored (as_rgb=False). Lazy:
    ds must not change until all are consumed."""
    # libjpeg-turbo through imagecodecs for the JPEG family even when Pillow is installed:
    # one decoder, the one tested, for 8, 12 and 16 bits and lossless
    plugin = "imagecodecs" if source in _JPEG_SYNTAXES else ""
    try:
        for arr, info in get_decoder(source).iter_array(ds, as_rgb=False, decoding_plugin=plugin):
            # codecs want C order; RLE and planar native data decode to transposed views
            arr = np.ascontiguousarray(arr if a.bits_allocated == 1 else arr.astype(a.dtype))
            photometric = str(info["photometric_interpretation"])
            yield arr, _DECODED_AS.get(photometric, photometric)
    except Exception as exc:  # each codec raises its own types; all mean "cannot decode"
        raise TranscodeError(f"cannot decode {source.name}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# -- native output ---------------------------------------------------------------------
def _set_native(ds: Dataset, frames: Iterator[np.ndarray], a: _Attrs, target: UID) -> None:
    if a.bits_allocated == 1:
        data = pack_bits(np.concatenate([f.ravel() for f in frames]))
    else:
        dtype = a.dtype if target.is_little_endian else a.dtype.newbyteorder(">")
        data = b"".join(f.astype(dtype, copy=False).tobytes() for f in frames)
    _drop_offset_tables(ds)
    elem = ds["PixelData"]
    elem.value = data + b"\0" * (len(data) % 2)
    elem.VR = VR.OB if a.bits_allocated <= 8 else VR.OW
    elem.is_undefined_length = False
    _set_image_pixel(ds, a.photometric, a.samples, 0)


def _reencode_native(ds: Dataset, source: UID, target: UID) -> None:
    """No pixel decoding: only the byte order may change (the encoding of the rest of the
    dataset follows the Transfer Syntax UID when it is written)."""
    from_little = source.is_little_endian if source in NATIVE else True  # PS3.5 A.4
    _swap_words(ds, from_little, target.is_little_endian, top_pixels=True)
    ds.file_meta.TransferSyntaxUID = target


def _swap_words(ds: Dataset, from_little: bool, to_little: bool, *, top_pixels: bool) -> None:
    """Values whose byte order pydicom does not convert, in ds and its sequences: native
    pixel data by Bits Allocated (the top-level one only if `top_pixels`), OW/OF/OL/OD/OV
    values by their VR."""
    if from_little == to_little:
        return
    for owner, elem in _elements(ds):
        if not isinstance(elem.value, bytes):
            continue
        if elem.tag == 0x7FE00010:
            if owner is not ds or top_pixels:
                _swap_pixel_data(owner, elem, from_little)
            continue
        width = _SWAP_WIDTH.get(str(elem.VR)) or (2 if "OW" in str(elem.VR) else 0)
        if width:
            elem.value = _swapped(elem.value, width)


def _swap_pixel_data(owner: Dataset, elem: DataElement, from_little: bool) -> None:
    allocated = int(owner.get("BitsAllocated", 8))
    # 8-bit pixel data read from Big Endian as OW was swapped in 16-bit words
    width = 2 if (not from_little and elem.VR == VR.OW and allocated <= 8) else allocated // 8
    if width > 1:
        elem.value = _swapped(elem.value, width)
    if allocated <= 8:
        elem.VR = VR.OB


def _elements(ds: Dataset) -> Iterator[tuple[Dataset, DataElement]]:
    """(owning dataset, element) for every element of ds and its sequence items."""
    for elem in ds:
        yield ds, elem
        if elem.VR == VR.SQ:
            for item in elem.value:
                yield from _elements(item)


def _swapped(data: bytes, width: int) -> bytes:
    usable = len(data) - len(data) % width
    body = np.frombuffer(data[:usable], dtype=f"u{width}").byteswap().tobytes()
    return body + data[usable:]


def _drop_offset_tables(ds: Dataset) -> None:
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        ds.pop(keyword, None)


# -- encapsulated output -----------------------------------------------------------------
def _set_encapsulated(
    ds: Dataset, frames: Iterator[np.ndarray], a: _Attrs, target: UID, spec: TranscodeSpec
) -> float:
    """Encode and encapsulate the frames; the compression ratio achieved."""
    photometric = _encoded_photometric(target, a.photometric)
    encode = _frame_encoder(ds, target, a, photometric, spec)
    try:
        encoded = [encode(frame) for frame in frames]
    except TranscodeError:
        raise
    except Exception as exc:  # the codec's own error types
        raise TranscodeError(f"{target.name} encoder failed: {_first_line(exc)}") from exc
    # Only now: the frames were decoded from ds's Image Pixel attributes as they were.
    _set_image_pixel(ds, photometric, a.samples, 1 if target == RLELossless else 0)
    _drop_offset_tables(ds)
    if sum(len(f) + 8 for f in encoded) < 2**32 - 1:
        ds.PixelData = encapsulate(encoded)
    else:  # too long for the 32-bit Basic Offset Table
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
            encoded
        )
    elem = ds["PixelData"]
    elem.VR = VR.OB
    elem.is_undefined_length = True
    return a.frame_bytes * len(encoded) / max(1, sum(len(f) for f in encoded))


def _set_image_pixel(ds: Dataset, photometric: str, samples: int, planar: int) -> None:
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = planar  # PS3.5 G.2: RLE is by plane; the JPEGs by pixel
    else:
        ds.pop("PlanarConfiguration", None)


def _frame_encoder(
    ds: Dataset, target: UID, a: _Attrs, photometric: str, spec: TranscodeSpec
) -> Callable[[np.ndarray], bytes]:
    """A function from one decoded frame to its codestream."""
    if target == RLELossless:
        return lambda f: rle_encode(
            f.tobytes(),
            rows=a.rows,
            columns=a.columns,
            samples_per_pixel=a.samples,
            bits_allocated=a.bits_allocated,
            byteorder="<",
        )
    if target == JPEGBaseline8Bit:
        colour = a.samples == 3
        space = {"RGB": "RGB", "YBR_FULL": "YCbCr"}.get(a.photometric, "GRAYSCALE")
        return lambda f: imagecodecs.jpeg8_encode(
            f,
            level=spec.quality or DEFAULT_QUALITY,
            colorspace=space,
            outcolorspace="YCbCr" if colour else space,
            subsampling="422" if colour else None,
        )
    if target == JPEGLosslessSV1:
        # The same colour space in and out: no transform. YBR_FULL goes as UNKNOWN (component
        # IDs 0, 1, 2, no JFIF marker): libjpeg-turbo's lossless mode alters chroma samples
        # when told YCbCr, and an RGB label would make decoders skip YBR -> RGB.
        space = {"RGB": "RGB", "YBR_FULL": "UNKNOWN"}.get(a.photometric, "GRAYSCALE")
        return lambda f: imagecodecs.jpeg8_encode(
            _bit_pattern(f, a.bits_stored),
            lossless=True,
            predictor=1,
            bitspersample=a.bits_stored,
            colorspace=space,
            outcolorspace=space,
        )
    mct = photometric in ("YBR_RCT", "YBR_ICT")
    if target == HTJ2KLossless:
        return lambda f: imagecodecs.htj2k_encode(f, reversible=True, rgb=mct)
    if target == JPEG2000Lossless and min(a.rows, a.columns) < _OPENJPEG_MIN_SIDE:
        return lambda f: imagecodecs.jpeg2k_encode(
            f, codecformat="J2K", reversible=True, bitspersample=a.bits_stored, mct=mct
        )
    # JPEG-LS (pyjpegls) and JPEG 2000 (pylibjpeg-openjpeg) through pydicom's encoders,
    # which also check the image against PS3.5's table for the syntax.
    opts = as_pixel_options(ds)
    opts.update(photometric_interpretation=photometric, number_of_frames=1)
    if a.samples > 1:
        opts["planar_configuration"] = 0  # decoded frames are colour-by-pixel
    if target == JPEGLSNearLossless:
        opts["jls_error"] = spec.near_lossless or DEFAULT_NEAR
    elif target == JPEG2000:
        opts["j2k_cr"] = [spec.ratio or DEFAULT_RATIO]
    if target in (JPEG2000Lossless, JPEG2000):
        opts["use_mct"] = mct  # pydicom leaves MCT on for any input but RGB
    encoder = get_encoder(target)
    if target in (JPEG2000Lossless, JPEG2000):
        return lambda f: encoder.encode(f, encoding_plugin="pylibjpeg", **opts)

    def jpeg_ls(frame: np.ndarray) -> bytes:
        try:
            return encoder.encode(frame, encoding_plugin="pyjpegls", **opts)
        except RuntimeError:
            # pyjpegls sizes its output buffer from the input and fails when the codestream
            # is larger (images of a few pixels, noise); imagecodecs' CharLS does not. It
            # writes 16-bit precision for 16-bit containers: the whole two's complement.
            unsigned = frame.view(frame.dtype.str.replace("i", "u"))
            return imagecodecs.jpegls_encode(unsigned, level=opts.get("jls_error"))

    return jpeg_ls


def _bit_pattern(frame: np.ndarray, bits: int) -> np.ndarray:
    """Samples as the unsigned `bits`-bit patterns a JPEG codec stores (two's complement for
    signed data; pydicom sign-extends them again on decoding)."""
    unsigned = frame.view(frame.dtype.str.replace("i", "u"))
    return unsigned & np.array((1 << bits) - 1, dtype=unsigned.dtype)


# -- lossy history ---------------------------------------------------------------------
def _unrecorded_lossy(ds: Dataset, source: UID, a: _Attrs) -> tuple[float, str] | None:
    """(ratio, method) of a lossy source that its header does not record (JPEG baseline
    without Lossy Image Compression "01"); "01" itself is never removed here."""
    if str(ds.get("LossyImageCompression", "")).strip() == "01" or source not in _ALWAYS_LOSSY:
        return None
    return a.frame_bytes * a.frames / max(1, len(ds.PixelData)), _ALWAYS_LOSSY[source]


def _append_lossy(ds: Dataset, ratio: float, method: str) -> None:
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [*_values(ds, "LossyImageCompressionRatio"), f"{ratio:.2f}"]
    ds.LossyImageCompressionMethod = [*_values(ds, "LossyImageCompressionMethod"), method]


def _values(ds: Dataset, keyword: str) -> list:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return [value] if isinstance(value, str | float | int) else list(value)


# -- JPEG decoding through imagecodecs, as a pydicom decoding plugin -----------------------
# The contract (pydicom "decoder plugins"): is_available(uid), DECODER_DEPENDENCIES and a
# function returning one frame's samples without colour conversion; pydicom then handles
# YBR -> RGB (as_rgb), unused high bits and the sign.
_JPEG_SYNTAXES = (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1)
DECODER_DEPENDENCIES = {uid: ("imagecodecs>=2026.3",) for uid in _JPEG_SYNTAXES}


def is_available(uid: str) -> bool:
    """pydicom plugin contract: whether this module decodes `uid`."""
    return uid in _JPEG_SYNTAXES and bool(imagecodecs.JPEG8.available)


def _decode_jpeg_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One JPEG frame's samples as stored: 3-component data is not colour-converted."""
    space = "YCbCr" if runner.samples_per_pixel == 3 else None  # in == out: no transform
    arr = imagecodecs.jpeg8_decode(src, colorspace=space, outcolorspace=space)
    if runner.samples_per_pixel == 3:
        runner.set_option("planar_configuration", 0)  # decoded colour-by-pixel
    return arr.astype("<u1" if runner.bits_allocated <= 8 else "<u2", copy=False).tobytes()


for _uid in _JPEG_SYNTAXES:
    if "imagecodecs" not in get_decoder(_uid).available_plugins:
        get_decoder(_uid).add_plugin("imagecodecs", (__name__, "_decode_jpeg_frame"))
