"""Dry run: what the rules would do with a file, and why; nothing is queued or sent.

One function behind `dicom-gateway rules test FILE…` and `POST /api/rules/test`, so the
command line and the web UI always agree with each other and with the worker (the same
conditions and the same action pipeline run; pseudonym mappings are not recorded).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from typing import Any

from pydicom import Dataset

from gateway.match import Context
from gateway.pipeline import ActionEnv, ActionError, Pipeline
from gateway.rules import RuleSet


def dry_run(
    rules: RuleSet,
    ds: Dataset,
    env: ActionEnv,
    *,
    calling_ae: str = "",
    called_ae: str = "",
    source: str = "",
    received_at: float | None = None,
) -> dict[str, Any]:
    """Per rule: fired or not and why; for those that fire, the changes each action makes
    (on its own copy), the transfer syntax produced and the destinations."""
    meta = getattr(ds, "file_meta", Dataset())
    ts = str(meta.get("TransferSyntaxUID", ""))
    c = Context(
        ds,
        calling_ae,
        called_ae,
        source,
        str(ds.get("SOPClassUID", meta.get("MediaStorageSOPClassUID", ""))),
        ts,
        time.time() if received_at is None else received_at,
    )
    out = []
    for v in rules.evaluate(c):
        r = v.rule
        entry: dict[str, Any] = {"rule": r.name, "at": r.source, "fired": v.fired, "why": v.why}
        if v.fired:
            entry.update(_outcome(r.actions, ds, ts, env))
            entry["destinations"] = list(r.forward)
            entry["drop"] = r.drop
            t = r.trigger
            entry["trigger"] = (
                "each instance"
                if t.per == "instance"
                else f"per {t.per}, {t.quiet_seconds:g} s quiet (at most {t.max_wait_seconds:g} s)"
            )
        out.append(entry)
    return {
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "transfer_syntax": ts,
        "rules": out,
        "fired": [e["rule"] for e in out if e["fired"]],
    }


def _outcome(actions: str | None, ds: Dataset, ts: str, env: ActionEnv) -> dict[str, Any]:
    if actions is None:
        return {"changes": {}, "output_transfer_syntax": ts, "error": None}
    mine = copy.deepcopy(ds)  # each rule works on its own copy, as in the worker
    pipe = Pipeline(json.loads(actions), ActionEnv(env.rules_dir, env.secret, None))
    try:
        changes = pipe.apply(mine)
    except ActionError as exc:
        return {"changes": {}, "output_transfer_syntax": None, "error": str(exc)}
    finally:
        pipe.close()
    return {
        "changes": {step: [asdict(c) for c in cs] for step, cs in changes.items()},
        "output_transfer_syntax": str(mine.file_meta.get("TransferSyntaxUID", ts)),
        "error": None,
    }


def render(name: str, report: dict[str, Any]) -> list[str]:
    """The report as text lines for the terminal."""
    lines = [f"{name}: {report['sop_instance_uid'] or '(no SOP Instance UID)'}"]
    if not report["fired"]:
        lines.append("  no rule fires: the instance would wait in the spool as 'unmatched'")
    for e in report["rules"]:
        head = "FIRES" if e["fired"] else "no"
        lines.append(f"  [{head}] {e['rule']} ({e['at']}): {e['why']}")
        if not e["fired"]:
            continue
        if e["drop"]:
            lines.append("      drop: consumed, sent nowhere")
            continue
        if e["error"]:
            lines.append(f"      ERROR: {e['error']} (the job would dead-letter)")
        for step, changes in e["changes"].items():
            lines.append(f"      {step}: {len(changes)} change(s)")
            for ch in changes:
                lines.append(f"        {ch['path']}: {_change(ch)}")
        if e["output_transfer_syntax"] and e["output_transfer_syntax"] != report["transfer_syntax"]:
            lines.append(
                f"      transfer syntax: {report['transfer_syntax']} -> {e['output_transfer_syntax']}"
            )
        lines.append(f"      forward to: {', '.join(e['destinations'])} ({e['trigger']})")
    return lines


def _change(ch: dict[str, Any]) -> str:
    old, new = ch["old"], ch["new"]
    if ch["action"] in ("replaced", "shifted", "dummy"):
        return f"{ch['action']} {old!r} -> {new!r}"
    if ch["action"] == "added":
        return f"added {new!r}" if new is not None else "added"
    if ch["action"] in ("removed", "emptied"):
        return f"{ch['action']} (was {old!r})" if old is not None else ch["action"]
    return ch["action"]
