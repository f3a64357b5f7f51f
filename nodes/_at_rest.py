"""Encryption at rest: the node's data key, and sealing the small files of a checkpoint with it.

Everything a node's checkpoint writes to disk is encrypted with AES-256-GCM
under one *data key*: 32 random bytes, kept as 64 hex digits in a file of
mode 0600 (``--data-key-file``; by default ``TLS_DIR/data.key``, or
``DATA_DIR/data.key`` for an ``--insecure`` node).  The node creates it at
its first start.  It is not derived from the TLS key on purpose: a
certificate and key replaced at run time (``nodes._credentials``) must not
make the saved state unreadable.  Losing the data key loses the saved
state; copy it with the TLS dir.

* Snapshot files are sealed by the snapshot format itself
  (``Snapshot.to_bytes(key=...)``): a random 8-byte salt per file in its
  header, one AES-GCM nonce per frame (salt + frame number), the header,
  frame type and frame number as associated data, and an END frame, so a
  flipped byte, a truncation, or frames dropped, reordered or moved between
  files are all detected.  Frames hold at most 4 MiB of pages, so a file of
  any size is sealed in chunks.
* The manifest, which holds the workloads' settings and the records other
  packages keep (the migration coordinator's epochs and call ledgers), is
  sealed whole here (``seal``/``unseal``): ``WMSEAL``, a version byte and a
  random 12-byte nonce, then the ciphertext; the header and the file's
  purpose are the associated data.  Each manifest entry names the 16-byte
  header of its snapshot file, so a snapshot file swapped for another
  workload's is refused too.

The start that makes the data key reads a checkpoint an earlier version
saved unencrypted (``nodes._daemon``); from then on only sealed state is
read.  A file that fails authentication raises ``UndecryptableState`` (a
``DamagedState``): the start is refused, nothing is restored, and
``--discard-state`` sets the files aside.  What this does not stop: an
attacker who can read the data key (for an ``--insecure`` node it sits
beside the data, so encryption there only keeps casual readers of a copied
data dir out), or one who puts back an older, authentic checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._errors import ConfigError, UndecryptableState

KEY_FILE = "data.key"
KEY_BYTES = 32
MAGIC = b"WMSEAL"
VERSION = 1
_NONCE_BYTES = 12
HEADER_BYTES = len(MAGIC) + 1 + _NONCE_BYTES


def load_data_key(path: Path, *, create: bool = True) -> bytes:
    """Read the data key from ``path``, creating it (mode 0600) if it is absent and ``create``.

    Raises ConfigError if it cannot be read or created, others than its
    owner may read or write it, or it does not hold 64 hex digits.
    """
    path = Path(path)
    if create and not path.exists():
        key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # made meanwhile by another process: read that one
        except OSError as exc:
            raise ConfigError(f"cannot create the data key {path}: {exc.strerror}; "
                              "set --data-key-file to a writable place") from None
        else:
            with os.fdopen(fd, "w") as f:
                f.write(key.hex() + "\n")
                f.flush()
                os.fsync(f.fileno())
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the data key {path}: {getattr(exc, 'strerror', exc)}") from None
    if mode & 0o077:
        raise ConfigError(f"the data key {path} has mode {mode:04o}: others may read it; chmod 600 it")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(f"the data key {path} must hold {KEY_BYTES * 2} hex digits (a 256-bit key)")
    return key


def is_sealed(data: bytes) -> bool:
    """Tell whether ``data`` starts like a file ``seal`` wrote."""
    return data[:len(MAGIC)] == MAGIC


def seal(key: bytes, data: bytes, purpose: bytes) -> bytes:
    """Encrypt ``data`` for a file whose role is ``purpose`` (e.g. ``b"manifest"``)."""
    header = MAGIC + bytes([VERSION]) + os.urandom(_NONCE_BYTES)
    return header + AESGCM(key).encrypt(header[-_NONCE_BYTES:], data, header + purpose)


def unseal(key: bytes, blob: bytes, purpose: bytes, path: Path) -> bytes:
    """Decrypt what ``seal`` wrote into ``path``.

    Raises UndecryptableState naming ``path`` when it is not a sealed file,
    was sealed for another purpose, with another key, or was changed.
    """
    if not is_sealed(blob) or len(blob) < HEADER_BYTES:
        raise UndecryptableState(path, f"{path} is not encrypted, but this node encrypts its saved state; "
                                       "refusing unauthenticated input")
    if blob[len(MAGIC)] != VERSION:
        raise UndecryptableState(path, f"{path} is sealed with format version {blob[len(MAGIC)]}, "
                                       f"this build reads version {VERSION}")
    header = blob[:HEADER_BYTES]
    try:
        return AESGCM(key).decrypt(header[-_NONCE_BYTES:], blob[HEADER_BYTES:], header + purpose)
    except InvalidTag:
        raise UndecryptableState(path, f"{path} failed authentication: it was encrypted with another "
                                       "data key, or it was changed since it was written") from None
