#!/usr/bin/env python3
"""De-identification benchmark: gateway.deidentify against the `deid` package, one table.

    python bench/deid.py                      # 200 CT slices ours, 20 for deid
    python bench/deid.py --count 500 --deid-count 50 --repeat 5

Both de-identify the same synthetic CT slices (tests.synth.ct_series, 512x512 16-bit, with
a realistic identifying header added) to the PS3.15 Basic Profile: ours with its table, deid
with a recipe written here from the same Table E.1-1 rows (REMOVE / BLANK / REPLACE with a
dummy / REPLACE with a stable UID, private tags removed). Each instance is read from its
file, de-identified and written to memory, one process pinned to one core. deid caches every
dataset it parsed in a module-level functools.cache (PITFALLS.md); it is cleared after each
instance, outside the timed part, so that neither memory nor lookups grow with the run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This file's folder comes first on sys.path, and this file is named deid: it would shadow
# the deid package. The repository root goes there instead (for gateway and tests).
sys.path[0] = str(ROOT)
os.environ.setdefault("MESSAGELEVEL", "CRITICAL")  # deid's logger, read at import

from pydicom import dcmread  # noqa: E402
from pydicom.datadict import dictionary_VR, keyword_for_tag  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from gateway.deidentify import TABLE, Deidentifier, DeidSettings  # noqa: E402
from tests.synth import ct_series  # noqa: E402

TARGET = 200.0  # instances/s, full Basic Profile, one core
SECRET = b"benchmark secret, 32 bytes long."
DEID_DUMMY = {"DA": "19000101", "TM": "000000", "DT": "19000101000000"}


def identifying_header(ds: Dataset, i: int) -> None:
    """What a real CT carries that the profile must act on: ~40 attributes and a private block."""
    ds.AccessionNumber = "ACC20260101"
    ds.InstitutionName = "General Hospital Springfield"
    ds.InstitutionAddress = "1 Main Street, Springfield"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.PerformingPhysicianName = "Wilson^James"
    ds.OperatorsName = "Tech^Tina"
    ds.StationName = "CT01"
    ds.StudyDescription = "CT abdomen with contrast"
    ds.SeriesDescription = "Axial 5mm"
    ds.ProtocolName = "ABD ROUTINE"
    ds.StudyID = "S12345"
    ds.StudyTime = "101010"
    ds.SeriesDate, ds.SeriesTime = "20260101", "101500"
    ds.AcquisitionDate, ds.AcquisitionTime = "20260101", "101600"
    ds.ContentDate, ds.ContentTime = "20260101", f"1017{i % 60:02d}"
    ds.InstanceCreationDate, ds.InstanceCreationTime = "20260101", "101800"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.PatientAge = "056Y"
    ds.PatientWeight = "70"
    ds.PatientAddress = "2 Elm Street, Springfield"
    ds.OtherPatientIDs = "MRN-998877"
    ds.EthnicGroup = "unknown"
    ds.DeviceSerialNumber = "SN-4711"
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "Scanner 64"
    ds.SoftwareVersions = "1.0"
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[ds.StudyInstanceUID])
    ds.ImageComments = "no comments"
    ds.RequestingPhysician = "Cuddy^Lisa"
    ds.RequestedProcedureDescription = "CT ABD"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedProcedureStepStartDate = "20260101"
    ds.PerformedProcedureStepDescription = "CT ABD"
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = generate_uid(entropy_srcs=[ds.SOPInstanceUID])
    ds.ReferencedImageSequence = Sequence([ref])
    ds.SourceImageSequence = Sequence([Dataset(ref)])
    block = ds.private_block(0x0009, "ACME PRIVATE", create=True)
    for e in range(1, 21):
        block.add_new(e, "LO", f"private value {e}")


def make_series(folder: Path, count: int) -> list[Path]:
    paths = ct_series(folder, count)
    for i, path in enumerate(paths):
        ds = dcmread(path)
        identifying_header(ds, i)
        ds.save_as(path, enforce_file_format=True)
    return paths


def deid_recipe(path: Path) -> int:
    """A deid recipe of the Basic Profile's actions on Table E.1-1's standard attributes."""
    lines = ["FORMAT dicom", "", "%header", ""]
    for row in TABLE:
        if not row.tag[1:5].isalnum() or "X" in row.tag[1:10] or row.tag.startswith("(G"):
            continue  # repeating groups (no curves or overlays here); private: remove_private
        tag = int(row.tag[1:5] + row.tag[6:10], 16)
        keyword = keyword_for_tag(tag)
        if not keyword or tag >> 16 in (0x0000, 0x0002):
            continue
        vr = dictionary_VR(tag)
        basic = row.basic
        if basic in ("U", "X/Z/U*"):
            if vr == "UI":
                lines.append(f"REPLACE {keyword} deid_func:pydicom_uuid")
        elif basic == "X":
            lines.append(f"REMOVE {keyword}")
        elif basic in ("Z", "X/Z"):
            lines.append(f"BLANK {keyword}")
        elif vr != "SQ":  # D, X/D, Z/D, X/Z/D: a dummy of the VR's form
            lines.append(f"REPLACE {keyword} {DEID_DUMMY.get(vr, 'ANONYMIZED')}")
    path.write_text("\n".join(lines) + "\n")
    return len(lines) - 4


def timed(paths: list[Path], run: Callable[[Path], Dataset], after: Callable[[], None]) -> float:
    """Seconds spent in read + de-identify + write, over all paths."""
    spent = 0.0
    for path in paths:
        start = time.perf_counter()
        ds = run(path)
        ds.save_as(io.BytesIO())
        spent += time.perf_counter() - start
        after()
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="slices for ours (200)")
    parser.add_argument("--deid-count", type=int, default=20, help="slices for deid (20)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row, fastest kept (3)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    from deid.config import DeidRecipe
    from deid.dicom import replace_identifiers
    from deid.dicom.fields import _get_fields_inner

    with tempfile.TemporaryDirectory(prefix="bench-deid-") as tmp:
        work = Path(tmp)
        paths = make_series(work / "ct", max(args.count, args.deid_count))
        ours_paths, deid_paths = paths[: args.count], paths[: args.deid_count]
        rows = deid_recipe(work / "basic.deid")
        recipe = DeidRecipe(str(work / "basic.deid"))
        ours = Deidentifier(DeidSettings(), SECRET)

        def gateway_run(path: Path) -> Dataset:
            ds = dcmread(path)
            ours.apply(ds)
            return ds

        def deid_run(path: Path) -> Dataset:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints on every UID it makes
                return replace_identifiers([str(path)], deid=recipe, remove_private=True)[0]

        def apply_only() -> float:
            datasets = [dcmread(p) for p in ours_paths]
            start = time.perf_counter()
            for ds in datasets:
                ours.apply(ds)
            return time.perf_counter() - start

        def best(measure: Callable[[], float]) -> float:
            return min(measure() for _ in range(args.repeat))

        seconds = {
            "read+write, nothing else": best(lambda: timed(ours_paths, dcmread, lambda: None)),
            "gateway apply only": best(apply_only),
            "gateway read+apply+write": best(lambda: timed(ours_paths, gateway_run, lambda: None)),
            "deid read+deid+write": best(
                lambda: timed(deid_paths, deid_run, _get_fields_inner.cache_clear)
            ),
        }

        # Both really de-identified: none of the header's identifying text is left
        for ds in (gateway_run(paths[0]), deid_run(paths[0])):
            buf = io.BytesIO()
            ds.save_as(buf)
            for needle in (b"Synthetic", b"Springfield", b"House", b"MRN-998877", b"private v"):
                assert needle not in buf.getvalue(), needle
        _get_fields_inner.cache_clear()

    rate = {
        name: (args.deid_count if name.startswith("deid") else args.count) / s
        for name, s in seconds.items()
    }
    print("De-identification, PS3.15 Basic Profile, synthetic CT 512x512 16-bit, one core")
    print(
        f"({args.count} slices, deid {args.deid_count}; best of {args.repeat}; "
        f"deid {_deid_version()} with a recipe of {rows} Table E.1-1 rows)"
    )
    print(f"{'':28}{'instances/s':>12}{'ms/instance':>13}")
    for name, r in rate.items():
        print(f"{name:28}{r:12.1f}{1000 / r:13.2f}")
    ratio = rate["gateway read+apply+write"] / rate["deid read+deid+write"]
    print(f"ratio gateway / deid, read + de-identify + write: {ratio:.1f}x")
    met = rate["gateway read+apply+write"] >= TARGET
    print(
        f"target >= {TARGET:.0f} instances/s on one core, full Basic Profile:"
        f" {'met' if met else 'NOT met'} ({rate['gateway read+apply+write']:.0f}/s with read"
        f" and write, {rate['gateway apply only']:.0f}/s de-identifying alone)"
    )


def _deid_version() -> str:
    from importlib.metadata import version

    return version("deid")


if __name__ == "__main__":
    main()
