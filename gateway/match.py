"""The `match:` language of a rule: conditions on tags and on how an instance arrived.

A condition is parsed once when the rules load (errors name the key and the reason) and
evaluated per instance to `(matched, why)`, so a dry run can say what held and what did
not. A missing tag never raises: the condition is false and `why` says it is absent.

    match:
      Modality: CT                          # equals; * and ? make it a DICOM wildcard
      StudyDescription: {regex: "(?i)chest"}
      ImageType: {in: [LOCALIZER, SCOUT]}   # multi-valued: any one value may match
      SliceThickness: {range: [0.5, 2.0]}   # numbers, or dates (YYYYMMDD), either end null
      AccessionNumber: {exists: true}       # {absent: true} for the opposite
      ReferencedStudySequence.ReferencedSOPInstanceUID: "1.2.3*"   # any item; Seq[0].X: one
      calling_ae: [CT1, CT2]                # also: called_ae, source (address or CIDR),
      sop_class: CTImageStorage             #   sop_class (keyword or UID), transfer_syntax
      time: {from: "08:00", to: "18:00", days: [mon, tue, wed, thu, fri]}
      any: [{Modality: MR}, {not: {BodyPartExamined: HEAD}}]    # also all: [...]
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID_dictionary

_TAG_RE = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")
_STEP_RE = re.compile(r"^(.+?)(?:\[(\d+)\])?$")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ARRIVAL_KEYS = {"calling_ae", "called_ae", "source", "sop_class", "transfer_syntax"}
OPERATORS = {"equals", "wildcard", "regex", "in", "range", "exists", "absent"}


@dataclass(frozen=True)
class Context:
    """What conditions look at: the header (no pixels) and how the instance arrived."""

    dataset: Dataset
    calling_ae: str = ""
    called_ae: str = ""
    source: str = ""
    sop_class: str = ""
    transfer_syntax: str = ""
    received_at: float = 0.0  # epoch seconds; time windows use the local time of receipt


Condition = Callable[[Context], tuple[bool, str]]


class MatchError(ValueError):
    """A `match:` entry that cannot be understood; the message names the key."""


# -- tags and paths ------------------------------------------------------------------------
def parse_tag(key: str) -> BaseTag | None:
    """`PatientID`, `(0010,0020)` or `00100020` -> tag; None when neither."""
    m = _TAG_RE.match(key.strip())
    if m:
        return Tag(int(m.group(1), 16), int(m.group(2), 16))
    t = tag_for_keyword(key.strip())
    return Tag(t) if t is not None else None


@dataclass(frozen=True)
class TagPath:
    """`Seq.Item`, `Seq[0].Item`: sequence steps (item index or any item), then a tag."""

    written: str
    steps: tuple[tuple[BaseTag, int | None], ...]  # (tag, item index or None: every item)

    @classmethod
    def parse(cls, written: str) -> TagPath:
        steps = []
        for part in written.split("."):
            m = _STEP_RE.match(part.strip())
            tag = parse_tag(m.group(1)) if m else None
            if tag is None:
                what = repr(written) if part == written else f"{written!r}: {part!r}"
                raise MatchError(f"{what} is not a DICOM keyword or (gggg,eeee) tag")
            steps.append((tag, int(m.group(2)) if m and m.group(2) is not None else None))
        if steps[-1][1] is not None:
            raise MatchError(f"{written!r}: an item index must be followed by a tag")
        return cls(written, tuple(steps))

    def values(self, ds: Dataset) -> Iterator[Any]:
        """The element values this path reaches (several when a step means every item)."""
        yield from _walk(ds, self.steps)


def _walk(ds: Dataset, steps: tuple[tuple[BaseTag, int | None], ...]) -> Iterator[Any]:
    (tag, index), rest = steps[0], steps[1:]
    try:
        elem = ds.get(tag)
    except Exception:  # an undecodable value is as good as absent for matching
        return
    if elem is None:
        return
    if not rest:
        if elem.value is not None and elem.value != "":
            yield elem.value
        return
    if elem.VR != "SQ" or not elem.value:
        return
    items = elem.value if index is None else elem.value[index : index + 1]
    for item in items:
        yield from _walk(item, rest)


def _texts(value: Any) -> list[str]:
    """The ways a value can match: each single value, then the whole multi-value joined."""
    if isinstance(value, bytes):
        return []
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        parts = [str(v) for v in value]
        return [*parts, "\\".join(parts)] if len(parts) > 1 else parts
    return [str(value)]


# -- value tests -------------------------------------------------------------------------
def _dicom_wildcard(pattern: str) -> re.Pattern[str]:
    """DICOM wildcard (PS3.4 C.2.2.2.4): `*` any run, `?` one character; nothing else special."""
    out = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"(?s:{out})\\Z")


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _as_date(text: str) -> str | None:
    """DA/DT or ISO text -> YYYYMMDD[...] for ordering; None when it is not a date."""
    t = text.strip().replace("-", "")
    return t if re.fullmatch(r"\d{8}(\d{0,6}(\.\d+)?)?", t) else None


ValueTest = Callable[[str], bool]


def _value_test(key: str, spec: Any) -> tuple[ValueTest | None, str, bool | None]:
    """-> (test of one text value, description, or for exists/absent: wanted presence)."""
    if isinstance(spec, list):
        spec = {"in": spec}
    if not isinstance(spec, dict):
        if isinstance(spec, bool) or spec is None:
            raise MatchError(f"{key}: write a value, a list, or one of {sorted(OPERATORS)}")
        text = str(spec)
        if isinstance(spec, str) and ("*" in text or "?" in text):
            spec = {"wildcard": text}
        else:
            spec = {"equals": spec}
    if len(spec) != 1 or next(iter(spec)) not in OPERATORS:
        raise MatchError(f"{key}: expected one operator of {sorted(OPERATORS)}, got {list(spec)}")
    op, arg = next(iter(spec.items()))
    if op in ("exists", "absent"):
        if not isinstance(arg, bool):
            raise MatchError(f"{key}: {op} takes true or false")
        return None, op, arg if op == "exists" else not arg
    if op == "equals":
        if isinstance(arg, int | float) and not isinstance(arg, bool):
            num = float(arg)
            return (lambda t: _as_number(t) == num), f"= {arg}", None
        want = str(arg)
        return (lambda t: t.strip() == want), f"= {want!r}", None
    if op == "wildcard":
        rx = _dicom_wildcard(str(arg))
        return (lambda t: rx.match(t.strip()) is not None), f"like {arg!r}", None
    if op == "regex":
        try:
            rx2 = re.compile(str(arg))
        except re.error as exc:
            raise MatchError(f"{key}: regex {arg!r}: {exc}") from None
        return (lambda t: rx2.search(t) is not None), f"~ /{arg}/", None
    if op == "in":
        if not isinstance(arg, list) or not arg:
            raise MatchError(f"{key}: 'in' takes a non-empty list")
        tests = [_value_test(key, a)[0] for a in arg]
        return (lambda t: any(f(t) for f in tests if f)), f"in {arg}", None
    return _range_test(key, arg), f"in range {arg}", None


def _range_test(key: str, arg: Any) -> ValueTest:
    if not isinstance(arg, list) or len(arg) != 2 or arg == [None, None]:
        raise MatchError(f"{key}: range takes [low, high] (either may be null)")
    lo, hi = arg
    bounds = [b for b in arg if b is not None]
    if all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds):

        def numeric(t: str) -> bool:
            v = _as_number(t)
            return v is not None and (lo is None or v >= lo) and (hi is None or v <= hi)

        return numeric
    dates = [_as_date(str(b)) for b in bounds]
    if None in dates:
        raise MatchError(f"{key}: range bounds must be numbers or dates (YYYYMMDD), got {arg}")
    dlo = _as_date(str(lo)) if lo is not None else None
    dhi = _as_date(str(hi)) if hi is not None else None

    def dated(t: str) -> bool:
        v = _as_date(t)
        if v is None:
            return False
        # compare on the bounds' precision: a DT on the high day still counts
        return (dlo is None or v[: len(dlo)] >= dlo) and (dhi is None or v[: len(dhi)] <= dhi)

    return dated


# -- conditions ------------------------------------------------------------------------
def parse(spec: Any, where: str = "match") -> Condition:
    """A `match:` mapping -> one condition (all entries must hold). Raises MatchError."""
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise MatchError(f"{where}: expected a mapping of conditions")
    parts = [_entry(where, str(k), v) for k, v in spec.items()]
    if not parts:
        return lambda c: (True, "everything (empty match)")
    return _all(parts)


def _all(parts: list[Condition]) -> Condition:
    def cond(c: Context) -> tuple[bool, str]:
        whys = []
        for p in parts:
            ok, why = p(c)
            if not ok:
                return False, why
            whys.append(why)
        return True, "; ".join(whys)

    return cond


def _entry(parent: str, key: str, value: Any) -> Condition:
    where = f"{parent}.{key}"
    if key in ("all", "any"):
        if not isinstance(value, list) or not value:
            raise MatchError(f"{where}: expected a non-empty list of match mappings")
        subs = [parse(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return _all(subs) if key == "all" else _any(subs)
    if key == "not":
        inner = parse(value, where)
        return lambda c: (lambda r: (not r[0], f"not ({r[1]})"))(inner(c))
    if key == "time":
        return _time_window(where, value)
    if key in ARRIVAL_KEYS:
        return _arrival(where, key, value)
    try:
        path = TagPath.parse(key)
    except MatchError as exc:
        special = ", ".join(["all", "any", "not", "time", *sorted(ARRIVAL_KEYS)])
        raise MatchError(f"{parent}: {exc}, nor one of {special}") from None
    return _tag_condition(where, path, value)


def _any(subs: list[Condition]) -> Condition:
    def cond(c: Context) -> tuple[bool, str]:
        whys = []
        for s in subs:
            ok, why = s(c)
            if ok:
                return True, why
            whys.append(why)
        return False, "none of: " + " | ".join(whys)

    return cond


def _tag_condition(where: str, path: TagPath, spec: Any) -> Condition:
    test, desc, presence = _value_test(where, spec)
    name = path.written

    def cond(c: Context) -> tuple[bool, str]:
        values = list(path.values(c.dataset))
        if presence is not None:
            ok = bool(values) == presence
            state = "present" if values else "absent"
            return ok, f"{name} is {state}"
        if not values:
            return False, f"{name} is absent"
        texts = [t for v in values for t in _texts(v)]
        if test is not None and any(test(t) for t in texts):
            return True, f"{name} {desc}"
        shown = texts[-1] if texts else "binary"
        return False, f"{name} is {shown!r}, not {desc}"

    return cond


def uid_for(name: str) -> str | None:
    """`CTImageStorage`, `ExplicitVRLittleEndian` or a UID -> the UID; None when pydicom knows neither."""
    if re.fullmatch(r"[0-9.]+", name):
        return name
    for uid, entry in UID_dictionary.items():
        if entry[4] == name:
            return uid
    return None


def _arrival(where: str, key: str, value: Any) -> Condition:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise MatchError(f"{where}: expected a name or a list of names")
    if key == "source":
        try:
            nets = [ipaddress.ip_network(v, strict=False) for v in values]
        except ValueError as exc:
            raise MatchError(f"{where}: {exc}") from None

        def in_nets(c: Context) -> tuple[bool, str]:
            try:
                ip = ipaddress.ip_address(c.source)
            except ValueError:
                return False, f"source {c.source!r} is not an address"
            ok = any(ip in n for n in nets)
            return ok, f"source {c.source} {'in' if ok else 'not in'} {', '.join(values)}"

        return in_nets
    if key in ("sop_class", "transfer_syntax"):
        uids = []
        for v in values:
            uid = uid_for(v)
            if uid is None:
                raise MatchError(f"{where}: {v!r} is neither a UID nor a name pydicom knows")
            uids.append(uid)
        wanted = set(uids)

        def uid_in(c: Context) -> tuple[bool, str]:
            actual = getattr(c, key)
            ok = actual in wanted
            return ok, f"{key} {actual} {'in' if ok else 'not in'} {', '.join(values)}"

        return uid_in
    patterns = [_dicom_wildcard(v) for v in values]

    def ae(c: Context) -> tuple[bool, str]:
        actual = getattr(c, key)
        ok = any(p.match(actual) for p in patterns)
        return ok, f"{key} {actual!r} {'matches' if ok else 'not in'} {values}"

    return ae


def _clock(where: str, text: Any) -> dt.time:
    try:
        return dt.time.fromisoformat(str(text))
    except ValueError:
        raise MatchError(f"{where}: {text!r} is not a time of day (HH:MM)") from None


def _time_window(where: str, spec: Any) -> Condition:
    if not isinstance(spec, dict) or not set(spec) <= {"from", "to", "days"} or not spec:
        raise MatchError(f"{where}: expected {{from: 'HH:MM', to: 'HH:MM', days: [mon, ...]}}")
    start = _clock(f"{where}.from", spec.get("from", "00:00"))
    end = _clock(f"{where}.to", spec.get("to", "23:59:59.999999"))
    days = spec.get("days", list(DAYS))
    if not isinstance(days, list) or not all(str(d).lower()[:3] in DAYS for d in days):
        raise MatchError(f"{where}.days: expected day names, e.g. [mon, tue]")
    wanted = {DAYS.index(str(d).lower()[:3]) for d in days}

    def in_window(c: Context) -> tuple[bool, str]:
        at = dt.datetime.fromtimestamp(c.received_at)
        now, day = at.time(), at.weekday()
        if start <= end:
            ok = start <= now <= end and day in wanted
        else:  # overnight window: the part after midnight belongs to the previous day
            ok = (now >= start and day in wanted) or (now <= end and (day - 1) % 7 in wanted)
        when = f"{DAYS[day]} {now.strftime('%H:%M')}"
        return ok, f"received {when} {'inside' if ok else 'outside'} the time window"

    return in_window
