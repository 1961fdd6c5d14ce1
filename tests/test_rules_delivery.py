"""Rules in a running gateway, against real dcmtk peers on 127.0.0.1: each rule's own copy,
modify on delivery, hot reload and rejection, series triggers, drop, failures, dry run."""

from __future__ import annotations

import json
import time

import httpx
import yaml
from pydicom import dcmread

from tests.conftest import dicom_dest, wait_for
from tests.peers import storescu
from tests.synth import ct_series
from tests.test_delivery import jobs_in, metric


def dataset_of(path):
    return dcmread(path, stop_before_pixels=True)


def test_each_rule_gets_its_own_copy_and_modify_reaches_the_destination(
    tmp_path, gateway_factory, storescp_factory
):
    pacs, research = storescp_factory("pacs"), storescp_factory("research")
    rules = [
        {"name": "as-is", "forward": ["pacs"]},
        {
            "name": "research",
            "match": {"Modality": "CT"},
            "modify": [
                {"set": {"InstitutionName": "Research Copy"}},
                {"prefix": {"AccessionNumber": "R-"}},
                {"remove": ["PatientBirthDate"]},
            ],
            "forward": ["research"],
        },
    ]
    gw = gateway_factory({"pacs": dicom_dest(pacs), "research": dicom_dest(research)}, rules)
    gw.start()
    files = ct_series(tmp_path / "s", 5, rows=32, cols=32)
    for f in files:  # give the files what the rule edits
        ds = dcmread(f)
        ds.AccessionNumber, ds.PatientBirthDate = "A77", "19700101"
        ds.save_as(f)
    out = storescu(gw.port, files)
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for(lambda: len(pacs.files()) == 5 and len(research.files()) == 5, 60, "both copies")
    paths = {str(dataset_of(f).SOPInstanceUID): f for f in files}
    originals = {uid: dataset_of(f) for uid, f in paths.items()}
    for p in pacs.files():
        ds = dataset_of(p)
        assert ds == originals[str(ds.SOPInstanceUID)]  # untouched by the other rule's edits
    for p in research.files():
        ds = dcmread(p)
        assert ds.InstitutionName == "Research Copy" and ds.AccessionNumber == "R-A77"
        assert "PatientBirthDate" not in ds
        assert ds.PixelData == dcmread(paths[str(ds.SOPInstanceUID)]).PixelData
        old = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
        assert old.AccessionNumber == "A77"
    wait_for(lambda: not list((gw.data_dir / "spool" / "work").iterdir()), 10, "copies removed")


def test_hot_reload_and_a_rejected_file_keeps_the_previous_rules(
    tmp_path, gateway_factory, storescp_factory
):
    pacs, research = storescp_factory("pacs"), storescp_factory("research")
    gw = gateway_factory(
        {"pacs": dicom_dest(pacs), "research": dicom_dest(research)},
        [{"name": "ct", "match": {"Modality": "CT"}, "forward": ["pacs"]}],
    ).start()
    pid = gw.proc.pid
    # a worker keeps its previous rules: let both have some (one that starts while the
    # files are bad has none, and routes nothing until they are fixed)
    wait_for(lambda: gw.logs().count("loaded 1 rule(s)") == 2, 20, "workers' rules")
    bad = gw.work / "rules" / "zz-new.yaml"
    bad.write_text("rules:\n  - name: broken\n    forward: [nowhere]\n")
    wait_for(lambda: gw.http("/readyz").json()["rules"]["rejected"], 20, "rejection shown")
    ready = gw.http("/readyz")
    assert ready.status_code == 200  # the previous rules still route: still ready
    [problem] = ready.json()["rules"]["problems"]
    assert problem.startswith(f"{bad}: line 2: forward: unknown destination 'nowhere'")
    assert metric(gw, "gateway_rules_rejected") == 1
    out = storescu(gw.port, ct_series(tmp_path / "a", 3, rows=16, cols=16))
    assert out.returncode == 0, out.stderr
    wait_for(lambda: len(pacs.files()) == 3, 30, "delivery under the previous rules")
    assert "rules rejected, previous rules kept" in gw.logs() and "zz-new.yaml: line 2" in gw.logs()

    bad.write_text("rules:\n  - {name: also-research, forward: [research]}\n")
    wait_for(lambda: not gw.http("/readyz").json()["rules"]["rejected"], 20, "reload")
    assert gw.http("/readyz").json()["rules"]["in_effect"] == 2
    assert metric(gw, "gateway_rules_rejected") == 0
    time.sleep(1.5)  # workers notice the change within a second (their idle wait)
    out = storescu(gw.port, ct_series(tmp_path / "b", 2, rows=16, cols=16))
    assert out.returncode == 0, out.stderr
    wait_for(lambda: len(pacs.files()) == 5 and len(research.files()) == 2, 30, "new rule")
    assert gw.proc.pid == pid and gw.proc.poll() is None  # no restart


def test_series_trigger_waits_for_quiet_then_sends_each_series_on_one_association(
    tmp_path, gateway_factory, storescp_factory
):
    pacs = storescp_factory("pacs")
    rules = [
        {
            "name": "per-series",
            "forward": ["pacs"],
            "trigger": {"per": "series", "quiet_seconds": 2, "max_wait_seconds": 60},
        }
    ]
    gw = gateway_factory({"pacs": dicom_dest(pacs)}, rules, workers={"batch_size": 2}).start()
    study = "1.2.826.0.1.3680043.8.498.1"
    a = ct_series(tmp_path / "a", 4, rows=16, cols=16, study_uid=study)
    b = ct_series(tmp_path / "b", 3, rows=16, cols=16, study_uid=study)
    log = pacs.out_dir.parent / "pacs.log"
    before = log.read_text().count("Association Received")
    for files in (a[:2], b, a[2:]):  # interleaved arrivals; batch_size 2 is not the limit
        assert storescu(gw.port, files).returncode == 0
    wait_for(lambda: jobs_in(gw, "held") == 7, 10, "jobs held")
    assert pacs.files() == []
    wait_for(lambda: len(pacs.files()) == 7, 30, "both series after their quiet period")
    assert log.read_text().count("Association Received") - before == 2


def test_drop_failure_and_dry_run(tmp_path, gateway_factory, storescp_factory):
    pacs = storescp_factory("pacs")
    rules = [
        {"name": "junk", "match": {"PatientID": "DROP*"}, "drop": True, "stop": True},
        {
            "name": "bad-edit",
            "match": {"PatientID": "BAD"},
            "modify": [{"prefix": {"Modality": "TOO-LONG-FOR-CS-"}}],
            "forward": ["pacs"],
            "stop": True,
        },
        {
            "name": "tagged",
            "modify": [{"set": {"InstitutionName": "Routed"}}],
            "forward": ["pacs"],
        },
    ]
    gw = gateway_factory({"pacs": dicom_dest(pacs)}, rules).start()
    drop, bad, good = (ct_series(tmp_path / n, 1, rows=16, cols=16)[0] for n in "dbg")
    for path, pid in ((drop, "DROP-1"), (bad, "BAD")):
        ds = dcmread(path)
        ds.PatientID = pid
        ds.save_as(path)
    assert storescu(gw.port, [drop, bad, good]).returncode == 0
    wait_for(lambda: len(pacs.files()) == 1 and jobs_in(gw, "dead") == 1, 30, "outcomes")
    assert metric(gw, "gateway_dropped_instances_total") == 1
    [dead] = json.loads(gw.cli("queue", "dead", "--json").stdout)
    assert dead["sop_instance_uid"] == str(dataset_of(bad).SOPInstanceUID)
    assert dead["last_error"].startswith("rule 'bad-edit': ") and "Modality" in dead["last_error"]
    assert dataset_of(pacs.files()[0]).SOPInstanceUID == dataset_of(good).SOPInstanceUID

    # dry run: the command line and the API say the same
    out = gw.cli("rules", "test", str(bad), str(good), "--calling-ae", "CT1")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "[FIRES] bad-edit" in text and "ERROR: modify" in text
    assert "[no] junk" in text and "PatientID is 'BAD', not like 'DROP*'" in text
    assert "InstitutionName (0008,0080): added 'Routed'" in text
    assert "forward to: pacs (each instance)" in text
    report = json.loads(gw.cli("rules", "test", "--json", str(good)).stdout)[str(good)]
    api = httpx.post(
        f"http://127.0.0.1:{gw.http_port}/api/rules/test?calling_ae=CT1",
        content=good.read_bytes(),
        headers={"content-type": "application/dicom"},
        timeout=30,
    )
    assert api.status_code == 200, api.text
    assert api.json()["fired"] == report["fired"] == ["tagged"]
    assert api.json()["rules"][2]["changes"] == report["rules"][2]["changes"]
    not_dicom = httpx.post(f"http://127.0.0.1:{gw.http_port}/api/rules/test", content=b"x" * 10)
    assert not_dicom.status_code == 400 and "not a readable DICOM" in not_dicom.json()["error"]

    # the admin fixes the rule; `queue retry` runs the fixed actions, not the frozen ones
    rules[1]["modify"] = [{"set": {"InstitutionName": "Fixed"}}]
    (gw.work / "rules" / "test.yaml").write_text(yaml.safe_dump({"rules": rules}))
    out = gw.cli("queue", "retry")
    assert out.returncode == 0 and "1 dead letter(s) queued again" in out.stdout, out.stderr
    wait_for(lambda: len(pacs.files()) == 2, 30, "the retried instance")
    fixed = [dataset_of(p) for p in pacs.files()]
    assert {str(d.get("InstitutionName")) for d in fixed} == {"Routed", "Fixed"}


def test_deidentify_rule_end_to_end_with_consistent_pseudonyms(
    tmp_path, gateway_factory, storescp_factory
):
    pacs, research = storescp_factory("pacs"), storescp_factory("research")
    rules = [
        {"name": "as-is", "forward": ["pacs"]},
        {
            "name": "research",
            "deidentify": {"options": ["retain_long_modified_dates"]},
            "forward": ["research"],
        },
    ]
    gw = gateway_factory(
        {"pacs": dicom_dest(pacs), "research": dicom_dest(research)},
        rules,
        env={"GATEWAY__DEIDENTIFY__SECRET": "test-secret-0123456789"},
    ).start()
    files = ct_series(tmp_path / "s", 3, rows=16, cols=16)
    originals = [dataset_of(f) for f in files]
    assert storescu(gw.port, files).returncode == 0
    wait_for(lambda: len(research.files()) == 3 and len(pacs.files()) == 3, 60, "delivery")
    first = {p.name: dataset_of(p) for p in research.files()}
    for ds in first.values():
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientID.startswith("ANON-") and str(ds.PatientName) != "Synthetic^Patient"
        assert ds.StudyInstanceUID != originals[0].StudyInstanceUID
        assert ds.StudyDate != originals[0].StudyDate  # shifted, longitudinal
    assert len({d.StudyInstanceUID for d in first.values()}) == 1
    assert not {d.SOPInstanceUID for d in first.values()} & {o.SOPInstanceUID for o in originals}
    for p in research.files():
        raw = p.read_bytes()
        assert b"Synthetic^Patient" not in raw and b"SYN0001" not in raw
    # the same study sent again maps to the same pseudonymous UIDs (storescp files are
    # named by SOP Instance UID: still three files, same datasets)
    assert storescu(gw.port, files).returncode == 0
    wait_for(lambda: len(pacs.files()) == 3 and jobs_in(gw, "pending") == 0, 30, "resend")
    wait_for(lambda: metric(gw, "gateway_delivered_instances_total",
                            '{destination="research"}') == 6, 30, "second research copy")  # fmt: skip
    assert {p.name: dataset_of(p) for p in research.files()} == first
    # an authorised admin re-identifies the pseudonym
    pseudo = next(iter(first.values())).PatientID
    out = gw.cli("deid", "reidentify", pseudo)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "PatientID=SYN0001\tPatientName=Synthetic^Patient"
    assert (gw.data_dir / "pseudonyms.db").stat().st_mode & 0o077 == 0


def test_transcode_rules_deliver_the_requested_syntax_with_the_same_pixels(
    tmp_path, gateway_factory, storescp_factory
):
    j2k_scp, be_scp = storescp_factory("j2k"), storescp_factory("be")
    rules = [
        {"name": "j2k", "transcode": "j2k-lossless", "forward": ["j2k"]},
        {"name": "be", "transcode": "big-endian", "forward": ["be"]},
    ]
    gw = gateway_factory({"j2k": dicom_dest(j2k_scp), "be": dicom_dest(be_scp)}, rules).start()
    files = ct_series(tmp_path / "s", 2, rows=32, cols=32)
    assert storescu(gw.port, files).returncode == 0
    wait_for(lambda: len(j2k_scp.files()) == 2 and len(be_scp.files()) == 2, 60, "delivery")
    originals = {str(dataset_of(f).SOPInstanceUID): dcmread(f) for f in files}
    for scp, ts in ((j2k_scp, "1.2.840.10008.1.2.4.90"), (be_scp, "1.2.840.10008.1.2.2")):
        for p in scp.files():
            ds = dcmread(p)
            assert ds.file_meta.TransferSyntaxUID == ts
            orig = originals[str(ds.SOPInstanceUID)]  # the SOP Instance UID is kept
            assert (ds.pixel_array == orig.pixel_array).all()
