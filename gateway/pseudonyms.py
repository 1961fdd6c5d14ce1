"""Pseudonym store: which patient a pseudonymous Patient ID stands for, encrypted at rest.

De-identification replaces Patient ID and Patient's Name by a pseudonym derived from the
original ID under the gateway's secret (`gateway.deidentify`). The hash cannot be reversed,
so the pairs are kept here for an authorised admin to re-identify a patient: an SQLite file
created with mode 0600, one row per pseudonym, the original ID and name sealed with AES-GCM
under a key derived from the same secret (HKDF-SHA256) and bound to the pseudonym (the
associated data), so a row cannot be moved to another pseudonym. The pseudonym itself is
stored in clear: it is what the de-identified instances carry.

Opening a store with another secret than the one it was created with fails at once
(ValueError), rather than later on the first lookup.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE = 12
_CHECK = b"dicom-gateway pseudonym store"


class PseudonymCollision(ValueError):
    """Two patients got the same pseudonym: the template's {hash:N} is too short."""


class PseudonymStore:
    """Pseudonym -> (original Patient ID, Patient's Name), for authorised re-identification."""

    def __init__(self, path: Path | str, secret: bytes) -> None:
        self.path = Path(path)
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"gateway pseudonym store v1"
        ).derive(secret)
        self._aead = AESGCM(key)
        # Create the file ourselves so it never exists with the umask's mode, even briefly;
        # SQLite gives its journal the database file's mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(self.path, 0o600)
        self._db = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        self._known: dict[str, tuple[str, str]] = {}  # saves a write per instance
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS pseudonyms (pseudo_id TEXT PRIMARY KEY, sealed BLOB)"
            )
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, sealed BLOB)")
            row = self._db.execute("SELECT sealed FROM meta WHERE name = 'check'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('check', ?)", (self._seal(_CHECK, "check"),)
                )
            elif not self._opens(row[0]):
                self._db.close()
                raise ValueError(f"{self.path}: the secret does not match this pseudonym store")

    def record(self, pseudo_id: str, patient_id: str, patient_name: str) -> None:
        """Remember who `pseudo_id` stands for; raises PseudonymCollision for another patient."""
        if self._known.get(pseudo_id) == (patient_id, patient_name):
            return
        if self.lookup(pseudo_id) == (patient_id, patient_name):  # recorded by another process
            self._known[pseudo_id] = (patient_id, patient_name)
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT sealed FROM pseudonyms WHERE pseudo_id = ?", (pseudo_id,)
                ).fetchone()
                if row is not None:
                    old_id, _ = json.loads(self._open(row[0], pseudo_id))
                    if old_id != patient_id:
                        raise PseudonymCollision(
                            f"pseudonym {pseudo_id} already stands for another patient:"
                            " lengthen {hash:N} in the template"
                        )
                sealed = self._seal(json.dumps([patient_id, patient_name]).encode(), pseudo_id)
                self._db.execute(
                    "INSERT OR REPLACE INTO pseudonyms VALUES (?, ?)", (pseudo_id, sealed)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._known[pseudo_id] = (patient_id, patient_name)

    def lookup(self, pseudo_id: str) -> tuple[str, str] | None:
        """The original (Patient ID, Patient's Name) behind a pseudonym, or None if unknown."""
        with self._lock:
            row = self._db.execute(
                "SELECT sealed FROM pseudonyms WHERE pseudo_id = ?", (pseudo_id,)
            ).fetchone()
        if row is None:
            return None
        patient_id, patient_name = json.loads(self._open(row[0], pseudo_id))
        return patient_id, patient_name

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _seal(self, data: bytes, bound_to: str) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, data, bound_to.encode())

    def _opens(self, check: bytes) -> bool:
        try:
            return self._open(check, "check") == _CHECK
        except ValueError:
            return False

    def _open(self, sealed: bytes, bound_to: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], bound_to.encode())
        except InvalidTag:
            raise ValueError(f"{self.path}: a row does not open with this secret") from None
