#!/usr/bin/env python3
"""Codec cost per 512x512 16-bit frame, through gateway.transcode, one table.

    python bench/codecs.py               # 20 runs per codec, synthetic and corpus CT
    python bench/codecs.py --runs 30

Encode: transcode() of an Explicit VR Little Endian CT slice (JPEG baseline: an 8-bit copy) to the codec's syntax; decode:
transcode() of the result back to Explicit VR Little Endian. Both include pydicom's work
around the codec (reading the Image Pixel module, encapsulation), not file I/O. Median ms
of `--runs`; ratio: native pixel bytes / encoded frame bytes. See bench/README.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.transcode import SYNTAXES, TranscodeError, TranscodeSpec, transcode  # noqa: E402
from tests.peers import corpus_dir  # noqa: E402
from tests.synth import ct_series  # noqa: E402

CODECS = [  # (name, spec knobs): the encapsulated targets, lossless first
    ("rle", {}),
    ("jpeg-ls-lossless", {}),
    ("jpeg-lossless-sv1", {}),
    ("j2k-lossless", {}),
    ("htj2k-lossless", {}),
    ("jpeg-ls-near-lossless", {"near_lossless": 2}),
    ("j2k", {"ratio": 10}),
    ("jpeg-baseline", {"quality": 90}),
]
NATIVE = TranscodeSpec(SYNTAXES["explicit-le"])
CORPUS_CT = "pydicom-data/693_UNCR.dcm"  # CT 512x512, 14 of 16 bits, signed


def timed(fn, datasets: list[Dataset]) -> float:  # noqa: ANN001
    """Median ms of fn(ds) over fresh copies (copied before timing)."""
    times = []
    for ds in datasets:
        t0 = time.perf_counter()
        fn(ds)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def bench(source: Dataset, runs: int) -> tuple[list[tuple[str, ...]], list[str]]:
    """Table rows and notes for one source slice."""
    rows, notes = [], []
    for name, knobs in CODECS:
        slice_ = eight_bit(source) if name == "jpeg-baseline" else source
        label = f"{name} {knobs}" if knobs else name
        if slice_ is not source:
            label += " (8-bit copy)"
        spec = TranscodeSpec(SYNTAXES[name], **knobs)
        probe = copy.deepcopy(slice_)
        try:
            transcode(probe, spec)
        except TranscodeError as exc:
            rows.append((label, "-", "-", "-"))
            notes.append(f"{name}: {exc}")
            continue
        fresh = [copy.deepcopy(slice_) for _ in range(runs)]
        encode_ms = timed(lambda d, s=spec: transcode(d, s), fresh)
        encoded = [copy.deepcopy(probe) for _ in range(runs)]
        decode_ms = timed(lambda d: transcode(d, NATIVE), encoded)
        ratio = len(slice_.PixelData) / len(probe.PixelData)  # item headers: a few bytes
        rows.append((label, f"{encode_ms:.1f}", f"{decode_ms:.1f}", f"{ratio:.2f}"))
    return rows, notes


def eight_bit(ds: Dataset) -> Dataset:
    """The slice scaled to 8 bits unsigned, for JPEG baseline (which takes nothing else)."""
    out = copy.deepcopy(ds)
    arr = ds.pixel_array.astype(np.int32)
    arr = (arr - arr.min()) * 255 // max(1, int(arr.max() - arr.min()))
    out.BitsAllocated, out.BitsStored, out.HighBit, out.PixelRepresentation = 8, 8, 7, 0
    out.PixelData = arr.astype(np.uint8).tobytes()
    out["PixelData"].VR = "OB"
    return out


def print_table(title: str, rows: list[tuple[str, ...]], notes: list[str]) -> None:
    print(f"\n{title}")
    head = ("codec", "encode ms", "decode ms", "ratio")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    for row in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(row, widths, strict=True))))  # fmt: skip
    for note in notes:
        print(f"  note: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per codec and way")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # pydicom's notes on the corpus file are not results
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = dcmread(ct_series(Path(tmp), 1)[0])
    print_table(
        "tests.synth.ct_series slice: 512x512, 12 of 16 bits, uniform noise (worst case)",
        *bench(synthetic, args.runs),
    )
    path = corpus_dir() / CORPUS_CT
    if path.exists():
        ct = dcmread(path)
        assert np.asarray(ct.pixel_array).shape == (512, 512)
        print_table(f"corpus CT {CORPUS_CT}: 512x512, 14 of 16 bits signed", *bench(ct, args.runs))
    else:
        print(f"\n(no corpus at {corpus_dir()}: the real CT table is skipped)")


if __name__ == "__main__":
    main()
