"""The rule language: matching, firing semantics, modify, triggers, and load errors.

Pure Python on datasets and a real SQLite queue; the end-to-end behaviour (hot reload,
actions on delivery, dry run) is in test_rules_delivery.py.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from pydicom import Dataset

from gateway.errors import ConfigError
from gateway.match import Context, MatchError, parse
from gateway.modify import ModifyError
from gateway.modify import apply as modify_apply
from gateway.modify import parse as modify_parse
from gateway.queue import NewInstance, Queue, Route
from gateway.rules import load_rules

DESTS = {"archive": object(), "pacs": object(), "ai": object()}
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def ct() -> Dataset:
    ds = Dataset()
    ds.Modality = "CT"
    ds.PatientID = "P1"
    ds.PatientName = "Doe^John"
    ds.StudyDescription = "CT CHEST W/O"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = "1.25"
    ds.StudyDate = "20240315"
    ds.AccessionNumber = "A100"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4.5"
    ds.ReferencedStudySequence = [item]
    return ds


def ctx(ds: Dataset | None = None, **kw) -> Context:
    kw.setdefault("received_at", time.time())
    return Context(ct() if ds is None else ds, **kw)


def check(spec: dict, c: Context | None = None) -> tuple[bool, str]:
    return parse(spec)(c or ctx())


# -- matching ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, expected",
    [
        ({}, True),
        ({"Modality": "CT"}, True),
        ({"Modality": "MR"}, False),
        ({"(0008,0060)": "CT"}, True),
        ({"00080060": "CT"}, True),
        ({"StudyDescription": "CT*"}, True),  # DICOM wildcard
        ({"StudyDescription": "C? CHEST*"}, True),
        ({"StudyDescription": "CHEST*"}, False),
        ({"StudyDescription": {"wildcard": "*W/O"}}, True),
        ({"StudyDescription": {"regex": "(?i)chest"}}, True),
        ({"StudyDescription": {"regex": "^chest"}}, False),
        ({"Modality": ["MR", "CT"]}, True),  # list membership
        ({"Modality": {"in": ["MR", "PT"]}}, False),
        ({"ImageType": {"in": ["LOCALIZER", "AXIAL"]}}, True),  # any value of a multi-value
        ({"ImageType": "ORIGINAL\\PRIMARY\\AXIAL"}, True),  # or the whole value
        ({"SliceThickness": {"range": [0.5, 2]}}, True),
        ({"SliceThickness": {"range": [2, None]}}, False),
        ({"SliceThickness": 1.25}, True),  # numeric equality: "1.25" == 1.25
        ({"StudyDate": {"range": ["20240101", "20241231"]}}, True),
        ({"StudyDate": {"range": ["2024-03-16", None]}}, False),
        ({"AccessionNumber": {"exists": True}}, True),
        ({"OtherPatientIDs": {"absent": True}}, True),
        ({"OtherPatientIDs": {"exists": True}}, False),
        ({"ReferencedStudySequence.ReferencedSOPInstanceUID": "1.2.3.*"}, True),
        ({"ReferencedStudySequence[0].ReferencedSOPInstanceUID": "1.2.3.4.5"}, True),
        ({"ReferencedStudySequence[1].ReferencedSOPInstanceUID": {"exists": True}}, False),
        ({"any": [{"Modality": "MR"}, {"PatientID": "P1"}]}, True),
        ({"all": [{"Modality": "CT"}, {"PatientID": "P2"}]}, False),
        ({"not": {"Modality": "MR"}}, True),
        ({"Modality": "CT", "not": {"any": [{"PatientID": "P1"}]}}, False),
    ],
)
def test_tag_conditions(spec, expected):
    ok, why = check(spec)
    assert ok is expected, why


def test_a_missing_tag_does_not_match_and_says_why():
    ds = Dataset()
    for spec in (
        {"Modality": "CT"},
        {"Modality": {"regex": "."}},
        {"SliceThickness": {"range": [0, 9]}},
        {"ReferencedStudySequence.ReferencedSOPInstanceUID": "1*"},
    ):
        ok, why = check(spec, ctx(ds))
        assert not ok and "is absent" in why, (spec, why)
    ok, why = check({"Modality": "MR"})
    assert why == "Modality is 'CT', not = 'MR'"


def test_arrival_conditions():
    c = ctx(calling_ae="CT_SCANNER1", called_ae="GATEWAY", source="10.1.2.3", sop_class=CT,
            transfer_syntax=EXPLICIT)  # fmt: skip
    assert check({"calling_ae": "CT_*"}, c)[0]
    assert not check({"calling_ae": ["MR1", "MR2"]}, c)[0]
    assert check({"called_ae": "GATEWAY"}, c)[0]
    assert check({"source": "10.0.0.0/8"}, c)[0]
    assert not check({"source": ["192.168.0.0/16", "10.1.2.4"]}, c)[0]
    assert check({"sop_class": "CTImageStorage"}, c)[0]
    assert check({"sop_class": [CT]}, c)[0]
    assert not check({"sop_class": "MRImageStorage"}, c)[0]
    assert check({"transfer_syntax": "ExplicitVRLittleEndian"}, c)[0]


def test_time_windows():
    monday_10 = dt.datetime(2026, 11, 23, 10, 0).timestamp()
    sunday_23 = dt.datetime(2026, 11, 22, 23, 30).timestamp()
    tuesday_03 = dt.datetime(2026, 11, 24, 3, 0).timestamp()
    office = {"time": {"from": "08:00", "to": "18:00", "days": ["mon", "tue", "wed", "thu", "fri"]}}
    night = {"time": {"from": "22:00", "to": "06:00", "days": ["mon"]}}
    assert check(office, ctx(received_at=monday_10))[0]
    assert not check(office, ctx(received_at=sunday_23))[0]
    assert not check(night, ctx(received_at=monday_10))[0]
    assert not check(night, ctx(received_at=sunday_23))[0]  # Sunday night is not Monday's
    assert check(night, ctx(received_at=tuesday_03))[0]  # Monday night runs into Tuesday


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"NotAKeyword": 1}, "'NotAKeyword' is not a DICOM keyword or (gggg,eeee) tag"),
        ({"Modality": {"regex": "("}}, "match.Modality: regex '('"),
        ({"Modality": {"like": "x"}}, "match.Modality: expected one operator"),
        ({"StudyDate": {"range": ["a", "b"]}}, "range bounds must be numbers or dates"),
        ({"any": {"Modality": "CT"}}, "match.any: expected a non-empty list"),
        ({"source": "10.0.0.300/8"}, "match.source"),
        ({"sop_class": "NoSuchStorage"}, "neither a UID nor a name"),
        ({"time": {"from": "25:00"}}, "match.time.from: '25:00' is not a time of day"),
        ({"Modality": None}, "match.Modality: write a value"),
        ({"ReferencedStudySequence[0]": "x"}, "an item index must be followed by a tag"),
    ],
)
def test_bad_conditions_name_the_key_and_reason(spec, message):
    with pytest.raises(MatchError) as exc:
        parse(spec)
    assert message in str(exc.value)


# -- rules: semantics and errors -------------------------------------------------------------
def rules_dir(tmp_path: Path, **files: str) -> Path:
    d = tmp_path / "rules"
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def fired(rules, ds: Dataset | None = None) -> list[str]:
    return [v.rule.name for v in rules.route(ctx(ds))]


def test_every_matching_rule_fires_in_file_then_rule_order(tmp_path):
    d = rules_dir(
        tmp_path,
        **{
            "20-ct.yaml": "rules:\n  - {name: ct, match: {Modality: CT}, forward: [pacs]}\n"
            "  - {name: ct-ai, match: {Modality: CT}, forward: [ai]}\n",
            "10-all.yaml": "rules:\n  - {name: all, forward: [archive]}\n",
        },
    )
    rules = load_rules(d, DESTS)
    assert fired(rules) == ["all", "ct", "ct-ai"]
    mr = ct()
    mr.Modality = "MR"
    assert fired(rules, mr) == ["all"]


def test_stop_fallback_disabled_and_drop(tmp_path):
    d = rules_dir(
        tmp_path,
        **{
            "rules.yaml": """rules:
  - {name: idle, enabled: false, forward: [pacs]}
  - {name: junk, match: {Modality: SR}, drop: true, stop: true}
  - {name: ct, match: {Modality: CT}, forward: [pacs], stop: true}
  - {name: after-ct, forward: [ai]}
  - {name: rest, fallback: true, forward: [archive]}
"""
        },
    )
    rules = load_rules(d, DESTS)
    assert fired(rules) == ["ct"]
    verdicts = {v.rule.name: v.why for v in rules.evaluate(ctx())}
    assert verdicts["idle"] == "disabled"
    assert verdicts["after-ct"] == "not tried: rule 'ct' has stop: true"
    assert verdicts["rest"] == "not tried: rule 'ct' has stop: true"
    pt = ct()
    pt.Modality = "PT"
    assert fired(rules, pt) == ["after-ct"]  # so the fallback stays quiet
    sr = ct()
    sr.Modality = "SR"
    assert fired(rules, sr) == ["junk"]
    d2 = rules_dir(tmp_path / "2", **{"r.yaml": "rules:\n  - {name: rest, fallback: true,"
                                               " forward: [archive]}\n"})  # fmt: skip
    verdict = load_rules(d2, DESTS).evaluate(ctx())[0]
    assert verdict.fired and verdict.why.startswith("fallback: no other rule fired")


def test_rule_errors_name_file_line_and_reason(tmp_path):
    d = rules_dir(
        tmp_path,
        **{
            "a.yaml": "rules:\n  - {name: one, match: {}, forward: [archive]}\n"
            "  - name: two\n    match: {NotAKeyword: 1}\n    forward: [nowhere]\n    colour: red\n"
            "  - {name: one, forward: [pacs], stop: maybe}\n"
            "  - {name: three, forward: [pacs], drop: true}\n"
            "  - {name: four, forward: [pacs], trigger: {per: patient}}\n"
            "  - {name: five, forward: [pacs], modify: [{set: {NotATag: x}}]}\n"
            "  - {name: six, forward: [pacs], deidentify: {}}\n"
            "  - {name: no, forward: [pacs]}\n",
            "b.yaml": "rules: [\n",
        },
    )
    with pytest.raises(ConfigError) as exc:
        load_rules(d, DESTS, deid_secret=False)
    a, b = d / "a.yaml", d / "b.yaml"
    problems = exc.value.problems
    expected = [
        (f"{a}: line 3: unknown key 'colour'", "known: name, enabled, match"),
        (f"{a}: line 3: match: 'NotAKeyword' is not a DICOM keyword", ""),
        (f"{a}: line 3: forward: unknown destination 'nowhere'", "(config.yaml has: ai, archive"),
        (f"{a}: line 7: stop: expected true or false", ""),
        (f"{a}: line 8: drop: a rule that drops cannot also forward", ""),
        (f"{a}: line 9: trigger: expected 'instance' or {{per: series|study", ""),
        (f"{a}: line 10: modify[0].set: 'NotATag' is not a DICOM keyword", ""),
        (f"{a}: line 11: deidentify: config.yaml needs deidentify.secret", ""),
        (f"{a}: line 12: name: YAML read this name as false", "quote it"),
        (f"{b}: line 2: invalid YAML: expected the node content", ""),
    ]
    assert len(problems) == len(expected), problems
    for line, (start, part) in zip(problems, expected, strict=True):
        assert line.startswith(start) and part in line, (line, start)


# -- modify ------------------------------------------------------------------------------
def test_modify_edits_in_order_and_records_original_values(tmp_path):
    (tmp_path / "sites.csv").write_text("# found,written\nOLD HOSP,NEW HOSP\n")
    ops = modify_parse(
        [
            {"set": {"InstitutionName": "OLD HOSP", "(0009,1001)": {"vr": "LO", "value": "p"}}},
            {"map": {"from": "InstitutionName", "file": "sites.csv"}},
            {"map": {"from": "Modality", "to": "StationName", "values": {"CT": "SCANNER"}}},
            {"copy": {"from": "AccessionNumber", "to": "StudyID"}},
            {"prefix": {"AccessionNumber": "EXT-"}},
            {"suffix": {"StudyDescription": " (routed)"}},
            {"replace": {"tag": "StudyDescription", "pattern": "^CT ", "with": ""}},
            {"remove": ["ReferencedStudySequence.ReferencedSOPInstanceUID", "OtherPatientIDs"]},
            {"set": {"ReferencedStudySequence.ReferencedSOPClassUID": CT}},
        ],
        tmp_path,
    )
    ds = ct()
    changes = modify_apply(ops, ds)
    assert ds.InstitutionName == "NEW HOSP"
    assert ds[0x00091001].value == "p"
    assert ds.StationName == "SCANNER"
    assert ds.StudyID == "A100" and ds.AccessionNumber == "EXT-A100"
    assert ds.StudyDescription == "CHEST W/O (routed)"
    item = ds.ReferencedStudySequence[0]
    assert "ReferencedSOPInstanceUID" not in item and item.ReferencedSOPClassUID == CT
    actions = [(c.path, c.action) for c in changes]
    assert ("AccessionNumber (0008,0050)", "replaced") in actions
    assert ("ReferencedStudySequence[0].ReferencedSOPInstanceUID (0008,1155)", "removed") in actions
    # overwritten values go to Original Attributes Sequence; removals do not
    [orig] = ds.OriginalAttributesSequence
    old = orig.ModifiedAttributesSequence[0]
    assert old.AccessionNumber == "A100" and old.StudyDescription == "CT CHEST W/O"
    assert orig.ReasonForTheAttributeModification == "COERCE"
    assert orig.ModifyingSystem == "dicom-gateway"
    assert "ReferencedStudySequence" not in old


def test_modify_refuses_values_the_vr_cannot_hold(tmp_path):
    for spec, message in [
        ([{"set": {"PatientSex": "MALE_TOO_LONG_FOR_CS_VALUE"}}], "modify[0].set.PatientSex"),
        ([{"set": {"(0009,1001)": "x"}}], "needs {vr: .., value: ..}"),
        ([{"shout": {}}], "modify[0]: expected one of set, remove"),
        ([{"map": {"from": "Modality", "file": "missing.csv"}}], "No such file"),
        (
            [{"replace": {"tag": "Modality", "pattern": "(", "with": ""}}],
            "modify[0].replace.pattern",
        ),
    ]:
        with pytest.raises(ModifyError) as exc:
            modify_parse(spec, tmp_path)
        assert message in str(exc.value), exc.value
    # a prefix that makes a value too long for its VR fails for that instance, with the reason
    ops = modify_parse([{"prefix": {"Modality": "TOO-LONG-FOR-CS-"}}], tmp_path)
    with pytest.raises(ModifyError, match="Modality"):
        modify_apply(ops, ct())


# -- triggers ----------------------------------------------------------------------------
def test_series_trigger_holds_jobs_until_quiet_then_leases_them_as_one_batch(tmp_path):
    q = Queue(tmp_path / "q.db")
    items = []
    for series in ("1.2.1", "1.2.2"):
        for n in range(3):
            p = tmp_path / f"{series}-{n}.dcm"
            p.write_bytes(b"x")
            items.append(NewInstance(f"{series}.{n}", CT, EXPLICIT, "1.2", series, str(p), 1))
    q.add_instances(items)
    insts = q.lease_unrouted("w", 10, 30)
    q.set_routes(
        [
            (i.id, [Route("pacs", "r", None, f"r|pacs|{i.series_uid}", 0.3, 10)], "r", False)
            for i in insts
        ]
    )
    assert q.release_held() == 0 and q.lease_jobs("w/1", 2, 30) == []
    due = q.next_due()
    assert due is not None and 0 < due - time.time() <= 0.3
    time.sleep(0.35)
    assert q.release_held() == 6
    first = q.lease_jobs("w/2", 2, 30)  # limit 2, yet the whole series comes
    assert [j.series_uid for j in first] == ["1.2.1"] * 3
    second = q.lease_jobs("w/3", 2, 30)
    assert [j.series_uid for j in second] == ["1.2.2"] * 3


def test_max_wait_releases_a_series_that_never_goes_quiet(tmp_path):
    q = Queue(tmp_path / "q.db")
    p = tmp_path / "x.dcm"
    p.write_bytes(b"x")
    key = "r|pacs|1.2.1"
    start = time.time()
    for n in range(4):
        q.add_instances([NewInstance(f"1.{n}", CT, EXPLICIT, "1.2", "1.2.1", str(p), 1)])
        [i] = q.lease_unrouted("w", 10, 30)
        q.set_routes([(i.id, [Route("pacs", "r", None, key, 0.4, 1.0)], "r", False)])
        assert q.release_held() == 0
        time.sleep(0.25)  # always a new instance before the quiet period ends
    time.sleep(max(0.0, start + 1.05 - time.time()))  # the last one came ~0.3 s ago
    assert q.release_held() == 4


def test_drop_deletes_the_instance_and_returns_its_file(tmp_path):
    q = Queue(tmp_path / "q.db")
    p = tmp_path / "x.dcm"
    p.write_bytes(b"x")
    q.add_instances([NewInstance("1.1", CT, EXPLICIT, "1.2", "1.2.1", str(p), 1)])
    [i] = q.lease_unrouted("w", 10, 30)
    assert q.set_routes([(i.id, [], "junk", True)]) == [str(p)]
    assert q.instance_stats() == {}


def test_every_example_in_the_rules_guide_loads(tmp_path):
    """docs/rules.md is what admins copy from: each YAML block must load as it stands."""
    import re

    guide = (Path(__file__).parent.parent / "docs" / "rules.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", guide, flags=re.S)
    assert len(blocks) >= 6
    (tmp_path / "recipes").mkdir()
    for i, block in enumerate(blocks):
        d = rules_dir(tmp_path / f"b{i}", **{"r.yaml": block})
        rules = load_rules(d, DESTS)
        assert rules.rules, block


def test_a_deid_recipe_rule_runs_through_the_pipeline(tmp_path):
    """A site's `deid` recipe as a rule action: checked at load, run isolated, changes listed."""
    from pydicom import dcmread

    from gateway.dryrun import dry_run
    from gateway.pipeline import ActionEnv
    from tests.synth import ct_series

    rule = "rules:\n  - {name: site, forward: [archive], deidentify: {recipe: recipes/site.deid}}\n"
    d = rules_dir(tmp_path, **{"r.yaml": rule})
    (d / "recipes").mkdir()
    recipe = Path(__file__).parent.parent / "rules" / "recipes" / "site.deid"
    (d / "recipes" / "site.deid").write_text(recipe.read_text())
    rules = load_rules(d, DESTS, deid_secret=False)  # a recipe needs no gateway secret
    ds = dcmread(ct_series(tmp_path / "s", 1, rows=16, cols=16)[0])
    report = dry_run(rules, ds, ActionEnv(d))
    [entry] = report["rules"]
    assert entry["fired"] and entry["error"] is None
    changed = [c["path"] for c in entry["changes"]["deidentify"]]
    assert any("PatientName" in c for c in changed), changed
    assert str(ds.PatientName) == "Synthetic^Patient"  # the dry run worked on a copy
