"""UID validation: a UID becomes part of a path only after it passes here."""

import re

# Digits and dots, no empty component, at most 64 characters (PS3.5 9.1). Leading zeros in a
# component are tolerated: they are invalid DICOM but harmless in a path, and real devices
# send them.
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and _UID_RE.match(value) is not None
