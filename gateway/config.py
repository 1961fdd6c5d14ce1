"""Typed configuration: YAML file + `GATEWAY__SECTION__KEY` environment overrides.

Loaded once into frozen objects and passed explicitly; nothing reads a module global.
Every problem is reported as one line `FILE: dotted.key: reason`, so an admin can fix a
whole file in one pass.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError

ENV_PREFIX = "GATEWAY__"
DEFAULT_CONFIG = "config.yaml"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CallingAE(_Model):
    """A calling AE title allowed to associate, optionally pinned to source addresses."""

    ae_title: str = Field(min_length=1, max_length=16)
    hosts: tuple[str, ...] = ()  # IP addresses or CIDR networks; empty: any source

    @field_validator("hosts")
    @classmethod
    def _networks(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        for host in hosts:
            ipaddress.ip_network(host, strict=False)  # raises ValueError with the reason
        return hosts

    def admits(self, address: str) -> bool:
        if not self.hosts:
            return True
        ip = ipaddress.ip_address(address)
        return any(ip in ipaddress.ip_network(h, strict=False) for h in self.hosts)


class Dimse(_Model):
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)
    # "AE" or {ae_title: AE, hosts: [10.0.0.7, 10.1.0.0/16]}; empty list refuses everyone;
    # ["*"] admits any calling AE (a warning says so).
    allowed_calling_aets: tuple[str | CallingAE, ...] = ()
    check_called_aet: bool = True
    max_pdu: int = Field(0, ge=0)  # 0: no limit, the sender chooses its PDU size
    listeners: int = Field(1, ge=1, le=64)  # processes accepting on the one port
    # Storage SOP classes beyond those pydicom knows (private/unknown), by UID.
    extra_sop_classes: tuple[str, ...] = ()
    accept_unknown_sop_classes: bool = False  # accept any SOP class proposed for storage
    # A dataset pydicom cannot parse: "reject" answers 0xC210; "keep" spools it as received.
    unparseable: Literal["reject", "keep"] = "reject"
    acse_timeout: float = Field(30, gt=0)
    dimse_timeout: float = Field(60, gt=0)
    network_timeout: float = Field(120, gt=0)

    def calling_aets(self) -> tuple[CallingAE, ...]:
        return tuple(
            CallingAE(ae_title=e) if isinstance(e, str) else e for e in self.allowed_calling_aets
        )


class Storage(_Model):
    # Below this much free space on data_dir, stores get 0xA700 and /readyz is false.
    min_free_mb: float = Field(500, ge=0)
    fsync: bool = True  # false only for throw-away test rigs: breaks the durability promise


class Workers(_Model):
    count: int = Field(2, ge=1, le=64)
    lease_seconds: float = Field(300, gt=0)  # a crashed worker's jobs come back after this
    batch_size: int = Field(50, ge=1, le=1000)  # instances per association


class Http(_Model):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    # Bearer token for the admin API from any address; empty: loopback clients only.
    # Prefer the environment: GATEWAY__HTTP__ADMIN_TOKEN.
    admin_token: str = ""


class Deidentify(_Model):
    # Key of the keyed hashes behind pseudonymous UIDs, IDs and date shifts: the same
    # secret maps the same study to the same pseudonyms. Prefer the environment
    # (GATEWAY__DEIDENTIFY__SECRET) to writing it here. Empty: rules cannot de-identify.
    secret: str = ""

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, secret: str) -> str:
        if secret and len(secret) < 16:
            raise ValueError("use at least 16 characters")
        return secret


class Retry(_Model):
    max_attempts: int = Field(50, ge=1)
    max_age_seconds: float = Field(3 * 24 * 3600, gt=0)  # then dead-letter
    initial_backoff: float = Field(1.0, gt=0)
    max_backoff: float = Field(300.0, gt=0)
    jitter: float = Field(1.0, ge=0)


class DicomDestination(_Model):
    """A DICOM C-STORE SCP (PACS, AI engine)."""

    type: Literal["dicom"]
    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str | None = Field(None, max_length=16)  # default: our ae_title
    max_pdu: int = Field(131072, ge=0)
    concurrency: int = Field(2, ge=1, le=64)  # parallel associations at most
    connect_timeout: float = Field(10, gt=0)
    # a peer that stops answering mid-batch: the stall before we reconnect and resend
    dimse_timeout: float = Field(30, gt=0)
    retry: Retry = Retry()


Duplicates = Literal["overwrite", "keep_first", "reject"]


class ArchiveRetention(_Model):
    """What the archive deletes, oldest study first (each limit off unless set); never an
    instance the queue still holds undelivered, never a protected study. Example:
    `retention: {max_age_days: 3650, age_by: study_date, max_size_gb: 800, min_free_gb: 50}`
    """

    max_age_days: float | None = Field(None, gt=0)
    age_by: Literal["study_date", "received"] = "study_date"  # also orders size/disk deletions
    max_size_gb: float | None = Field(None, gt=0)  # the archive's files, in 10^9 bytes
    min_free_gb: float | None = Field(None, gt=0)  # free space on the archive's file system
    protect: tuple[str, ...] = ()  # Study Instance UIDs kept, besides the protected table

    @property
    def active(self) -> bool:
        """Whether any limit is set (else retention has nothing to do)."""
        return any(v is not None for v in (self.max_age_days, self.max_size_gb, self.min_free_gb))


class ArchiveDestination(_Model):
    """Files under data_dir/archive (or `path`), laid out Study/Series/Instance by UID."""

    type: Literal["archive"]
    path: Path | None = None
    concurrency: int = Field(4, ge=1, le=64)
    retry: Retry = Retry()
    # The same SOP Instance UID again: overwrite the file, keep_first (the new one is
    # dropped, reported delivered) or reject (dead letter with the reason).
    duplicates: Duplicates = "overwrite"
    retention: ArchiveRetention = ArchiveRetention()


class MoveDestination(_Model):
    """A C-MOVE target, by the AE title a requester names in its C-MOVE."""

    host: str
    port: int = Field(ge=1, le=65535)
    max_pdu: int = Field(131072, ge=0)
    connect_timeout: float = Field(10, gt=0)
    dimse_timeout: float = Field(60, gt=0)


QRService = Literal["find", "move", "get"]


class QueryRetrieve(_Model):
    """The Q/R SCP over the local archive (on the DIMSE port and AE title)."""

    enabled: bool = True
    archive: str | None = None  # the archive destination it serves; default: the first one
    fuzzy_names: bool = False  # person names match case-insensitively
    # Calling AE title -> the services it may use; "*" for everyone else. Empty: every
    # calling AE the association policy admits may find, move and get.
    permissions: dict[str, tuple[QRService, ...]] = {}

    def allows(self, calling_ae: str, service: QRService) -> bool:
        if not self.permissions:
            return True
        granted = self.permissions.get(calling_ae, self.permissions.get("*", ()))
        return service in granted


_DESTINATION_TYPES = {"dicom", "archive"}
Destination = Annotated[DicomDestination | ArchiveDestination, Field(discriminator="type")]


class Config(_Model):
    ae_title: str = Field("GATEWAY", min_length=1, max_length=16)
    data_dir: Path = Path("./data")
    rules_dir: Path = Path("./rules")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    dimse: Dimse = Dimse()
    storage: Storage = Storage()
    workers: Workers = Workers()
    http: Http = Http()
    deidentify: Deidentify = Deidentify()
    qr: QueryRetrieve = QueryRetrieve()
    move_destinations: dict[str, MoveDestination] = {}  # C-MOVE targets by AE title
    destinations: dict[str, Destination] = {}

    @property
    def db_path(self) -> Path:
        return self.data_dir / "gateway.db"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    def archive_dir(self, dest: ArchiveDestination) -> Path:
        return dest.path or self.data_dir / "archive"

    def qr_archive(self) -> str | None:
        """The archive destination Q/R serves: `qr.archive`, else the first archive."""
        if self.qr.archive is not None:
            return self.qr.archive
        return next(
            (n for n, d in self.destinations.items() if isinstance(d, ArchiveDestination)), None
        )

    @field_validator("move_destinations")
    @classmethod
    def _ae_titles(cls, dests: dict[str, MoveDestination]) -> dict[str, MoveDestination]:
        for ae in dests:
            if not 0 < len(ae) <= 16:
                raise ValueError(f"{ae!r} is not an AE title (1 to 16 characters)")
        return dests

    @model_validator(mode="after")
    def _qr_archive_exists(self) -> Config:
        name = self.qr.archive
        if name is not None and not isinstance(self.destinations.get(name), ArchiveDestination):
            raise ValueError(f"qr.archive: {name!r} is not an archive destination")
        return self


def env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """`GATEWAY__DIMSE__PORT=4242` -> {"dimse": {"port": 4242}}; values parsed as YAML."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__") if k]
        if not keys:
            continue
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                break
        else:
            try:
                node[keys[-1]] = yaml.safe_load(raw) if raw != "" else ""
            except yaml.YAMLError:
                node[keys[-1]] = raw
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_path(explicit: str | Path | None) -> Path:
    return Path(explicit or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG)


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read, merge environment overrides, validate; raise ConfigError listing every problem."""
    path = config_path(path)
    environ = dict(os.environ) if environ is None else environ
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "yaml"
        raise ConfigError([f"{path}: {where}: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: top level: expected a mapping of keys"])
    merged = _merge(raw, env_overrides(environ))
    try:
        cfg = Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError([_problem(path, err) for err in exc.errors()]) from None
    base = path.resolve().parent
    return cfg.model_copy(
        update={
            "data_dir": (base / cfg.data_dir).resolve(),
            "rules_dir": (base / cfg.rules_dir).resolve(),
        }
    )


def _problem(path: Path, err: Any) -> str:
    loc = list(err["loc"])
    if len(loc) > 2 and loc[0] == "destinations" and loc[2] in _DESTINATION_TYPES:
        del loc[2]  # pydantic names the union member: destinations.pacs.dicom.port
    key = ".".join(str(p) for p in loc)
    reason = err["msg"]
    if err["type"] == "extra_forbidden":
        reason = "unknown key"
    return f"{path}: {key or 'top level'}: {reason}"


def warnings(cfg: Config) -> list[str]:
    """Settings that work but that an admin should hear about at start."""
    out = []
    aets = cfg.dimse.allowed_calling_aets
    if not aets:
        out.append("dimse.allowed_calling_aets is empty: every association will be refused")
    elif "*" in aets:
        out.append("dimse.allowed_calling_aets admits any calling AE ('*')")
    if not cfg.storage.fsync:
        out.append("storage.fsync is false: acknowledged instances can be lost on power failure")
    return out
