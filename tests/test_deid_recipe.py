"""deid recipes: checked up front, applied in a child process that cannot hang, crash or
bloat the worker, with the UIDs a valid instance needs kept (gateway/deid_recipe.py)."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from gateway.deid_recipe import DEID_FUNCS, RecipeError, RecipeRunner, validate_recipe
from tests.peers import ROOT, corpus_dir, tree_rss
from tests.synth import ct_series

SITE = ROOT / "rules" / "recipes" / "site.deid"
CORPUS = [
    "pydicom/dicomdir/77654033/CT2/17106",  # CT, 184 elements
    "pydicom/test_files/CT_small.dcm",
    "pydicom/dicomdir/98892003/MR1/15820",  # MR
    "pydicom/test_files/MR_small_implicit.dcm",  # implicit VR
    "pydicom/test_files/MR_small_RLE.dcm",  # encapsulated pixel data
    "pydicom-data/emri_small.dcm",  # enhanced MR: functional group sequences
]
# %values lists turn instance values into regular expressions (deid.dicom.parser.find_by_values):
# a PatientID can break deid for that instance, or hang it.
VALUES_RECIPE = """FORMAT dicom

%values patient_ids
FIELD PatientID

%header
REMOVE values:patient_ids
REPLACE PatientName ANONYMOUS
"""
BREAKS_DEID = "AB(12"  # re.error: unterminated subpattern
HANGS_DEID = "([0-9]|[0-9])+X"  # exponential backtracking on every UID's digits


def write(tmp_path: Path, text: str, name: str = "r.deid") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def site() -> Iterator[RecipeRunner]:
    with RecipeRunner(SITE) as runner:
        yield runner


@pytest.fixture(scope="module")
def ct_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return ct_series(tmp_path_factory.mktemp("ct"), 1)[0].read_bytes()


def synthetic(ct_bytes: bytes, **values: str) -> Dataset:
    ds = dcmread(io.BytesIO(ct_bytes))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def part10_round_trip(ds: Dataset) -> Dataset:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    out.seek(0)
    return dcmread(out)


# --- the example recipe on real files --------------------------------------------------


@pytest.mark.parametrize("name", CORPUS)
def test_site_recipe_does_what_it_says_and_keeps_a_valid_instance(
    site: RecipeRunner, name: str
) -> None:
    ds = dcmread(corpus_dir() / name)
    ds.PatientBirthDate, ds.StudyDate = "19700101", "20240310"
    ds.InstitutionName, ds.OtherPatientIDs = "General Hospital", "OLD-1"
    ds.pop("PatientIdentityRemoved", None)
    before = {kw: ds.get(kw) for kw in ("SOPClassUID", "SOPInstanceUID", "PatientID")}
    meta = {kw: ds.file_meta[kw].value for kw in ("MediaStorageSOPClassUID", "TransferSyntaxUID")}
    pixels = ds.get_item("PixelData").value

    changes = site.apply(ds)

    out = part10_round_trip(ds)
    assert out.PatientName == "ANONYMOUS"  # REPLACE
    assert out.PatientID == generate_uid("2.25.", [str(before["PatientID"])])  # deid_func
    assert out.PatientBirthDate == ""  # BLANK
    assert "InstitutionName" not in out and "OtherPatientIDs" not in out  # REMOVE
    assert out.PatientIdentityRemoved == "YES"  # ADD
    assert out.StudyDate == "20240225"  # JITTER -14
    # endswith:InstanceUID remaps SOPInstanceUID too; file meta follows it
    assert out.SOPInstanceUID == generate_uid("2.25.", [str(before["SOPInstanceUID"])])
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.SOPClassUID == before["SOPClassUID"]
    assert {kw: out.file_meta[kw].value for kw in meta} == meta
    assert out.PixelData == pixels
    for line in (
        "PatientName (0010,0010): replaced",
        "PatientBirthDate (0010,0030): blanked",
        "InstitutionName (0008,0080): removed",
        "StudyDate (0008,0020): replaced",
        "PatientIdentityRemoved (0012,0062): added",
        "SOPInstanceUID (0008,0018): replaced",
    ):
        assert line in changes


def test_filters_that_hit_sop_class_and_file_meta_uids_are_undone(tmp_path: Path) -> None:
    """deid's `endswith:ID` matches every "...UID" (PITFALLS); removing them is not valid DICOM."""
    recipe = write(tmp_path, "FORMAT dicom\n%header\nREMOVE endswith:ID\n")
    validate_recipe(recipe)
    ds = dcmread(corpus_dir() / CORPUS[0])
    uids = {kw: ds[kw].value for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")}
    meta = {e.keyword: e.value for e in ds.file_meta if e.keyword.endswith("UID")}

    with RecipeRunner(recipe) as runner:
        changes = runner.apply(ds)

    out = part10_round_trip(ds)
    assert "PatientID" not in out and "StudyInstanceUID" not in out  # the recipe's own doing
    assert out.SOPClassUID == uids["SOPClassUID"]
    assert out.SOPInstanceUID == uids["SOPInstanceUID"]
    for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"):
        assert out.file_meta[keyword].value == meta[keyword]
    assert "SOPClassUID (0008,0016): restored" in changes
    assert "SOPInstanceUID (0008,0018): restored (the recipe removed it)" in changes
    assert "StudyInstanceUID (0020,000D): removed" in changes


def test_a_dataset_without_file_meta_goes_through_and_comes_back_without(
    site: RecipeRunner,
) -> None:
    """A C-STORE handler's dataset has no file meta, on which deid itself fails."""
    plain = Dataset()
    for elem in dcmread(corpus_dir() / CORPUS[1]):
        plain.add(elem)
    site.apply(plain)
    assert not hasattr(plain, "file_meta")
    assert plain.PatientName == "ANONYMOUS"
    assert plain.SOPClassUID == dcmread(corpus_dir() / CORPUS[1]).SOPClassUID


def test_deid_noise_goes_to_logging_not_stdout(
    tmp_path: Path,
    ct_bytes: bytes,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # deid print()s on every deid_func call (site.deid has two) and warns on a JITTER it cannot do
    recipe = write(tmp_path, "FORMAT dicom\n%header\nJITTER contains:PatientID 5\n")
    ds = synthetic(ct_bytes)
    with RecipeRunner(recipe) as runner, RecipeRunner(SITE) as site_runner:
        runner.apply(ds)
        site_runner.apply(synthetic(ct_bytes))
    assert capfd.readouterr() == ("", "")
    warned = [r.getMessage() for r in caplog.records if "JITTER not supported" in r.getMessage()]
    assert warned and str(ds.SOPInstanceUID) in warned[0]


# --- bad recipes are rule errors, found up front ---------------------------------------

H = "FORMAT dicom\n%header\n"
BAD = [
    (H + "REMOVE PatientName\nREPLACE PatientID\n", 4, "REPLACE requires a VALUE"),  # deid exits
    ("FORMAT dicom\n%headers\nREMOVE PatientName\n", 2, "headers is not a valid section"),
    ("FORMAT nifti\n%header\nREMOVE PatientName\n", 1, "nifti is not a valid format"),
    (
        "FORMAT dicom\n%filter\nLABEL x\n  contains Modality CT\n" + "%header\nBLANK PatientName\n",
        2,
        "must provide a name for a filter section",
    ),
    (
        "FORMAT dicom\n%filter f\nLABEL x\n  contains Modality\n" + "%header\nBLANK PatientName\n",
        4,
        "must have field and values",
    ),
    (
        "FORMAT dicom\n%fields f\nSPLIT PatientName\n%header\nREMOVE fields:f\n",
        3,
        "only supports FIELD",
    ),
    # deid would silently skip or misread these
    (H + "remove PatientName\n", 3, "upper case"),
    (H + "REMOVED PatientName\n", 3, "unknown action 'REMOVED'"),
    (H + "REMOVE PatientName # old\n", 3, "removes nothing"),
    (H + "REMOVE endwith:ID\n", 3, "unknown field expander 'endwith:'"),
    (H + "REMOVE contains:(\n", 3, "not a valid regex"),
    (H + "REMOVE values:ids\n", 3, "names no '%values ids' section"),
    (H + "PatientName ANON\n", 3, "not a deid recipe line"),
    ("FORMAT dicom\nREMOVE PatientName\n", 2, "before any section"),
    (
        "FORMAT dicom\n%filter f\nLABEL x\n  contain Modality CT\n%header\nBLANK PatientName\n",
        4,
        "not a filter",
    ),
    # it would fail every instance, or do nothing, at run time
    (H + "JITTER StudyDate 2w\n", 3, "whole number of days"),
    (H + "JITTER PatientName 5\n", 3, "PatientName is PN"),
    (H + "REPLACE PatientID func:hash\n", 3, "gateway passes none"),
    (H + "REPLACE PatientID deid_func:hash\n", 3, "unknown deid_func 'hash'"),
    (H + "ADD endswith:X 1\n", 3, "ADD needs a DICOM keyword"),
    # the output would not be valid DICOM
    (H + "REMOVE SOPClassUID\n", 3, "SOPClassUID is kept"),
    (H + "REPLACE (0002,0010) 1.2.3\n", 3, "TransferSyntaxUID is kept"),
    (H + "BLANK SOPInstanceUID\n", 3, "REPLACE it"),
]


@pytest.mark.parametrize(("text", "line", "reason"), BAD)
def test_a_bad_line_is_a_recipe_error_naming_it(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], text: str, line: int, reason: str
) -> None:
    from deid.logger import bot

    history, level = len(bot.history), bot.level
    recipe = write(tmp_path, text)
    with pytest.raises(RecipeError) as caught:  # not SystemExit: the process goes on
        validate_recipe(recipe)
    assert str(caught.value).startswith(f"{recipe}: line {line}: ")
    assert reason in caught.value.reason
    assert caught.value.line == line
    assert capfd.readouterr() == ("", "")  # deid said nothing
    assert (len(bot.history), bot.level) == (history, level)  # and kept nothing


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "no such recipe file"),
        ("", "the recipe is empty"),
        ("# comments only\n", "the recipe is empty"),
        ("FORMAT dicom\n%header\n# nothing yet\n", "no %header actions"),
        ("%header\nREMOVE PatientName\n", "no 'FORMAT dicom' line"),
    ],
)
def test_a_recipe_without_actions_is_a_recipe_error(
    tmp_path: Path, text: str | None, reason: str
) -> None:
    recipe = tmp_path / "r.deid" if text is None else write(tmp_path, text)
    with pytest.raises(RecipeError, match=f"^{recipe}: {reason}"):
        validate_recipe(recipe)


def test_the_example_recipe_and_deids_function_list_are_current() -> None:
    from deid.dicom.actions import deid_funcs  # loads matplotlib: here only

    validate_recipe(SITE)
    assert set(deid_funcs) == DEID_FUNCS


def test_a_recipe_broken_after_validation_fails_in_the_runner(tmp_path: Path) -> None:
    """deid itself would load a missing recipe as one with no actions and change nothing."""
    recipe = write(tmp_path, H + "REMOVE PatientName\n")
    validate_recipe(recipe)
    recipe.unlink()
    with RecipeRunner(recipe) as runner, pytest.raises(RecipeError, match="no such recipe file"):
        runner.apply(dcmread(corpus_dir() / CORPUS[1]))


# --- one instance fails, hangs or kills deid: that instance fails, the next goes through --


def test_deid_failing_or_hanging_on_one_instance_fails_only_that_instance(
    tmp_path: Path, ct_bytes: bytes
) -> None:
    with RecipeRunner(write(tmp_path, VALUES_RECIPE), timeout=2) as runner:
        broken = synthetic(ct_bytes, PatientID=BREAKS_DEID)
        with pytest.raises(RecipeError, match=f"deid failed on {broken.SOPInstanceUID}: error"):
            runner.apply(broken)
        assert broken.PatientName == "Synthetic^Patient"  # untouched
        first = runner.pid

        hangs = synthetic(ct_bytes, PatientID=HANGS_DEID)
        started = time.monotonic()
        with pytest.raises(RecipeError, match=f"took over 2 s on {hangs.SOPInstanceUID}"):
            runner.apply(hangs)
        assert time.monotonic() - started < 6
        assert first is not None and not psutil.pid_exists(first)

        fine = synthetic(ct_bytes, PatientID="SAFE123", OtherPatientIDs="SAFE123")
        changes = runner.apply(fine)
        assert "OtherPatientIDs (0010,1000): removed" in changes
        assert fine.PatientName == "ANONYMOUS"


def test_a_deid_process_that_dies_costs_one_instance(tmp_path: Path, ct_bytes: bytes) -> None:
    with RecipeRunner(write(tmp_path, VALUES_RECIPE), timeout=60) as runner:
        runner.apply(synthetic(ct_bytes))
        victim = runner.pid
        assert victim is not None
        threading.Timer(0.3, os.kill, (victim, signal.SIGKILL)).start()
        hangs = synthetic(ct_bytes, PatientID=HANGS_DEID)
        started = time.monotonic()
        with pytest.raises(RecipeError, match=f"died on {hangs.SOPInstanceUID} \\(exit code -9\\)"):
            runner.apply(hangs)
        assert time.monotonic() - started < 10

        runner.apply(synthetic(ct_bytes))  # a new process
        os.kill(runner.pid, signal.SIGKILL)  # dies while idle: nobody's instance fails
        psutil.Process(runner.pid).wait(timeout=5)
        assert runner.apply(synthetic(ct_bytes))
        assert runner.pid not in (None, victim)


def test_the_process_is_replaced_every_n_instances(tmp_path: Path, ct_bytes: bytes) -> None:
    with RecipeRunner(write(tmp_path, VALUES_RECIPE), recycle_every=2) as runner:
        runner.apply(synthetic(ct_bytes))
        first = runner.pid
        runner.apply(synthetic(ct_bytes))
        assert runner.pid is None
        runner.apply(synthetic(ct_bytes))
        assert runner.pid not in (None, first)


# --- memory stays flat ---------------------------------------------------------------------

# bytes. Measured +0.2 MiB. deid as it is keeps every dataset it saw: in process +0.5 MiB per
# 512x512 CT; here, with Pixel Data kept out of the child, +25 MiB per 1000 headers.
GROWTH_BOUND = 8 << 20


@pytest.mark.parametrize(
    "count", [1000, pytest.param(20000, marks=pytest.mark.slow)], ids=["1000", "soak-20000"]
)
def test_memory_stays_flat_over_many_instances(ct_bytes: bytes, count: int) -> None:
    """RSS of this process plus deid's, without relying on recycling."""
    with RecipeRunner(SITE, recycle_every=10**9) as runner:
        for _ in range(20):
            runner.apply(synthetic(ct_bytes))
        child = runner.pid
        baseline = tree_rss(os.getpid())
        for _ in range(count):
            runner.apply(synthetic(ct_bytes))
        growth = tree_rss(os.getpid()) - baseline
        assert runner.pid == child
    assert growth < GROWTH_BOUND, f"RSS grew {growth >> 20} MiB over {count} instances"
