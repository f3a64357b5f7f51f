"""The snapshot package's error vocabulary.

One base class, ``SnapshotError``, so callers can catch everything this
package raises with one clause.  Following h11, errors are split by whose
fault they are: ``LocalSnapshotError`` when the caller misused the API or
handed over something unusable (a bad module, unrepresentable state), and
``RemoteSnapshotError`` when bytes that came from elsewhere (a file, a peer)
are corrupt, truncated, tampered with or otherwise refused.
"""

from __future__ import annotations


class SnapshotError(Exception):
    """Base class of every error the snapshot package raises."""


class LocalSnapshotError(SnapshotError):
    """The caller asked for something this package cannot do."""


class RemoteSnapshotError(SnapshotError):
    """Encoded snapshot bytes were refused."""


# --- module preparation -------------------------------------------------

class InvalidModuleError(LocalSnapshotError):
    """The bytes are not a core WebAssembly module we can prepare."""


class UnsupportedFeatureError(InvalidModuleError):
    """A valid module that uses a feature whose state cannot be captured; the message names the item and the feature."""


# --- capture / restore --------------------------------------------------

class UnrepresentableStateError(LocalSnapshotError):
    """Instance state cannot be written into a snapshot (e.g. a host externref)."""


class ModuleMismatchError(LocalSnapshotError):
    """The snapshot was taken from a different prepared module than the target's."""


class IncompatibleSnapshotError(LocalSnapshotError):
    """The snapshot does not fit the target instance (sizes, types, limits)."""


class BaseMismatchError(LocalSnapshotError):
    """A delta was applied to a state other than the one it was taken against."""


class DirtyTrackingError(LocalSnapshotError):
    """The dirty-page tracker could not be set up or lost track of writes."""


# --- encoded form -------------------------------------------------------

class CorruptSnapshotError(RemoteSnapshotError):
    """The encoding is malformed or a checksum does not match."""


class TruncatedSnapshotError(CorruptSnapshotError):
    """The encoding ends before the snapshot is complete."""


class UnsupportedVersionError(RemoteSnapshotError):
    """The encoding uses a format version this code does not read."""


class AuthenticationError(RemoteSnapshotError):
    """Decryption failed: the wrong key, or the bytes were tampered with."""


class OversizedSnapshotError(RemoteSnapshotError):
    """A frame or the state it describes exceeds the configured limits."""
