"""The nodes package's error vocabulary.

One base class, ``NodeError``, so callers can catch everything the daemon,
its protocol and its client raise with one clause.  Following h11, protocol
errors are split by whose fault they are: ``LocalProtocolError`` when this
side misused the API (sent a reply to a request it never received, a frame
larger than the peer accepts), ``RemoteProtocolError`` when the peer sent
something the protocol forbids (garbage, an unknown message, an oversized
frame, no common version).

Workload failures (traps, limits, unknown workloads) keep the hosting
layer's own ``HostError`` classes; the wire carries them as an
``ErrorCode`` and the client raises the same class again, so code that
calls a workload locally or through a node catches the same exceptions.
"""

from __future__ import annotations


class NodeError(Exception):
    """Base class of every error the nodes package raises (hosting aside)."""


class LocalProtocolError(NodeError):
    """This side asked the protocol to do something it forbids."""


class MessageFieldError(LocalProtocolError, TypeError):
    """A message was given a value of the wrong type for one of its fields (a workload id that is not a str...).

    Raised before anything is sent; a ``TypeError`` too, as Python callers expect.
    """


class RemoteProtocolError(NodeError):
    """The peer violated the protocol; the connection cannot be used further."""


class ConfigError(NodeError):
    """Settings, flags, a config file or TLS material are unusable."""


class ConnectionFailed(NodeError):
    """A node could not be reached, refused us, or the connection broke."""


class RemoteNodeError(NodeError):
    """A node answered a request with an error that has no more specific class.

    ``code`` is the wire code: an ``ErrorCode``, or the plain string of
    another package's code (it compares equal to that package's enum
    member); ``str(exc)`` is the node's message.
    """

    def __init__(self, code: object, message: str) -> None:
        super().__init__(message)
        self.code = code


class Forbidden(RemoteNodeError):
    """The node refused a request that the role of our certificate may not send (code ``forbidden``).

    ``kind`` is the request's kind and ``role`` our certificate's role, as
    the node saw them; the request changed nothing.
    """

    def __init__(self, code: object, message: str, *, kind: str = "", role: str = "") -> None:
        super().__init__(code, message)
        self.kind = kind
        self.role = role


class NodeShuttingDown(ConnectionFailed):
    """The node closed the connection because it is shutting down.

    A node stopped with SIGTERM checkpoints its workloads and brings them
    back when it starts again, usually on the same address.
    """


class DamagedState(ConfigError):
    """The data directory holds saved state the node will not start from.

    A checkpoint that is incomplete, damaged or unreadable, or a module it
    needs that is missing.  ``path`` names the file or directory.  The
    operator repairs it or starts with ``--discard-state``.
    """

    def __init__(self, path: object, message: str) -> None:
        super().__init__(message)
        self.path = str(path)


class UndecryptableState(DamagedState):
    """Saved state failed authentication (``nodes._at_rest``): it was encrypted with another data key,
    or it was changed, truncated, reordered or swapped since the node wrote it.

    Nothing of it is restored; ``path`` names the file.
    """


class CheckpointFailed(NodeError):
    """SIGTERM's checkpoint could not be saved whole; the message says what failed and where."""
