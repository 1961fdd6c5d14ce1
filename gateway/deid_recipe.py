"""Site de-identification recipes in the `deid` package's format (pydicom/deid 0.4.x).

Some sites already keep their de-identification as a deid recipe; a rule may name one.
deid has hazards a long-running gateway cannot carry, so it is fenced off here:

- A bad recipe line calls `sys.exit()`. `validate_recipe` walks the recipe line by line
  through deid's own parsing functions with SystemExit caught, so the rule loader gets a
  `RecipeError` naming the line. It is stricter than deid where deid would silently skip
  or misread a line, or fail every instance later: a misspelt or lower-case action, an
  unknown field expander, a trailing comment that turns `REMOVE x # note` into "remove
  nothing", `func:`/`var:` values (the gateway passes deid no functions or lookups), a
  JITTER that is not a whole number of days or names a keyword that is not a date. The
  child checks the recipe again when it starts: deid loads a missing file as "no actions".
  `%filter` sections are checked but not applied: the gateway cleans headers, not pixels.
- deid caches every dataset it has seen, pixels included (`functools.cache` on
  `deid.dicom.fields._get_fields_inner`), and its logger keeps every message
  (`deid.logger.bot.history`); both are cleared after each instance.
- Filters such as `endswith:ID` also remove SOP Class UID and the file meta UIDs. After
  deid, SOPClassUID, MediaStorageSOPClassUID and TransferSyntaxUID are put back as they
  were. SOPInstanceUID keeps deid's value when that is a valid UID (a recipe that remaps
  every `...InstanceUID` consistently stays consistent) and is put back when deid removed or
  blanked it; naming it in REMOVE or BLANK is a recipe error (REPLACE it instead).
  MediaStorageSOPInstanceUID always follows SOPInstanceUID. The result must write as a
  Part 10 file, else the instance fails. An input without file meta (a C-STORE dataset)
  gets one for deid's sake only; the output then has none either.

Where deid runs: a child process per `RecipeRunner` (`python -m gateway.deid_recipe`),
started on first use, fed one instance at a time over a pipe (the header as Part 10 bytes;
Pixel Data stays in the worker, deid skips it anyway), killed after `timeout` seconds,
restarted after it dies, replaced every `recycle_every` instances. Measured on this 2-core
machine (load ~2 from other work) with rules/recipes/site.deid, 512x512 synthetic CT:

    in process, deid as it is             4.2-5.1 ms/instance   RSS +524 MiB after 1000
    in process, deid, caches cleared      4.3 ms/instance       RSS +0 MiB after 5000
    in process, this module's pipeline    6.7 ms/instance       RSS +0 MiB after 5000
    child process (this module)           7.8 ms/instance       worker + child RSS +0.2 MiB
                                                                after 5000; child 77 MiB
                                                                RSS, 0.6-0.8 s to start
    (a 184-element corpus CT: 26 ms/instance through the child)

"Pipeline" adds what any variant needs: the change list, putting UIDs back, a Part 10
write check. Guarded, both variants stay flat; the process boundary costs ~1.1 ms per
instance and 77 MiB per runner. It is chosen because only a process can be stopped: deid
builds regular expressions from recipe text and from instance values (`%values` lists), so
one instance can hang it for hours (tests/test_deid_recipe.py has such a PatientID), and a
crash, an `os._exit` or a runaway allocation in deid or a C extension must cost one
instance, not the worker. It also keeps deid's process-wide patching
(`FileDataset.__hash__`), its stdout prints and its logger's streams out of the worker.
deid's messages, prints and warnings come back with each reply and are logged here against
the instance's SOP Instance UID; anything the child writes to its own stdout or stderr goes
to a temporary file whose tail is logged if it dies.

Errors: `RecipeError` (a ValueError) for everything: a bad recipe when rules load, and
deid failing, hanging or dying on one instance (the worker fails that job with the reason).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from pydicom import dcmread, dcmwrite
from pydicom.datadict import dictionary_description, dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

log = logging.getLogger(__name__)

PIXEL_DATA = Tag(0x7FE0, 0x0010)

# deid's own function names (deid.dicom.actions.deid_funcs); importing that module loads
# matplotlib, which the worker need not carry. The tests check the list against deid.
DEID_FUNCS = frozenset({"jitter", "dicom_uuid", "suffix_uuid", "basic_uuid", "pydicom_uuid"})
# Field expanders deid knows (deid.dicom.fields / parser); any other matches nothing.
EXPANDERS = frozenset(
    {"endswith", "startswith", "contains", "except", "select", "values", "fields"}
)
# A colon outside quotes separates expander and expression (deid's own pattern).
_EXPANDER_RE = re.compile(r'^([^:"]*(?:"[^"]*"[^:"]*)*):(.*)$')
# Elements the output keeps as they came, whatever the recipe says (see above).
KEPT = ("SOPClassUID", "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")


class RecipeError(ValueError):
    """A recipe is unusable, or deid failed on one instance: "<path>: [line N: ]reason"."""

    def __init__(self, path: Path, reason: str, line: int | None = None) -> None:
        where = f"{path}: line {line}: " if line is not None else f"{path}: "
        super().__init__(where + reason)
        self.path, self.line, self.reason = path, line, reason


# --- validation (in the caller's process; deid.config does not import matplotlib) -------


def validate_recipe(path: Path) -> None:
    """Reject a recipe deid would exit on, misread or skip parts of; raises RecipeError."""
    lines = _read_lines(path)
    _Checker(path).run(lines)
    _load_with_deid(path)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Numbered, stripped, non-blank lines, split the way deid splits them."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(path, "no such recipe file") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(path, f"not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise RecipeError(path, f"cannot read it: {exc.strerror}") from None
    return [(n, s.strip()) for n, s in enumerate(text.split("\n"), 1) if s.strip()]


@contextmanager
def _deid_quiet(said: list[str]) -> Iterator[None]:
    """deid's logger prints to the streams it saw at import and keeps every message forever:
    silence it for the block, hand its messages to `said`, and forget them."""
    from deid.logger import bot

    level, start = bot.level, len(bot.history)
    bot.level = 0  # deid's QUIET: messages go to its history only
    try:
        yield
    finally:
        bot.level = level
        said.extend(m.strip() for m in bot.history[start:])
        del bot.history[start:]


def _exit_reason(said: list[str]) -> str:
    """The message deid logged before sys.exit, without its ERROR prefix."""
    errors = [m.removeprefix("ERROR").strip() for m in said if m.startswith("ERROR")]
    return errors[-1] if errors else "deid rejected it"


def _with_deid(path: Path, line: int | None, fn: Callable[..., Any], *args: Any) -> Any:
    """Call a deid parsing function; its sys.exit or exception becomes a RecipeError."""
    said: list[str] = []
    try:
        with _deid_quiet(said):
            return fn(*args)
    except SystemExit:
        raise RecipeError(path, _exit_reason(said), line) from None
    except Exception as exc:
        raise RecipeError(
            path, f"deid cannot parse it ({type(exc).__name__}: {exc})", line
        ) from None


def _load_with_deid(path: Path) -> None:
    """deid's own loader has the last word, so nothing passes here that it refuses."""
    from deid.config import DeidRecipe

    _with_deid(path, None, DeidRecipe, str(path))


def _names(keyword: str) -> set[str]:
    """Every exact spelling deid matches for a keyword: keyword, (gggg,eeee), ggggeeee, name."""
    tag = Tag(tag_for_keyword(keyword))
    return {keyword.lower(), str(tag).lower(), f"{tag:08x}", dictionary_description(tag).lower()}


class _Checker:
    """One pass over a recipe in deid's order (deid.config.utils.load_deid), with line numbers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.section: str | None = None
        self.section_name: str | None = None
        self.config: dict[str, Any] = {}  # scratch for deid's per-line functions
        self.lists: dict[str, set[str]] = {"values": set(), "fields": set()}
        self.refs: list[tuple[int, str, str]] = []  # line, "values"/"fields", list name
        self.header_actions = 0
        self.has_format = False
        self.kept = {kw: _names(kw) for kw in KEPT}
        self.instance_uid = _names("SOPInstanceUID")

    def fail(self, line: int | None, reason: str) -> NoReturn:
        raise RecipeError(self.path, reason, line)

    def run(self, lines: list[tuple[int, str]]) -> None:
        from deid.config.standards import actions, group_actions, groups
        from deid.config.utils import parse_format

        if all(line.startswith("#") for _, line in lines):
            self.fail(None, "the recipe is empty")
        pending = list(lines)
        while pending:
            n, line = pending.pop(0)
            first = line.split()[0]
            if line.startswith("#"):
                continue
            if re.match("^format", line, re.I):
                _with_deid(self.path, n, parse_format, line)
                self.has_format = True
            elif line.startswith("%"):
                self.open_section(n, line)
            elif line.upper().startswith(group_actions) and self.section in groups:
                self.group_action(n, line, first)
            elif line.upper().startswith(actions):
                if first.upper() not in actions:
                    self.fail(n, f"unknown action {first!r} (deid would skip the line)")
                if first != first.upper():
                    self.fail(n, f"actions are upper case: deid ignores {first!r}")
                if first == "LABEL":
                    self.label(n, line, pending)
                else:
                    self.action(n, line, first)
            else:
                self.fail(n, f"not a deid recipe line (deid would skip it): {line[:60]!r}")
        if not self.has_format:
            self.fail(None, "no 'FORMAT dicom' line (deid cannot load a recipe without one)")
        if not self.header_actions:
            self.fail(None, "no %header actions: the recipe would change nothing")
        for n, kind, name in self.refs:
            if name not in self.lists[kind]:
                self.fail(n, f"{kind}:{name} names no '%{kind} {name}' section")

    def open_section(self, n: int, line: str) -> None:
        from deid.config.utils import add_section

        parts = line.split("#", 1)[0].strip().split(" ")
        self.section_name = " ".join(parts[1:]) if len(parts) > 1 else None
        self.section = re.sub(r"[%]|(\s+)", "", parts[0]).lower()
        _with_deid(self.path, n, add_section, self.config, self.section, self.section_name)
        if self.section in self.lists and self.section_name:
            self.lists[self.section].add(self.section_name)

    def group_action(self, n: int, line: str, word: str) -> None:
        from deid.config.utils import parse_group_action, split_action_line

        if word not in ("FIELD", "SPLIT"):
            self.fail(n, f"{word!r} is not FIELD or SPLIT (deid would match nothing)")
        _with_deid(
            self.path, n, parse_group_action, self.section, line, self.config, self.section_name
        )
        parts = split_action_line(line)
        self.field(n, parts[1])
        if word == "SPLIT" and len(parts) > 2:
            for param in " ".join(parts[2:]).split("#")[0].split(";"):
                name, equals, value = param.partition("=")
                if name.strip() not in ("by", "minlength") or not equals:
                    self.fail(n, f"SPLIT takes by=... and minlength=N, not {param.strip()!r}")
                if name.strip() == "minlength" and not value.strip().isdigit():
                    self.fail(n, f"SPLIT minlength must be a whole number, not {value.strip()!r}")

    def label(self, n: int, line: str, pending: list[tuple[int, str]]) -> None:
        """A %filter LABEL and its member lines; deid consumes them up to the next LABEL or %."""
        from deid.config.standards import filters
        from deid.config.utils import parse_label

        if self.section != "filter":
            self.fail(n, "LABEL belongs in a %filter section")
        while pending and not pending[0][1].upper().startswith(("LABEL", "%")):
            m, member = pending.pop(0)
            bare = member.lstrip("+|").strip().lower()
            if bare.startswith("#"):
                continue
            coordinates = ("coordinates", "keepcoordinates", "ctpcoordinates", "ctpkeepcoordinates")
            if not bare.startswith((*filters, *coordinates)):
                self.fail(m, f"not a filter: {member[:60]!r} (deid would skip it)")
            _with_deid(
                self.path,
                m,
                parse_label,
                self.section,
                self.config,
                self.section_name,
                [member],
                line,
            )

    def action(self, n: int, line: str, word: str) -> None:
        from deid.config.utils import parse_config_action, split_action_line

        if self.section != "header":
            where = f"in %{self.section}" if self.section else "before any section"
            self.fail(n, f"{word} belongs in the %header section, not {where}")
        _with_deid(self.path, n, parse_config_action, self.section, line, self.config)
        self.header_actions += 1
        parts = split_action_line(line)
        field = parts[1]
        value = " ".join(parts[2:]).split("#")[0].strip() if len(parts) > 2 else None
        if value == "" and word in ("ADD", "REPLACE", "JITTER", "REMOVE"):
            self.fail(
                n,
                f"a trailing comment leaves {word} an empty value (deid then "
                f"{'removes nothing' if word == 'REMOVE' else 'writes an empty value'}); "
                "put the comment on its own line",
            )
        if word == "ADD":
            if not (tag_for_keyword(field) or re.fullmatch(r"[0-9A-Fa-f]{8}", field)):
                self.fail(n, f"ADD needs a DICOM keyword or 8 hex digits, not {field!r}")
        else:
            self.field(n, field)
        if value is not None:
            self.value(n, word, value)
        tag = tag_for_keyword(field)
        if word == "JITTER" and tag and dictionary_VR(tag) not in ("DA", "DT"):
            # deid warns, then fails every instance on some VRs (PN)
            self.fail(n, f"JITTER shifts dates (DA, DT); {field} is {dictionary_VR(tag)}")
        self.protect(n, word, field.lower())

    def field(self, n: int, field: str) -> None:
        """An expander deid does not know matches nothing; a bad expression fails every instance."""
        match = _EXPANDER_RE.match(field)
        if not match:
            return
        expander, expression = match.group(1).lower(), match.group(2)
        if expander not in EXPANDERS:
            self.fail(n, f"unknown field expander '{expander}:' (deid would match nothing)")
        if expander in ("values", "fields"):
            self.refs.append((n, expander, expression))
        elif expander == "select":
            kind, _, arg = expression.partition(":")
            if kind.lower() not in ("vr", "group") or not arg:
                self.fail(n, f"select: takes VR:XX or group:XXXX, not {expression!r}")
            if kind.lower() == "group" and not re.fullmatch(r"[0-9A-Fa-f]{1,4}", arg):
                self.fail(n, f"select:group: needs a hex group, not {arg!r}")
        else:
            try:
                re.compile(expression)
            except re.error as exc:
                self.fail(n, f"{expander}: expression {expression!r} is not a valid regex ({exc})")

    def value(self, n: int, word: str, value: str) -> None:
        kind, _, rest = value.partition(":")  # deid matches these prefixes case-sensitively
        if kind in ("func", "var"):
            self.fail(
                n,
                f"{kind}: values need a Python function or lookup passed to deid; "
                "the gateway passes none (use deid_func: or a literal)",
            )
        if word == "JITTER" and not re.fullmatch(r"[+-]?\d+", value):
            self.fail(n, f"JITTER takes a whole number of days, not {value!r}")
        if kind == "deid_func":
            name = rest.split(" ", 1)[0]
            if name not in DEID_FUNCS:
                self.fail(
                    n, f"unknown deid_func {name!r} (deid has {', '.join(sorted(DEID_FUNCS))})"
                )

    def protect(self, n: int, word: str, field: str) -> None:
        if word == "KEEP":
            return
        for keyword, names in self.kept.items():
            if field in names:
                self.fail(n, f"{keyword} is kept as it is so the output stays valid DICOM")
        if word in ("REMOVE", "BLANK") and field in self.instance_uid:
            self.fail(
                n,
                f"SOPInstanceUID cannot be {word.lower()}ed (the output would not be "
                "valid DICOM); REPLACE it, e.g. with deid_func:pydicom_uuid",
            )


# --- the child process: runs deid, one instance per request ------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _frame(obj: object) -> bytes:
    """A reply: length, then a pickle of plain values (requests are bare Part 10 bytes)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return struct.pack("!Q", len(data)) + data


def _read_exact_blocking(fd: int, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _element_name(elem: Any, prefix: str) -> str:
    return f"{prefix}{elem.keyword} {elem.tag}" if elem.keyword else f"{prefix}{elem.tag}"


def _flatten(ds: Dataset, prefix: str = "") -> dict[str, tuple[bool, Any]]:
    """path -> (is a sequence, value copy), nested items as Seq[i].Keyword."""
    out: dict[str, tuple[bool, Any]] = {}
    for elem in ds:
        path = _element_name(elem, prefix)
        if elem.VR == "SQ":
            out[path] = (True, len(elem.value or ()))
            for i, item in enumerate(elem.value or ()):
                out.update(_flatten(item, f"{prefix}{elem.keyword or elem.tag}[{i}]."))
        else:
            value = elem.value
            out[path] = (False, list(value) if isinstance(value, MultiValue) else value)
    return out


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == b"" or value == []


def _diff(before: dict[str, tuple[bool, Any]], after: dict[str, tuple[bool, Any]]) -> list[str]:
    """What deid did, for a dry run; a removed sequence is one line, not one per child."""
    changes, gone = [], []
    for path, (is_seq, value) in before.items():
        if any(path.startswith(g) for g in gone):
            continue
        now = after.get(path)
        if now is None:
            changes.append(f"{path}: removed")
        elif now[1] != value:
            blanked = now[1] == 0 if is_seq else _empty(now[1])
            changes.append(f"{path}: {'blanked' if blanked else 'replaced'}")
        if is_seq and now != (True, value):
            gone.append(path.split(" ")[0] + "[")
    changes += [
        f"{path}: added"
        for path in after
        if path not in before and not any(path.startswith(g) for g in gone)
    ]
    return changes


def _file_meta_for(body: Dataset) -> FileMetaDataset:
    """deid fails on a dataset without file meta (a C-STORE dataset has none)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = body.get("SOPClassUID", "")
    meta.MediaStorageSOPInstanceUID = body.get("SOPInstanceUID", "")
    implicit = body.original_encoding[0]
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return meta


def _part10(ds: Dataset) -> bytes:
    """`ds` without Pixel Data as a Part 10 file, elements as read where the encoding allows.

    Bytes, not pickles, cross the pipe: pydicom cannot pickle some decoded elements
    (LUT descriptors), and deid wants a FileDataset with file meta anyway.
    """
    tags = [tag for tag in ds.keys() if tag != PIXEL_DATA]  # noqa: SIM118 - keys: no decoding
    body = Dataset({tag: ds.get_item(tag) for tag in tags})
    body.set_original_encoding(*ds.original_encoding, ds.original_character_set)
    meta = getattr(ds, "file_meta", None)
    # a copy: writing fills in missing file meta elements
    body.file_meta = FileMetaDataset(dict(meta)) if meta is not None else _file_meta_for(body)
    out = io.BytesIO()
    dcmwrite(out, body, enforce_file_format=True)
    return out.getvalue()


def _restore(ds: FileDataset, original: dict[str, Any]) -> list[str]:
    """Put back what a valid instance needs (module docstring); say what was put back."""
    notes = []
    sop_uid = ds.get("SOPInstanceUID")
    if original["SOPInstanceUID"] and not (sop_uid and UID(str(sop_uid)).is_valid):
        ds.SOPInstanceUID = original["SOPInstanceUID"]
        notes.append(f"SOPInstanceUID {Tag(0x00080018)}: restored (the recipe removed it)")
    wanted = {
        "SOPClassUID": original["SOPClassUID"],
        "MediaStorageSOPClassUID": original["MediaStorageSOPClassUID"],
        "TransferSyntaxUID": original["TransferSyntaxUID"],
        "MediaStorageSOPInstanceUID": ds.get("SOPInstanceUID"),
    }
    for keyword, value in wanted.items():
        where = ds.file_meta if keyword != "SOPClassUID" else ds
        if value and where.get(keyword) != value:
            if keyword != "MediaStorageSOPInstanceUID":
                notes.append(f"{keyword} {Tag(tag_for_keyword(keyword))}: restored")
            setattr(where, keyword, value)
    return notes


def _deidentify(data: bytes, recipe: Any) -> tuple[bytes, list[str]]:
    """One instance (Part 10 bytes) through deid, in the child; raises what deid raises."""
    from deid.dicom.parser import DicomParser

    ds = dcmread(io.BytesIO(data))
    original = {kw: ds.get(kw) for kw in ("SOPClassUID", "SOPInstanceUID")}
    original |= {kw: ds.file_meta.get(kw) for kw in KEPT if kw.startswith(("Media", "Transfer"))}
    before = _flatten(ds.file_meta) | _flatten(ds)
    DicomParser(ds, recipe=recipe).parse()
    notes = _restore(ds, original)
    out = io.BytesIO()
    try:
        dcmwrite(out, ds, enforce_file_format=True)
    except Exception as exc:
        raise ValueError(f"deid's output does not write as DICOM ({exc})") from exc
    return out.getvalue(), _diff(before, _flatten(ds.file_meta) | _flatten(ds)) + notes


def _serve(recipe_path: str) -> None:
    """Child main loop: load the recipe, then answer one request per frame until EOF.

    fd 1 is the reply channel; what anything else writes to fd 1 or 2 goes to the stderr
    the parent gave (a temporary file). Python-level output is captured per instance.
    """
    replies = os.dup(1)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when this stops
    captured = io.StringIO()
    sys.stdout = sys.stderr = captured

    from deid.config import DeidRecipe
    from deid.dicom import fields as deid_fields
    from deid.logger import bot

    bot.level = 0  # messages only to bot.history, which goes back with each reply

    def reply(obj: tuple[Any, ...]) -> None:
        said = [m.strip() for m in bot.history] + captured.getvalue().splitlines()
        bot.history.clear()
        captured.seek(0)
        captured.truncate()
        _write_all(replies, _frame((*obj, [line for line in said if line.strip()])))

    try:
        validate_recipe(Path(recipe_path))  # again: deid loads a missing file as "no actions"
        recipe = DeidRecipe(recipe_path)
    except RecipeError as exc:
        reply(("fail", exc.reason, exc.line))
        return
    except (SystemExit, Exception) as exc:
        reply(
            ("fail", _exit_reason(bot.history) if isinstance(exc, SystemExit) else repr(exc), None)
        )
        return
    reply(("ready",))
    while (header := _read_exact_blocking(0, 8)) is not None:
        data = _read_exact_blocking(0, struct.unpack("!Q", header)[0])
        if data is None:
            return
        try:
            result: tuple[Any, ...] = ("ok", *_deidentify(data, recipe))
        except SystemExit:
            result = ("fail", f"deid exited: {_exit_reason(bot.history)}")
        except Exception as exc:
            result = ("fail", f"{type(exc).__name__}: {exc}")
        finally:
            deid_fields._get_fields_inner.cache_clear()  # it holds every dataset, pixels too
        reply(result)


# --- the worker side ----------------------------------------------------------------------


class _Timeout(Exception):
    pass


class _Gone(Exception):
    pass


class _Child:
    """One deid process and its pipes."""

    def __init__(self, recipe: Path) -> None:
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.deid_recipe", str(recipe.resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            bufsize=0,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.to_child, self.from_child = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self.selector = selectors.DefaultSelector()  # not select(): fds above 1024
        self.selector.register(self.from_child, selectors.EVENT_READ)

    def send(self, data: bytes) -> None:
        try:
            _write_all(self.to_child, struct.pack("!Q", len(data)) + data)
        except (BrokenPipeError, ConnectionResetError):
            raise _Gone from None

    def recv(self, deadline: float) -> Any:
        (n,) = struct.unpack("!Q", self._read(8, deadline))
        return pickle.loads(self._read(n, deadline))

    def _read(self, n: int, deadline: float) -> bytes:
        chunks, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not self.selector.select(left):
                raise _Timeout
            chunk = os.read(self.from_child, min(n - got, 1 << 20))
            if not chunk:
                raise _Gone
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def stop(self, kill: bool) -> tuple[int | None, str]:
        """End the process (EOF, else kill); its exit code and the tail of its output."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.selector.close()
        self.proc.stdin.close()
        if kill:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.stderr.seek(0, os.SEEK_END)
        self.stderr.seek(max(0, self.stderr.tell() - 2000))
        tail = self.stderr.read().decode("utf-8", "replace").strip()
        self.stderr.close()
        return self.proc.returncode, tail


class RecipeRunner:
    """Applies one recipe in a deid child process; one per rule, owned by a worker.

    timeout: seconds deid may take on one instance before its process is killed (default
        30; deid takes 5-100 ms on a CT).
    start_timeout: seconds the child may take to import deid and load the recipe (default 60;
        0.7 s on an idle machine, more the first time matplotlib builds its font cache).
    recycle_every: instances before the child is replaced by a fresh one (default 1000);
        memory stays flat without it, this bounds whatever deid might still keep.
    Thread-safe (one instance at a time); the child starts on first use.
    """

    def __init__(
        self,
        path: Path,
        *,
        timeout: float = 30.0,
        start_timeout: float = 60.0,
        recycle_every: int = 1000,
    ) -> None:
        self.path = path
        self.timeout, self.start_timeout, self.recycle_every = timeout, start_timeout, recycle_every
        self._child: _Child | None = None
        self._served = 0
        self._lock = threading.Lock()

    def __enter__(self) -> RecipeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The deid child's pid while one runs (for monitoring and tests)."""
        return self._child.proc.pid if self._child else None

    def apply(self, ds: Dataset) -> list[str]:
        """De-identify `ds` in place; returns what changed, e.g. "PatientName (0010,0010): replaced"."""
        sop_uid = str(ds.get("SOPInstanceUID", "(no SOP Instance UID)"))
        try:
            request = _part10(ds)
        except Exception as exc:
            raise RecipeError(self.path, f"cannot hand {sop_uid} to deid ({exc})") from None
        with self._lock:
            data, changes = self._call(request, sop_uid)
        result = dcmread(io.BytesIO(data))
        pixels = ds.get_item(PIXEL_DATA) if PIXEL_DATA in ds else None
        ds.clear()
        for tag in sorted(result.keys()):  # noqa: SIM118 - private creators first, no decoding
            ds[tag] = result.get_item(tag)
        if pixels is not None:
            ds[PIXEL_DATA] = pixels
        if hasattr(ds, "file_meta"):
            ds.file_meta = result.file_meta
        return changes

    def close(self) -> None:
        """Stop the child; the next apply() would start another."""
        with self._lock:
            self._stop(kill=False)

    def _call(self, request: bytes, sop_uid: str) -> tuple[Any, ...]:
        if self._child and self._child.proc.poll() is not None:
            self._stop(kill=False)  # died while idle (OOM killer, kill -9): start afresh
        child = self._child or self._start()
        try:
            child.send(request)
            reply = child.recv(time.monotonic() + self.timeout)
        except _Timeout:
            self._stop(kill=True)
            raise RecipeError(
                self.path, f"deid took over {self.timeout:g} s on {sop_uid}; its process was killed"
            ) from None
        except _Gone:
            code, _ = self._stop(kill=False)
            raise RecipeError(
                self.path, f"deid's process died on {sop_uid} (exit code {code})"
            ) from None
        *result, said = reply
        self._log(said, sop_uid)
        self._served += 1
        if self._served >= self.recycle_every:
            self._stop(kill=False)
        if result[0] == "fail":
            raise RecipeError(self.path, f"deid failed on {sop_uid}: {result[1]}")
        return tuple(result[1:])

    def _start(self) -> _Child:
        child = _Child(self.path)
        self._child, self._served = child, 0
        try:
            status, *rest = child.recv(time.monotonic() + self.start_timeout)
        except (_Timeout, _Gone) as exc:
            code, tail = self._stop(kill=True)
            log.warning("deid process for %s did not start; its output: %s", self.path, tail)
            what = "did not start in time" if isinstance(exc, _Timeout) else f"exited ({code})"
            last = tail.splitlines()[-1] if tail else "no output"
            raise RecipeError(self.path, f"deid's process {what}: {last}") from None
        if status != "ready":
            reason, line, said = rest
            self._log(said, "(recipe load)")
            self._stop(kill=False)
            raise RecipeError(self.path, reason, line)
        self._log(rest[0], "(recipe load)")
        return child

    def _stop(self, kill: bool) -> tuple[int | None, str]:
        child, self._child = self._child, None
        if child is None:
            return None, ""
        code, tail = child.stop(kill)
        if code not in (0, None) and not kill:
            log.warning("deid process for %s exited %s; its last output: %s", self.path, code, tail)
        return code, tail

    def _log(self, said: list[str], sop_uid: str) -> None:
        """deid's messages, prints and warnings, against the instance they came from."""
        for line in said:
            level = logging.DEBUG if line.startswith("DEBUG") else logging.INFO
            if line.startswith(("WARNING", "ERROR", "ABORT", "FLAGGED")):
                level = logging.WARNING
            log.log(level, "deid %s on %s: %s", self.path.name, sop_uid, line)


if __name__ == "__main__":
    _serve(sys.argv[1])
