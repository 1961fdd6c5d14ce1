"""C-FIND over the archive index (PS3.4 C.2.2.2, C.4.1), and what C-MOVE / C-GET retrieve.

Roots: PATIENT (levels PATIENT, STUDY, SERIES, IMAGE) and STUDY (STUDY, SERIES, IMAGE; patient
attributes are study attributes there). Hierarchical: an identifier must carry the unique
key of every level above its QueryRetrieveLevel. A key of a level above may also be any
other attribute of that level: it is matched and returned too (a relational courtesy).

Matching, per key of the identifier:
    universal      zero length, or a lone `*`: no condition, the value is returned
    single value   exact and case-sensitive; a backslash list matches any of its values
    wildcard       `*` and `?` on AE CS LO LT PN SH ST UC UR UT (not on UIDs, dates, numbers)
    range          DA TM DT: `a-b`, `-b`, `a-`; a bound stands for the interval of its
                   precision (TM `10` upper bound is 10:59:59.999999)
    UID list       backslash-separated UIDs
    sequence       one item whose keys must all match one stored item: any sequence the
                   index keeps (e.g. RequestAttributesSequence with RequestedProcedureID /
                   ScheduledProcedureStepID, ReferencedStudySequence, ProcedureCodeSequence,
                   IssuerOfAccessionNumberSequence, OtherPatientIDsSequence)
    person names   literal on the whole value; `fuzzy_names` makes them case-insensitive
                   and lets a query without `=` match any one component group (`山田^太郎`
                   finds `Yamada^Tarou=山田^太郎=やまだ^たろう`)
A multi-valued stored attribute matches when any of its values does.

The keys with a column (`index.COLUMNS`) are matched in SQL on indexes; the others, and
person names in fuzzy mode, in Python against the level's stored copy. Responses carry the
requested keys, the unique keys of the query level and the levels above, the
QueryRetrieveLevel and the stored Specific Character Set (ISO_IR 192 when a value will not
encode in it): values are Unicode, so writing the dataset encodes them in that set.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydicom import Dataset
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from gateway.archive import levels
from gateway.archive.index import COLUMNS, STORED_SELECT, ArchiveIndex, StoredInstance
from gateway.archive.levels import IMAGE, PATIENT, SERIES, STUDY

Root = Literal["PATIENT", "STUDY"]

IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
CHUNK = 256  # rows fetched at a time once the matching ids are known
_MAX = "\U0010ffff"  # sorts after any text that starts with the same prefix

ROOT_LEVELS: dict[str, tuple[str, ...]] = {
    "PATIENT": (PATIENT, STUDY, SERIES, IMAGE),
    "STUDY": (STUDY, SERIES, IMAGE),
}
DEPTH = {level: n for n, level in enumerate(levels.LEVELS)}
UNIQUE = {
    PATIENT: "PatientID",
    STUDY: "StudyInstanceUID",
    SERIES: "SeriesInstanceUID",
    IMAGE: "SOPInstanceUID",
}
_ALIAS = {PATIENT: "p", STUDY: "s", SERIES: "r", IMAGE: "i"}
_FROM = {
    PATIENT: "archive_patients p",
    STUDY: "archive_studies s JOIN archive_patients p ON p.id = s.patient_ref",
    SERIES: "archive_series r JOIN archive_studies s ON s.id = r.study_ref"
    " JOIN archive_patients p ON p.id = s.patient_ref",
    IMAGE: "archive_instances i JOIN archive_series r ON r.id = i.series_ref"
    " JOIN archive_studies s ON s.id = r.study_ref JOIN archive_patients p ON p.id = s.patient_ref",
}
# Return keys the index computes: keyword -> (level, SQL expression).
COMPUTED: dict[str, tuple[str, str]] = {
    "NumberOfPatientRelatedStudies": (PATIENT, "p.n_studies"),
    "NumberOfPatientRelatedSeries": (PATIENT, "p.n_series"),
    "NumberOfPatientRelatedInstances": (PATIENT, "p.n_instances"),
    "ModalitiesInStudy": (STUDY, "s.modalities"),
    "NumberOfStudyRelatedSeries": (STUDY, "s.n_series"),
    "NumberOfStudyRelatedInstances": (STUDY, "s.n_instances"),
    "SOPClassesInStudy": (
        STUDY,
        "(SELECT group_concat(c, '\\') FROM (SELECT DISTINCT i2.sop_class_uid AS c"
        " FROM archive_series r2 JOIN archive_instances i2 ON i2.series_ref = r2.id"
        " WHERE r2.study_ref = s.id ORDER BY c))",
    ),
    "NumberOfSeriesRelatedInstances": (SERIES, "r.n_instances"),
}
INSTANCE_AVAILABILITY = "InstanceAvailability"  # every level: the archive is on line
_WILDCARD_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
_SINGLE_VALUED_VRS = {"LT", "ST", "UT", "UR"}
_RAW_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
            "UI", "UR", "UT"}  # fmt: skip  # a backslash is text there, not a delimiter
_SKIPPED = {levels.SPECIFIC_CHARACTER_SET, levels.QUERY_RETRIEVE_LEVEL}


class QueryError(Exception):
    """An identifier the standard says to refuse: answer with `status`, `reason` as comment."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"0x{status:04X}: {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class _Key:
    """One attribute of the identifier."""

    tag: int
    keyword: str
    vr: str
    level: str
    text: str  # the query value as Unicode text; "" for universal matching
    item: Dataset | None = None  # a sequence key's query item (None: universal)

    @property
    def universal(self) -> bool:
        if self.vr == "SQ":
            return self.item is None or all(_key(e).universal for e in self.item)
        return self.text in ("", "*")


def _key(elem: DataElement) -> _Key:
    tag = int(elem.tag)
    keyword = elem.keyword or keyword_for_tag(tag)
    vr = elem.VR
    level = COMPUTED[keyword][0] if keyword in COMPUTED else levels.level_of(tag)
    if vr == "SQ":
        items = elem.value or []
        return _Key(tag, keyword, vr, level, "", items[0] if len(items) else None)
    value = elem.value
    if value is None:
        text = ""
    elif isinstance(value, list | MultiValue):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    return _Key(tag, keyword, vr, level, text.strip())


def _level(root: str, identifier: Dataset) -> str:
    if root not in ROOT_LEVELS:
        raise QueryError(UNABLE_TO_PROCESS, f"unknown information model root {root!r}")
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip()
    if not level:
        raise QueryError(IDENTIFIER_DOES_NOT_MATCH, "QueryRetrieveLevel (0008,0052) missing")
    if level not in ROOT_LEVELS[root]:
        raise QueryError(
            IDENTIFIER_DOES_NOT_MATCH,
            f"QueryRetrieveLevel {level!r} is not a level of the {root.title()} Root model",
        )
    return level


def _chain(root: str, level: str) -> tuple[str, ...]:
    """The root's levels from the top down to `level`."""
    chain = ROOT_LEVELS[root]
    return chain[: chain.index(level) + 1]


def _require_unique_keys(identifier: Dataset, levels_: tuple[str, ...], what: str) -> None:
    for level in levels_:
        keyword = UNIQUE[level]
        if not levels.text(identifier, keyword):
            raise QueryError(
                IDENTIFIER_DOES_NOT_MATCH,
                f"{keyword} missing or empty: a {what} must carry the unique key of the"
                f" {level} level",
            )


# -- matching ----------------------------------------------------------------------------
def _alternatives(key: _Key) -> list[str]:
    if key.vr in _SINGLE_VALUED_VRS:
        return [key.text]
    return [v.strip() for v in key.text.split("\\")]


def _is_wildcard(key: _Key, value: str) -> bool:
    return key.vr in _WILDCARD_VRS and ("*" in value or "?" in value)


def _prefix(pattern: str) -> str:
    return re.split(r"[*?]", pattern, maxsplit=1)[0]


def _bounds(value: str) -> tuple[str, str] | None:
    """A range's (low, high) text, either possibly empty; None for a single value."""
    if "-" not in value:
        return None
    low, _, high = value.partition("-")
    return low.strip(), high.strip()


def _temporal(vr: str, value: str, *, high: bool) -> str:
    if vr == "DA":
        return levels.date_key(value)
    if vr == "TM":
        return levels.time_key(value, high=high)
    return levels.datetime_key(value, high=high)


def _sql(key: _Key, column: str, fuzzy: bool) -> tuple[str, list[Any]] | None:
    """The SQL condition for a key with a column; None when Python decides alone."""
    if key.vr == "TM":
        return None  # stored as sent; compared by levels.time_key in Python
    if key.vr == "PN" and fuzzy:  # a superset in SQL; Python decides (component groups)
        query = _trim_pn(levels.fold(key.text))
        prefix = _prefix(query)
        # Only a component group at the start (the alphabetic one) can use the index; an
        # ideographic or phonetic query may match a later group: its literal parts must
        # still be somewhere in the name.
        if "=" not in query and prefix and prefix.isascii():
            return f"{column}_fold >= ? AND {column}_fold < ?", [prefix, prefix + _MAX]
        parts = [p for p in re.split(r"[*?]", query) if p]
        if not parts:
            return None
        return " AND ".join(f"instr({column}_fold, ?) > 0" for _ in parts), parts
    if key.vr == "UI":
        values = _alternatives(key)
        return f"{column} IN ({','.join('?' * len(values))})", values
    if key.vr == "DA":
        bounds = _bounds(key.text)
        if bounds is None:
            return f"{column} = ?", [levels.date_key(key.text)]
        low, high = bounds
        parts, args = [f"{column} != ''"], []
        if low:
            parts.append(f"{column} >= ?")
            args.append(levels.date_key(low))
        if high:
            parts.append(f"{column} <= ?")
            args.append(levels.date_key(high))
        return " AND ".join(parts), args
    parts, args = [], []
    for value in _alternatives(key):
        if _is_wildcard(key, value):
            prefix = _prefix(value)
            glob = value.replace("[", "[[]")  # GLOB's only special character DICOM lacks
            if prefix:
                parts.append(f"({column} >= ? AND {column} < ? AND {column} GLOB ?)")
                args += [prefix, prefix + _MAX, glob]
            else:
                parts.append(f"{column} GLOB ?")
                args.append(glob)
        else:
            parts.append(f"{column} = ?")
            args.append(value)
    return f"({' OR '.join(parts)})", args


def _pattern(value: str) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value)
    return re.compile(body, re.DOTALL)


def _trim_pn(name: str) -> str:
    """A person name without trailing empty components (`Doe^John^^` is `Doe^John`)."""
    return "=".join(g.rstrip("^ ") for g in name.split("=")).rstrip("=")


def _match_value(key: _Key, query: str, stored: str, fuzzy: bool) -> bool:
    vr = key.vr
    if vr in ("DA", "TM", "DT"):
        if not stored:
            return False
        bounds = _bounds(query) if vr != "DT" or query.count("-") == 1 else None
        low, high = bounds if bounds else (query, query)
        value = _temporal(vr, stored, high=False)
        if low and value < _temporal(vr, low, high=False):
            return False
        return not (high and value > _temporal(vr, high, high=True))
    if vr == "PN" and fuzzy:
        query, stored = _trim_pn(levels.fold(query)), _trim_pn(levels.fold(stored))
        candidates = [stored] if "=" in query else [stored, *stored.split("=")]
        pattern = _pattern(query)
        return any(pattern.fullmatch(c) for c in candidates)
    if _is_wildcard(key, query):
        return _pattern(query).fullmatch(stored) is not None
    if vr in ("IS", "DS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"):
        try:
            return float(query) == float(stored)
        except ValueError:
            return query == stored
    return query == stored


def _matches(key: _Key, stored: list[str], fuzzy: bool) -> bool:
    """Whether any stored value matches any of the query's alternatives."""
    queries = [key.text] if key.vr in ("DA", "TM", "DT") else _alternatives(key)
    return any(_match_value(key, q, s.strip(), fuzzy) for q in queries for s in stored)


def _json_values(element: dict[str, Any] | None) -> list[str]:
    if not element:
        return []
    if element.get("vr") == "PN":
        return [levels.pn_text(v) for v in element.get("Value", [])]
    return [str(v) for v in element.get("Value", []) if v is not None]


def _matches_json(key: _Key, element: dict[str, Any] | None, fuzzy: bool) -> bool:
    if key.vr != "SQ":
        return _matches(key, _json_values(element), fuzzy)
    return bool(_matching_items(key, element, fuzzy))


def _matching_items(key: _Key, element: dict[str, Any] | None, fuzzy: bool) -> list[dict]:
    """The stored items of a sequence in which every key of the query item matches."""
    assert key.item is not None
    subkeys = [k for k in (_key(e) for e in key.item) if not k.universal]
    return [
        item
        for item in (element or {}).get("Value", [])
        if all(_matches_json(k, item.get(f"{k.tag:08X}"), fuzzy) for k in subkeys)
    ]


# -- responses ---------------------------------------------------------------------------
def _encodable(value: str, codecs: list[str]) -> bool:
    return all(any(_encodes(ch, codec) for codec in codecs) for ch in value if not ch.isascii())


def _encodes(ch: str, codec: str) -> bool:
    try:
        ch.encode(codec)
    except UnicodeError:
        return False
    return True


def _raw(tag: int, vr: str, text: str) -> RawDataElement:
    data = text.encode("ascii")
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    return RawDataElement(BaseTag(tag), vr, len(data), data, 0, False, True, True, False)


def _element(key: _Key, value: Any) -> DataElement | RawDataElement:
    """A response element from a column's or the index's value (None: zero length).

    ASCII text goes in encoded (a raw element, the same bytes in every character set):
    a response built so costs a fifth of DataElement's conversion and validation, which
    counts when a query matches thousands of studies."""
    if value is None or value == "":
        return DataElement(key.tag, "SQ", []) if key.vr == "SQ" else _raw(key.tag, key.vr, "")
    text = value if isinstance(value, str) else str(value)
    if key.vr in _RAW_VRS and text.isascii():
        return _raw(key.tag, key.vr, text)
    if "\\" in text and key.vr not in _SINGLE_VALUED_VRS:
        value = text.split("\\")
    return DataElement(key.tag, key.vr, value)


def _json_element(key: _Key, element: dict[str, Any] | None, fuzzy: bool) -> DataElement:
    if not element or "Value" not in element:
        return _element(key, None)
    if key.vr == "SQ" and key.item is not None and len(key.item):
        items = element["Value"] if key.universal else _matching_items(key, element, fuzzy)
        wanted = {f"{int(e.tag):08X}" for e in key.item}
        element = {
            "vr": "SQ",
            "Value": [{t: v for t, v in i.items() if t in wanted} for i in items],
        }
    tag = f"{key.tag:08X}"
    return Dataset.from_json({tag: element})[key.tag]


@dataclass
class _Plan:
    level: str
    sql: str
    args: list[Any]
    select: list[str]  # "expr AS name" for the second pass
    python: list[_Key]  # keys matched in Python
    returned: list[_Return]
    attrs_levels: set[str]


@dataclass(frozen=True)
class _Return:
    """Where a response's element comes from, decided once per query."""

    key: _Key
    column: str | None = None  # the second pass's column, for a column or computed value
    stored: bool = False  # from the level's stored copy
    fixed: RawDataElement | None = None  # the same (immutable) element in every response


def _plan(root: str, identifier: Dataset, fuzzy: bool) -> _Plan:
    level = _level(root, identifier)
    chain = _chain(root, level)
    _require_unique_keys(identifier, chain[:-1], f"{level} level query")
    keys: dict[int, _Key] = {}
    for elem in identifier:
        tag = int(elem.tag)
        if tag in _SKIPPED or tag >> 16 == 0x0002 or tag & 0xFFFF == 0:
            continue
        keys[tag] = _key(elem)
    for above in chain:  # unique keys always come back, requested or not
        keyword = UNIQUE[above]
        tag = tag_for_keyword(keyword)
        keys.setdefault(tag, _Key(tag, keyword, dictionary_VR(tag), above, ""))
    where, args, python, select = [], [], [], []
    attrs_levels: set[str] = set()
    depth = DEPTH[level]
    for key in keys.values():
        in_scope = DEPTH[key.level] <= depth or key.keyword == INSTANCE_AVAILABILITY
        column = COLUMNS.get(key.keyword)
        if column and DEPTH[column[0]] <= depth:
            select.append(f"{column[1]} AS c{key.tag}")
        elif key.keyword in COMPUTED and in_scope:
            select.append(f"{COMPUTED[key.keyword][1]} AS c{key.tag}")
        elif in_scope and key.keyword != INSTANCE_AVAILABILITY:
            attrs_levels.add(key.level)
        if key.universal or not in_scope or key.keyword == INSTANCE_AVAILABILITY:
            continue
        if key.keyword == "ModalitiesInStudy":
            condition = _sql(key, "modality", fuzzy)
            assert condition is not None
            where.append(f"s.id IN (SELECT study_ref FROM archive_series WHERE {condition[0]})")
            args += condition[1]
            continue
        if key.keyword in COMPUTED:
            continue  # counts are return keys only
        condition = _sql(key, column[1], fuzzy) if column else None
        if condition is not None:
            where.append(condition[0])
            args += condition[1]
        if condition is None or (key.vr == "PN" and fuzzy):
            python.append(key)
    for lvl in levels.LEVELS[: depth + 1]:
        alias = _ALIAS[lvl]
        select.append(f"{alias}.charset AS charset_{lvl}")
        if lvl in attrs_levels or any(k.level == lvl and k.keyword not in COLUMNS for k in python):
            select.append(f"{alias}.attrs AS attrs_{lvl}")
    alias = _ALIAS[level]
    sql = f"SELECT {alias}.id FROM {_FROM[level]}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    returned = []
    for key in keys.values():
        name = f"c{key.tag}"
        if key.keyword == INSTANCE_AVAILABILITY:
            returned.append(_Return(key, fixed=_raw(key.tag, key.vr, "ONLINE")))
        elif any(s.endswith(f" AS {name}") for s in select):
            returned.append(_Return(key, column=name))
        elif DEPTH[key.level] <= depth:
            returned.append(_Return(key, stored=True))
        elif key.vr == "SQ":
            returned.append(_Return(key))
        else:  # below the query level: not an attribute here
            returned.append(_Return(key, fixed=_raw(key.tag, key.vr, "")))
    return _Plan(level, sql + f" ORDER BY {alias}.id", args, select, python, returned,
                 attrs_levels)  # fmt: skip


def find(
    index: ArchiveIndex,
    root: Root,
    identifier: Dataset,
    *,
    fuzzy_names: bool = False,
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[Dataset]:
    """The C-FIND responses' identifiers, one per match, produced lazily: the caller sends
    each as a Pending response and may stop (Cancel) between them. QueryError for an
    identifier to refuse, raised before the first response."""
    plan = _plan(root, identifier, fuzzy_names)
    return _run(index, plan, fuzzy_names, cancelled)


def _run(
    index: ArchiveIndex, plan: _Plan, fuzzy: bool, cancelled: Callable[[], bool]
) -> Iterator[Dataset]:
    ids = [r[0] for r in index.conn.execute(plan.sql, plan.args)]
    alias = _ALIAS[plan.level]
    for start in range(0, len(ids), CHUNK):
        if cancelled():
            return
        chunk = ids[start : start + CHUNK]
        cursor = index.conn.execute(
            f"SELECT {', '.join(plan.select)} FROM {_FROM[plan.level]}"
            f" WHERE {alias}.id IN ({','.join('?' * len(chunk))}) ORDER BY {alias}.id",
            chunk,
        )
        names = {d[0]: n for n, d in enumerate(cursor.description)}
        for row in cursor.fetchall():
            response = _respond(plan, row, names, fuzzy)
            if response is None:
                continue
            if cancelled():
                return
            yield response


def _respond(plan: _Plan, row: tuple, names: dict[str, int], fuzzy: bool) -> Dataset | None:
    attrs = {
        lvl: levels.unpack(row[names[f"attrs_{lvl}"]])
        for lvl in plan.attrs_levels | {k.level for k in plan.python}
        if f"attrs_{lvl}" in names
    }
    for key in plan.python:
        if key.keyword in COLUMNS:
            if not _matches(key, [row[names[f"c{key.tag}"]]], fuzzy):
                return None
        elif not _matches_json(key, attrs[key.level].get(f"{key.tag:08X}"), fuzzy):
            return None
    out: list[DataElement | RawDataElement] = []
    texts = []  # non-ASCII values: the character set must be able to carry them
    for r in plan.returned:
        key = r.key
        if r.fixed is not None:
            out.append(r.fixed)
        elif r.column is not None:
            value = row[names[r.column]]
            if isinstance(value, str) and not value.isascii():
                texts.append(value)
            out.append(_element(key, value))
        elif r.stored:
            element = attrs[key.level].get(f"{key.tag:08X}")
            if key.vr != "SQ":
                texts += [t for t in _json_values(element) if not t.isascii()]
            out.append(_json_element(key, element, fuzzy))
        else:
            out.append(_element(key, None))
    out.append(_fixed(levels.QUERY_RETRIEVE_LEVEL, plan.level))
    charset = row[names[f"charset_{plan.level}"]]
    if texts and not (charset and all(_encodable(t, _codecs(charset)) for t in texts)):
        charset = "ISO_IR 192"
    if charset:
        out.append(_fixed(levels.SPECIFIC_CHARACTER_SET, charset))
    return Dataset({e.tag: e for e in out})  # the elements as they are, no conversion


@functools.lru_cache(maxsize=64)
def _fixed(tag: int, text: str) -> RawDataElement:
    """A CS element every response of a query shares (raw elements are immutable)."""
    return _raw(tag, "CS", text)


@functools.lru_cache(maxsize=64)
def _codecs(charset: str) -> list[str]:
    return convert_encodings(charset.split("\\"))


def locate(index: ArchiveIndex, root: Root, identifier: Dataset) -> list[StoredInstance]:
    """Every instance a C-MOVE / C-GET identifier names: under the patient, studies, series
    or instances given by the unique keys of the level and the levels above (UID lists
    allowed). QueryError when a unique key is missing."""
    level = _level(root, identifier)
    chain = _chain(root, level)
    _require_unique_keys(identifier, chain, f"{level} level retrieve")
    where, args = [], []
    for lvl in chain:
        column = COLUMNS[UNIQUE[lvl]][1]
        values = [v.strip() for v in levels.text(identifier, UNIQUE[lvl]).split("\\")]
        where.append(f"{column} IN ({','.join('?' * len(values))})")
        args += values
    rows = index.conn.execute(
        f"{STORED_SELECT} JOIN archive_patients p ON p.id = s.patient_ref"
        f" WHERE {' AND '.join(where)} ORDER BY s.id, r.id, i.id",
        args,
    )
    return [StoredInstance(*r) for r in rows]
