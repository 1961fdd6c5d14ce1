"""Routing rules: YAML files in `rules_dir` decide where each instance goes.

The seam the rule engine grows behind:
    load_rules(rules_dir, destinations) -> RuleSet       (ConfigError: file, line, reason)
    RuleSet.route(candidate) -> list[Decision]           (every matching rule, in order)

Today a rule has `name`, `match` (empty: everything; else tag -> exact value) and
`forward` (destination names from config.yaml). Files load in name order, rules in file
order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.tag import BaseTag, Tag

from gateway.errors import ConfigError

RULE_KEYS = {"name", "match", "forward"}
_TAG_RE = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")


@dataclass(frozen=True)
class Candidate:
    """What a rule can look at: the header (no pixels) and how the instance arrived."""

    dataset: Dataset
    calling_ae: str = ""
    called_ae: str = ""
    source: str = ""


@dataclass(frozen=True)
class Decision:
    rule: str
    destinations: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class Rule:
    name: str
    match: tuple[tuple[BaseTag, str, str], ...]  # (tag, as written, expected value)
    forward: tuple[str, ...]

    def matches(self, c: Candidate) -> tuple[bool, str]:
        for tag, written, expected in self.match:
            elem = c.dataset.get(tag)
            if elem is None or elem.value is None:
                return False, f"{written} is absent"
            actual = _text(elem.value)
            if actual != expected:
                return False, f"{written} is {actual!r}, not {expected!r}"
        return True, "match: {}" if not self.match else "all tags equal"


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    files: tuple[str, ...] = field(default=())

    @property
    def reads_tags(self) -> bool:
        """Whether routing needs the header; when not, the worker skips reading it."""
        return any(rule.match for rule in self.rules)

    def route(self, c: Candidate) -> list[Decision]:
        out = []
        for rule in self.rules:
            ok, why = rule.matches(c)
            if ok:
                out.append(Decision(rule.name, rule.forward, why))
        return out


def _text(value: Any) -> str:
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def parse_tag(key: str) -> BaseTag | None:
    m = _TAG_RE.match(key.strip())
    if m:
        return Tag(int(m.group(1), 16), int(m.group(2), 16))
    t = tag_for_keyword(key)
    return Tag(t) if t is not None else None


def signature(rules_dir: Path) -> tuple[tuple[str, float, int], ...]:
    """Names, mtimes and sizes of the rule files: cheap change detection for reloads."""
    if not rules_dir.is_dir():
        return ()
    out = []
    for p in sorted(rules_dir.glob("*.y*ml")):
        st = p.stat()
        out.append((p.name, st.st_mtime, st.st_size))
    return tuple(out)


def load_rules(rules_dir: Path, destinations: Mapping[str, Any]) -> RuleSet:
    """Load and validate every rule file; ConfigError lists one `file: line N: reason` each."""
    if not rules_dir.is_dir():
        raise ConfigError([f"{rules_dir}: rules directory not found"])
    problems: list[str] = []
    rules: list[Rule] = []
    files = sorted(rules_dir.glob("*.y*ml"))
    names: dict[str, str] = {}
    for path in files:
        for rule, line, errs in _read_file(path, destinations):
            problems.extend(f"{path}: line {line}: {e}" for e in errs)
            if rule is None:
                continue
            if rule.name in names:
                problems.append(
                    f"{path}: line {line}: rule name {rule.name!r} already used in {names[rule.name]}"
                )
            names[rule.name] = str(path)
            rules.append(rule)
    if problems:
        raise ConfigError(problems)
    return RuleSet(tuple(rules), tuple(str(p) for p in files))


def _read_file(path: Path, destinations: Mapping[str, Any]):
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        yield (
            None,
            (mark.line + 1 if mark else 1),
            [f"invalid YAML: {getattr(exc, 'problem', exc)}"],
        )
        return
    if data is None:
        return
    if not isinstance(data, dict) or set(data) != {"rules"} or not isinstance(data["rules"], list):
        yield None, 1, ["expected a mapping with one key 'rules' holding a list"]
        return
    rule_nodes = next(v for k, v in node.value if k.value == "rules").value
    for item, item_node in zip(data["rules"], rule_nodes, strict=True):
        line = item_node.start_mark.line + 1
        yield _rule_or_errors(item, line, destinations)


def _rule_or_errors(item: Any, line: int, destinations: Mapping[str, Any]):
    errs: list[str] = []
    if not isinstance(item, dict):
        return None, line, ["a rule must be a mapping"]
    for key in sorted(set(item) - RULE_KEYS):
        errs.append(f"unknown key {key!r} (known: {', '.join(sorted(RULE_KEYS))})")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        errs.append("rule needs a 'name'")
    match = item.get("match", {})
    parsed: list[tuple[BaseTag, str, str]] = []
    if not isinstance(match, dict):
        errs.append("'match' must be a mapping of tag: value")
    else:
        for key, value in match.items():
            tag = parse_tag(str(key))
            if tag is None:
                errs.append(f"match: {key!r} is not a DICOM keyword or (gggg,eeee) tag")
            elif isinstance(value, dict | list):
                errs.append(f"match: {key}: only exact values are supported here")
            else:
                parsed.append((tag, str(key), "" if value is None else str(value)))
    forward = item.get("forward", [])
    if isinstance(forward, str):
        forward = [forward]
    if not isinstance(forward, list) or not all(isinstance(f, str) for f in forward):
        errs.append("'forward' must be a list of destination names")
        forward = []
    for dest in forward:
        if dest not in destinations:
            known = ", ".join(sorted(destinations)) or "none configured"
            errs.append(f"forward: unknown destination {dest!r} (config.yaml has: {known})")
    if errs:
        return None, line, errs
    return Rule(str(name), tuple(parsed), tuple(forward)), line, []
