"""Destinations: where a worker delivers a batch of leased jobs.

The contract every destination keeps (see `Destination`):
- `send(jobs)` gets jobs of this destination only, all readable spool files, and returns
  one outcome per job id: None when the destination now has the instance, otherwise a
  `TransientError` (retry with backoff) or a `PermanentError` (dead-letter now).
- Delivery is idempotent per SOP Instance UID: sending the same instance twice is safe,
  because the queue is at-least-once.
- It never raises for a single job's failure; an exception out of `send` is treated as a
  transient failure of the whole batch.
"""

from __future__ import annotations

from typing import Protocol

from gateway.config import ArchiveDestination, Config, DicomDestination
from gateway.errors import DeliveryError
from gateway.queue import Job


class Destination(Protocol):
    name: str

    def send(self, jobs: list[Job]) -> dict[int, DeliveryError | None]: ...

    def close(self) -> None: ...


def build(name: str, cfg: Config) -> Destination:
    """The destination object for config entry `name`."""
    from gateway.destinations.archive import ArchiveStore
    from gateway.destinations.dicom import DicomStore

    spec = cfg.destinations[name]
    if isinstance(spec, DicomDestination):
        return DicomStore(name, spec, calling_ae=spec.calling_ae_title or cfg.ae_title)
    if isinstance(spec, ArchiveDestination):
        return ArchiveStore(
            name,
            cfg.archive_dir(spec),
            fsync=cfg.storage.fsync,
            # one index per database: the archive Q/R serves (cfg.qr_archive())
            index_db=cfg.db_path if name == cfg.qr_archive() else None,
            duplicates=spec.duplicates,
        )
    raise TypeError(f"no destination type for {spec!r}")
