"""The `modify:` action of a rule: an ordered list of tag edits.

    modify:
      - set: {InstitutionName: "Site A", "(0009,1001)": {vr: LO, value: "x"}}
      - remove: [OtherPatientIDs, RequestAttributesSequence.RequestedProcedureID]
      - copy: {from: AccessionNumber, to: StudyID}
      - map: {from: InstitutionName, to: InstitutionalDepartmentName,   # `to` defaults to `from`
              values: {"OLD HOSP": "NEW HOSP"}, file: lookup.csv, default: "UNKNOWN"}
      - prefix: {AccessionNumber: "EXT-"}
      - suffix: {StudyDescription: " (routed)"}
      - replace: {tag: StudyDescription, pattern: "^CT ", with: ""}

Paths are those of `match:` (`Seq.Tag` reaches every item, `Seq[0].Tag` one). An edit of
a tag that is absent does nothing (copy, map, prefix, suffix, replace) or creates it (set).
Values a rule overwrites are recorded in the Original Attributes Sequence (0400,0561,
reason COERCE), as PS3.3 C.12.1 asks of a system that changes identifying attributes;
removals are not recorded there, because removal is how sites drop what must not travel.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.tag import BaseTag
from pydicom.valuerep import validate_value

from gateway.changes import Change
from gateway.match import MatchError, TagPath

OPS = ("set", "remove", "copy", "map", "prefix", "suffix", "replace")
MODIFYING_SYSTEM = "dicom-gateway"


class ModifyError(ValueError):
    """A `modify:` entry that cannot be understood, or an edit an instance cannot take."""


@dataclass
class _Edit:
    """Changes made so far, and the elements they replaced (for Original Attributes)."""

    changes: list[Change]
    replaced: Dataset


Op = Callable[[Dataset, _Edit], None]


def parse(spec: Any, base: Path, where: str = "modify") -> list[Op]:
    """A `modify:` list -> edits to run in order; ModifyError names the entry and reason.
    `base`: the folder lookup files are relative to (the rules folder)."""
    if not isinstance(spec, list):
        raise ModifyError(f"{where}: expected a list of edits, e.g. - set: {{Tag: value}}")
    ops = []
    for i, item in enumerate(spec):
        at = f"{where}[{i}]"
        if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in OPS:
            raise ModifyError(f"{at}: expected one of {', '.join(OPS)} as the only key")
        name, arg = next(iter(item.items()))
        try:
            ops.append(_PARSERS[name](arg, base, f"{at}.{name}"))
        except MatchError as exc:
            raise ModifyError(f"{at}.{name}: {exc}") from None
    return ops


def apply(ops: list[Op], ds: Dataset) -> list[Change]:
    """Run the edits in place; record replaced values in Original Attributes Sequence."""
    edit = _Edit([], Dataset())
    for op in ops:
        op(ds, edit)
    if len(edit.replaced):
        item = Dataset()
        item.ModifiedAttributesSequence = [edit.replaced]
        item.AttributeModificationDateTime = dt.datetime.now().strftime("%Y%m%d%H%M%S")
        item.ModifyingSystem = MODIFYING_SYSTEM
        item.SourceOfPreviousValues = ""
        item.ReasonForTheAttributeModification = "COERCE"
        seq = ds.get("OriginalAttributesSequence")
        if seq is None:
            ds.OriginalAttributesSequence = [item]
        else:
            seq.value.append(item)
        edit.changes.append(Change("OriginalAttributesSequence (0400,0561)", "added", None, None))
    return edit.changes


# -- paths -------------------------------------------------------------------------------
def _path(arg: Any, where: str) -> TagPath:
    if not isinstance(arg, str):
        raise ModifyError(f"{where}: expected a tag keyword or (gggg,eeee)")
    return TagPath.parse(arg)


def _containers(ds: Dataset, path: TagPath) -> Iterator[tuple[Dataset, BaseTag, str]]:
    """Each dataset that holds the path's last tag, with the prefix naming it for a Change."""

    def walk(d: Dataset, steps: tuple, prefix: str) -> Iterator[tuple[Dataset, BaseTag, str]]:
        (tag, index), rest = steps[0], steps[1:]
        if not rest:
            yield d, tag, prefix
            return
        elem = d.get(tag)
        if elem is None or elem.VR != "SQ":
            return
        for i, item in enumerate(elem.value):
            if index is None or index == i:
                yield from walk(item, rest, f"{prefix}{_name(tag)}[{i}].")

    yield from walk(ds, path.steps, "")


def _name(tag: BaseTag) -> str:
    return keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"


def _label(prefix: str, tag: BaseTag) -> str:
    return f"{prefix}{_name(tag)} ({tag.group:04X},{tag.element:04X})"


def _text(elem: DataElement | None) -> str | None:
    if elem is None or elem.value is None:
        return None
    v = elem.value
    if isinstance(v, list | tuple) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v)


def _put(d: Dataset, tag: BaseTag, vr: str, value: Any, label: str, edit: _Edit) -> None:
    """Write one element; a replaced top-level value goes to Original Attributes."""
    old = d.get(tag)
    old_text = _text(old)
    if old is not None and "[" not in label and old.VR != "SQ" and tag not in edit.replaced:
        edit.replaced.add(DataElement(old.tag, old.VR, old.value))
    try:
        validate_value(vr, value, 2)  # pydicom.config.RAISE
    except ValueError as exc:
        raise ModifyError(f"{label}: {exc}") from None
    d.add(DataElement(tag, vr, value))
    edit.changes.append(Change(label, "replaced" if old is not None else "added", old_text, value))


# -- the edits ---------------------------------------------------------------------------
def _vr_and_value(tag: BaseTag, arg: Any, where: str) -> tuple[str, Any]:
    if isinstance(arg, dict):
        if set(arg) != {"vr", "value"}:
            raise ModifyError(f"{where}: expected {{vr: XX, value: ...}}")
        vr, value = str(arg["vr"]), arg["value"]
    else:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            raise ModifyError(
                f"{where}: a private or unknown tag needs {{vr: .., value: ..}}"
            ) from None
        value = arg
    if vr == "SQ" or (isinstance(value, dict)):
        raise ModifyError(f"{where}: sequences cannot be set; set their items' tags instead")
    if isinstance(value, list):
        value = [str(v) if vr not in _BINARY_NUMBERS else v for v in value]
    elif value is None:
        value = ""
    elif vr not in _BINARY_NUMBERS:
        value = str(value)
    try:
        validate_value(vr, value, 2)
    except ValueError as exc:
        raise ModifyError(f"{where}: {exc}") from None
    return vr, value


_BINARY_NUMBERS = {"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"}


def _mapping(arg: Any, where: str) -> dict:
    if not isinstance(arg, dict) or not arg:
        raise ModifyError(f"{where}: expected a mapping of tag: value")
    return arg


def _set(arg: Any, base: Path, where: str) -> Op:
    targets = []
    for key, value in _mapping(arg, where).items():
        path = _path(str(key), f"{where}.{key}")
        vr, v = _vr_and_value(path.steps[-1][0], value, f"{where}.{key}")
        targets.append((path, vr, v))

    def op(ds: Dataset, edit: _Edit) -> None:
        for path, vr, value in targets:
            for d, tag, prefix in _containers(ds, path):
                _put(d, tag, vr, value, _label(prefix, tag), edit)

    return op


def _remove(arg: Any, base: Path, where: str) -> Op:
    paths = [_path(a, where) for a in (arg if isinstance(arg, list) else [arg])]

    def op(ds: Dataset, edit: _Edit) -> None:
        for path in paths:
            for d, tag, prefix in _containers(ds, path):
                if tag in d:
                    old = _text(d[tag]) if d[tag].VR != "SQ" else None
                    del d[tag]
                    edit.changes.append(Change(_label(prefix, tag), "removed", old, None))

    return op


def _copy(arg: Any, base: Path, where: str) -> Op:
    spec = _mapping(arg, where)
    if set(spec) != {"from", "to"}:
        raise ModifyError(f"{where}: expected {{from: Tag, to: Tag}}")
    return _transform(spec["from"], spec["to"], lambda v: v, where)


def _transform(src: Any, dst: Any, fn: Callable[[str], str | None], where: str) -> Op:
    """Read `src` (top-level), write fn(value) to `dst`; fn returning None leaves it alone."""
    s, t = _path(src, f"{where}.from"), _path(dst, f"{where}.to")
    if len(s.steps) != 1 or len(t.steps) != 1:
        raise ModifyError(f"{where}: copy and map work on top-level tags")
    s_tag, t_tag = s.steps[0][0], t.steps[0][0]
    try:
        t_vr = dictionary_VR(t_tag)
    except KeyError:
        raise ModifyError(f"{where}.to: a private or unknown tag cannot be a target here") from None

    def op(ds: Dataset, edit: _Edit) -> None:
        value = _text(ds.get(s_tag))
        if value is None:
            return
        new = fn(value)
        if new is not None and new != _text(ds.get(t_tag)):
            _put(ds, t_tag, t_vr, new, _label("", t_tag), edit)

    return op


def _map(arg: Any, base: Path, where: str) -> Op:
    spec = _mapping(arg, where)
    unknown = set(spec) - {"from", "to", "values", "file", "default"}
    if unknown or "from" not in spec or not ({"values", "file"} & set(spec)):
        raise ModifyError(
            f"{where}: expected {{from: Tag, to: Tag, values: {{..}} or file: x.csv}}"
        )
    table = {str(k): str(v) for k, v in (spec.get("values") or {}).items()}
    if "file" in spec:
        table.update(_lookup_file(base / str(spec["file"]), f"{where}.file"))
    default = spec.get("default")
    return _transform(
        spec["from"],
        spec.get("to", spec["from"]),
        lambda v: table.get(v.strip(), None if default is None else str(default)),
        where,
    )


def _lookup_file(path: Path, where: str) -> dict[str, str]:
    """Two columns: value found, value written. A header row is allowed if it says so."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
    except OSError as exc:
        raise ModifyError(f"{where}: {exc.strerror}: {path}") from None
    for n, r in enumerate(rows, 1):
        if len(r) != 2:
            raise ModifyError(f"{where}: {path}: row {n}: expected two columns")
    return {r[0].strip(): r[1].strip() for r in rows}


def _affix(kind: str) -> Callable[[Any, Path, str], Op]:
    def parser(arg: Any, base: Path, where: str) -> Op:
        ops = []
        for key, text in _mapping(arg, where).items():
            add = str(text)
            fn = (lambda v, a=add: a + v) if kind == "prefix" else (lambda v, a=add: v + a)
            ops.append(_transform(key, key, fn, f"{where}.{key}"))

        def op(ds: Dataset, edit: _Edit) -> None:
            for o in ops:
                o(ds, edit)

        return op

    return parser


def _replace(arg: Any, base: Path, where: str) -> Op:
    spec = _mapping(arg, where)
    if set(spec) != {"tag", "pattern", "with"}:
        raise ModifyError(f"{where}: expected {{tag: Tag, pattern: regex, with: text}}")
    try:
        rx = re.compile(str(spec["pattern"]))
    except re.error as exc:
        raise ModifyError(f"{where}.pattern: {exc}") from None
    repl = str(spec["with"])
    return _transform(spec["tag"], spec["tag"], lambda v: rx.sub(repl, v), where)


_PARSERS: dict[str, Callable[[Any, Path, str], Op]] = {
    "set": _set,
    "remove": _remove,
    "copy": _copy,
    "map": _map,
    "prefix": _affix("prefix"),
    "suffix": _affix("suffix"),
    "replace": _replace,
}
