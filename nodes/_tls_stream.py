"""TLS over a ``ReadyStream`` that passes through the scheduler only when the socket makes it wait.

``trio.SSLStream`` takes a ``trio.Lock`` around every transport send and
every transport receive, and ``Lock.acquire`` always yields to the
scheduler, even uncontended: a request and its reply cost four event-loop
passes on top of the socket's own waits (two on each side), each 7-15 µs
on the 2-CPU benchmark machine.  ``TLSStream`` drives the same
``ssl.SSLObject`` over memory BIOs, and waits only where the socket does
(``ReadyStream``).  A ``Channel`` serialises its sends and has one reader,
so the only concurrency left is a read that produces bytes to send (a TLS
1.3 key update or session ticket): those go out under a lock taken without
a scheduler pass when it is free, in the order the SSL object made them.

Errors are trio's: ``trio.BrokenResourceError`` (with the ``ssl.SSLError``
as its cause, for ``ssl_reason``) when TLS fails or the peer is gone, and
``trio.ClosedResourceError`` after ``aclose``.
"""

from __future__ import annotations

import ssl
from typing import Any

import trio

from ._socket_stream import ReadyStream

__all__ = ["TLSStream"]

#: Bytes asked of the socket per read: TLS records are at most 16 KiB, and a
#: large frame arrives in many of them.
_TRANSPORT_RECEIVE = 256 << 10
_DEFAULT_RECEIVE = 65536
#: Bulk data (a migration's chunks) is encrypted and written in slices of this size, with a pass
#: through the scheduler after each, and a read of at least this much also lets other tasks run:
#: encrypting and writing 1 MiB takes about 1-2 ms on the 2-CPU benchmark machine, and a task that
#: sent 16 such frames without yielding held a node's event loop (and its calls) for 16-30 ms.
_BULK = 256 << 10


class TLSStream(trio.abc.Stream):
    """TLS client or server side over ``transport``; call ``do_handshake`` before anything else."""

    def __init__(self, transport: ReadyStream, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None) -> None:
        self.transport_stream = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                     server_hostname=server_hostname)
        self._send_lock = trio.Lock()
        self._broken: BaseException | None = None
        self._closed = False

    def getpeercert(self) -> dict[str, Any] | None:
        """The peer's certificate, as ``ssl.SSLObject.getpeercert`` gives it."""
        return self._ssl.getpeercert()

    def _check(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("the TLS stream is broken") from self._broken

    def _fail(self, exc: BaseException) -> trio.BrokenResourceError:
        self._broken = exc
        return trio.BrokenResourceError(f"TLS failed: {exc}")

    async def do_handshake(self) -> None:
        """Finish the TLS handshake.  Raises ``trio.BrokenResourceError`` if it fails or the peer leaves.

        Each step runs in a worker thread: its signatures and key exchange
        take 2-5 ms of CPU, and a node's calls waited that long behind each
        connection it opened or accepted (a migration's first call to its
        target, for one).  The SSL object is used by one thread at a time.
        """
        self._check()
        while True:
            try:
                done = await trio.to_thread.run_sync(self._handshake_step)
            except (ssl.SSLError, ssl.CertificateError) as exc:
                await self._flush_quietly()  # the alert tells the peer why
                raise self._fail(exc) from exc
            await self._flush()
            if done:
                return
            if not await self._fill():
                closed = ConnectionResetError("the peer closed the connection during the TLS handshake")
                raise self._fail(closed) from closed

    def _handshake_step(self) -> bool:
        """One step of the handshake; True once it is done, False when it needs the peer's next bytes."""
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    async def _fill(self) -> bool:
        """Read what the socket has into the SSL object; False at the end of the stream."""
        data = await self.transport_stream.receive_some(_TRANSPORT_RECEIVE)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def _flush(self) -> None:
        """Send what the SSL object has made, in the order it made it."""
        if not self._outgoing.pending:
            return
        try:  # uncontended in the common case; skip the scheduler round trip of acquire()
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            data = self._outgoing.read()  # read under the lock: whoever holds it sends the oldest bytes
            if data:
                try:
                    await self.transport_stream.send_all(data)
                except BaseException as exc:  # part of a record may have gone: the stream is unusable
                    self._broken = self._broken or exc
                    raise
        finally:
            self._send_lock.release()

    async def _flush_quietly(self) -> None:
        try:
            await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._check()
        if len(data) <= _BULK:
            self._write(data)
            await self._flush()
            return
        view = memoryview(data)
        for start in range(0, len(view), _BULK):
            self._write(view[start:start + _BULK])
            await self._flush()
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            try:
                self._ssl.write(data)  # into a memory BIO: always takes everything
            except ssl.SSLError as exc:
                raise self._fail(exc) from exc

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    def _read(self, size: int) -> bytes | None:
        """Decrypt up to ``size`` bytes; None when the SSL object needs more from the socket."""
        try:
            return self._ssl.read(size)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError:  # the peer's close_notify
            return b""
        except (ssl.SSLError, ssl.CertificateError) as exc:  # an alert, bad data, or an end without close_notify
            raise self._fail(exc) from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` of plaintext: all that decrypts without waiting, else what the next read brings.

        Returns b"" after the peer's close_notify; an end of the stream
        without one raises ``trio.BrokenResourceError``.
        """
        self._check()
        size = _DEFAULT_RECEIVE if max_bytes is None else max_bytes
        if size < 1:
            raise ValueError("max_bytes must be >= 1")
        while (data := self._read(size)) is None:
            await self._flush()  # reading may have made bytes to send (a key update's answer)
            await self._fill()   # at the end of the stream, the next read raises (or says close_notify)
        if data and len(data) < size:
            # several records came in one socket read: hand over all that decrypts without waiting
            pieces = [data]
            have = len(data)
            while have < size:
                try:
                    more = self._read(size - have)
                except trio.BrokenResourceError:  # raised again by the next receive, after this data
                    break
                if not more:
                    break
                pieces.append(more)
                have += len(more)
            if len(pieces) > 1:
                data = b"".join(pieces)
        if self._outgoing.pending:
            await self._flush()
        if len(data) >= _BULK:
            await trio.lowlevel.cancel_shielded_checkpoint()  # shielded: the data is ours to return
        return data

    async def aclose(self) -> None:
        """Send close_notify if the socket takes it at once, then close the socket; waits for nothing."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self._broken is None and not self._send_lock.locked():  # else our bytes would cut into a record
                try:
                    self._ssl.unwrap()
                except (ssl.SSLError, ValueError):  # SSLWantReadError: sent ours, the peer's is not awaited
                    pass
                self.transport_stream.send_nowait(self._outgoing.read())
        finally:
            await self.transport_stream.aclose()
