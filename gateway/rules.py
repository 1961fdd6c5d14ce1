"""Routing rules: YAML files in `rules_dir` decide what happens to each instance.

    load_rules(rules_dir, destinations) -> RuleSet     (ConfigError: `file: line N: reason`)
    RuleSet.evaluate(context) -> list[Verdict]         (every rule, matched or not, and why)
    RuleSet.route(context) -> list[Verdict]            (the rules that fire)

A rule:

    - name: ct-to-ai                  # unique across files
      enabled: true                   # false: loaded and checked, never fires
      match: {Modality: CT}           # gateway.match; empty or absent: every instance
      deidentify: {options: [retain_uids]}    # or {recipe: recipes/site.deid}
      modify: [{set: {InstitutionName: X}}]   # gateway.modify
      transcode: j2k-lossless         # gateway.transcode syntax name or UID, or a mapping
      forward: [ai]                   # destination names from config.yaml
      drop: false                     # true: the instance is consumed, sent nowhere
      stop: false                     # true: when this rule fires, later rules are not tried
      fallback: false                 # true: fires only when no other rule fired
      trigger: instance               # or {per: series|study, quiet_seconds: 30,
                                      #      max_wait_seconds: 600}

Every rule that matches fires, each on its own copy of the instance; actions run in the
order de-identify, modify, transcode, on delivery (`gateway.pipeline`), so a job is always
produced from the durable original. Files load in name order, rules in file order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.match import ARRIVAL_KEYS, Condition, Context, MatchError
from gateway.match import parse as parse_match

RULE_KEYS = [
    "name",
    "enabled",
    "match",
    "deidentify",
    "modify",
    "transcode",
    "forward",
    "drop",
    "stop",
    "fallback",
    "trigger",
]
ACTION_KEYS = ("deidentify", "modify", "transcode")


@dataclass(frozen=True)
class Trigger:
    """When a rule's jobs become deliverable: at once, or as a whole series/study once
    no instance of it has arrived for `quiet_seconds` (at most `max_wait_seconds` after
    the first)."""

    per: Literal["instance", "series", "study"] = "instance"
    quiet_seconds: float = 30.0
    max_wait_seconds: float = 600.0


@dataclass(frozen=True)
class Rule:
    name: str
    condition: Condition
    forward: tuple[str, ...] = ()
    actions: str | None = None  # JSON of the rule's action spec; None: send as received
    enabled: bool = True
    drop: bool = False
    stop: bool = False
    fallback: bool = False
    trigger: Trigger = Trigger()
    reads_tags: bool = True
    source: str = ""  # "file:line", for messages


@dataclass(frozen=True)
class Verdict:
    rule: Rule
    fired: bool
    why: str


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    files: tuple[str, ...] = field(default=())

    @property
    def reads_tags(self) -> bool:
        """Whether routing needs the header; when not, the worker skips reading it."""
        return any(r.reads_tags for r in self.rules if r.enabled)

    def evaluate(self, c: Context) -> list[Verdict]:
        """Every rule in order with whether it fires and why (what a dry run prints)."""
        out: list[Verdict] = []
        stopped: str | None = None
        for rule in self.rules:
            if not rule.enabled:
                out.append(Verdict(rule, False, "disabled"))
            elif stopped is not None:
                out.append(Verdict(rule, False, f"not tried: rule {stopped!r} has stop: true"))
            elif rule.fallback:
                out.append(Verdict(rule, False, ""))  # decided below, once all others are known
            else:
                ok, why = rule.condition(c)
                out.append(Verdict(rule, ok, why))
                if ok and rule.stop:
                    stopped = rule.name
        fired = any(v.fired for v in out)
        for i, v in enumerate(out):
            if v.rule.fallback and v.rule.enabled and not v.why:
                if fired:
                    out[i] = Verdict(v.rule, False, "fallback: another rule fired")
                else:
                    ok, why = v.rule.condition(c)
                    out[i] = Verdict(v.rule, ok, f"fallback: no other rule fired; {why}")
        return out

    def route(self, c: Context) -> list[Verdict]:
        return [v for v in self.evaluate(c) if v.fired]


def signature(rules_dir: Path) -> tuple[tuple[str, float, int], ...]:
    """Names, mtimes and sizes of every file under the rules folder (rule files, recipes,
    lookup tables): cheap change detection for reloads."""
    if not rules_dir.is_dir():
        return ()
    out = []
    for p in sorted(rules_dir.rglob("*")):
        try:
            st = p.stat()
        except OSError:  # removed meanwhile: the next look sees the change
            continue
        out.append((str(p.relative_to(rules_dir)), st.st_mtime, st.st_size))
    return tuple(out)


def load_rules(
    rules_dir: Path, destinations: Mapping[str, Any], *, deid_secret: bool = True
) -> RuleSet:
    """Load and validate every rule file; ConfigError lists one `file: line N: reason` each.

    `deid_secret`: whether config.yaml has a de-identification secret (rules that
    pseudonymise need one)."""
    if not rules_dir.is_dir():
        raise ConfigError([f"{rules_dir}: rules directory not found"])
    problems: list[str] = []
    rules: list[Rule] = []
    files = sorted(rules_dir.glob("*.y*ml"))
    names: dict[str, str] = {}
    for path in files:
        for item, line in _items(path, problems):
            where = f"{path}:{line}"
            rule, errs = _rule(item, rules_dir, destinations, deid_secret, where)
            problems.extend(f"{path}: line {line}: {e}" for e in errs)
            if rule is None:
                continue
            if rule.name in names:
                problems.append(
                    f"{path}: line {line}: rule name {rule.name!r} already used at {names[rule.name]}"
                )
            names[rule.name] = where
            rules.append(rule)
    if problems:
        raise ConfigError(problems)
    return RuleSet(tuple(rules), tuple(str(p) for p in files))


def load_configured(cfg: Config) -> RuleSet:
    """The rules of a configuration (its rules_dir, destinations and secret)."""
    return load_rules(cfg.rules_dir, cfg.destinations, deid_secret=bool(cfg.deidentify.secret))


class RulesWatch:
    """The rules in effect for a process: reloaded when anything under the rules folder
    changes; a set that fails to load is reported and the previous one stays in effect."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rules: RuleSet | None = None
        self.problems: list[str] = []  # why the current files were rejected; [] when loaded
        self._sig: tuple | None = None

    def refresh(self) -> bool:
        """Reload if the files changed; True when it tried (check `problems`)."""
        sig = signature(self.cfg.rules_dir)
        if sig == self._sig:
            return False
        self._sig = sig
        try:
            self.rules = load_configured(self.cfg)
            self.problems = []
        except ConfigError as exc:
            self.problems = exc.problems
        return True


def _items(path: Path, problems: list[str]) -> list[tuple[Any, int]]:
    """The rule mappings of one file with their line numbers; problems appended."""
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: line 1: cannot read: {exc}")
        return []
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problems.append(f"{path}: line {line}: invalid YAML: {getattr(exc, 'problem', exc)}")
        return []
    if data is None:
        return []
    if not isinstance(data, dict) or set(data) != {"rules"} or not isinstance(data["rules"], list):
        problems.append(f"{path}: line 1: expected a mapping with one key 'rules' holding a list")
        return []
    rule_nodes = next(v for k, v in node.value if k.value == "rules").value
    return [
        (item, n.start_mark.line + 1) for item, n in zip(data["rules"], rule_nodes, strict=True)
    ]


def _flag(item: dict, key: str, errs: list[str]) -> bool:
    value = item.get(key, key == "enabled")
    if not isinstance(value, bool):
        errs.append(f"{key}: expected true or false")
        return False
    return value


def _rule(
    item: Any, rules_dir: Path, destinations: Mapping[str, Any], deid_secret: bool, where: str
) -> tuple[Rule | None, list[str]]:
    if not isinstance(item, dict):
        return None, ["a rule must be a mapping"]
    errs = [
        f"unknown key {k!r} (known: {', '.join(RULE_KEYS)})" for k in item if k not in RULE_KEYS
    ]
    name = item.get("name")
    if isinstance(name, bool):  # YAML 1.1: off/on/yes/no are booleans
        errs.append(
            f"name: YAML read this name as {str(name).lower()} (yes/no/on/off are booleans"
            " there): quote it"
        )
    elif not isinstance(name, str) or not name.strip():
        errs.append("rule needs a 'name'")
    try:
        condition = parse_match(item.get("match"))
    except MatchError as exc:
        errs.append(str(exc))
        condition = parse_match({})
    forward = item.get("forward", [])
    if isinstance(forward, str):
        forward = [forward]
    if not isinstance(forward, list) or not all(isinstance(f, str) for f in forward):
        errs.append("forward: expected a list of destination names")
        forward = []
    for dest in forward:
        if dest not in destinations:
            known = ", ".join(sorted(destinations)) or "none configured"
            errs.append(f"forward: unknown destination {dest!r} (config.yaml has: {known})")
    drop, stop, fallback, enabled = (
        _flag(item, k, errs) for k in ("drop", "stop", "fallback", "enabled")
    )
    if drop and forward:
        errs.append("drop: a rule that drops cannot also forward")
    if not drop and not forward:
        errs.append("a rule needs 'forward' (destinations) or 'drop: true'")
    spec = {k: item[k] for k in ACTION_KEYS if k in item}
    if drop and spec:
        errs.append("drop: a rule that drops has nothing to de-identify, modify or transcode")
    if spec:
        from gateway.pipeline import ActionError, validate

        try:
            validate(spec, rules_dir, deid_secret)
        except ActionError as exc:
            errs.append(str(exc))
    trigger = _trigger(item.get("trigger", "instance"), errs)
    if errs:
        return None, errs
    return (
        Rule(
            name=str(name).strip(),
            condition=condition,
            forward=tuple(forward),
            actions=json.dumps(spec, sort_keys=True) if spec else None,
            enabled=enabled,
            drop=drop,
            stop=stop,
            fallback=fallback,
            trigger=trigger,
            reads_tags=_reads_tags(item.get("match")),
            source=where,
        ),
        [],
    )


def _reads_tags(spec: Any) -> bool:
    """Whether a match looks at any tag (so the worker must read the header)."""
    if not isinstance(spec, dict):
        return False
    for key, value in spec.items():
        if key in ("all", "any"):
            if any(_reads_tags(v) for v in value):
                return True
        elif key == "not":
            if _reads_tags(value):
                return True
        elif key != "time" and key not in ARRIVAL_KEYS:
            return True
    return False


def _trigger(spec: Any, errs: list[str]) -> Trigger:
    if spec == "instance":
        return Trigger()
    if not isinstance(spec, dict) or spec.get("per") not in ("series", "study"):
        errs.append("trigger: expected 'instance' or {per: series|study, quiet_seconds: N}")
        return Trigger()
    unknown = set(spec) - {"per", "quiet_seconds", "max_wait_seconds"}
    if unknown:
        errs.append(f"trigger: unknown key(s) {sorted(unknown)}")
    quiet = spec.get("quiet_seconds", Trigger.quiet_seconds)
    most = spec.get("max_wait_seconds", max(Trigger.max_wait_seconds, 20 * quiet))
    for key, v in (("quiet_seconds", quiet), ("max_wait_seconds", most)):
        if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
            errs.append(f"trigger.{key}: expected a number of seconds > 0")
            return Trigger()
    if most < quiet:
        errs.append("trigger.max_wait_seconds: must be at least quiet_seconds")
    return Trigger(spec["per"], float(quiet), float(most))
