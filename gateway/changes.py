"""One change an action made (or, in a dry run, would make) to an instance."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Change:
    path: str  # "PatientName (0010,0010)", "ReferencedImageSequence[0].ReferencedSOPInstanceUID"
    action: str  # removed | emptied | dummy | replaced | kept | shifted | added
    old: str | None
    new: str | None
