"""The operation log: one entry format for handles, owners, standbys and replays.

A state-changing operation (a call or a memory write) is logged so that
another copy of the workload can run it again: a failover replays the
application's log on a checkpoint, a standby replays what its owner
forwards, and a dual handover's target replays what its source forwards.
Handles and nodes build entries with the same function, ``log_entry``.

An entry is a plain map (it travels in ``MReplay``):

* ``op``: "call" or "write";
* ``export``, ``args``: what a call ran;
* ``offset``, ``payload``: where a write wrote, and the bytes it wrote;
* ``caller``, ``seq``: the handle and its sequence number (the ledger key);
* ``index``: the operation's position in the workload's order of
  state-changing operations (1, 2, ...);
* ``inputs``: the nondeterministic inputs a call consumed, or None;
* the outcome: ``ok``, then ``values`` and ``result`` (the bytes the
  operation returned, empty for calls and writes) when it succeeded, or
  ``code`` and ``message`` when it failed.

The request's ``payload`` and the reply's ``result`` are separate fields:
a replay writes the payload and compares the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import trio

from nodes import code_for

from ._ledger import Outcome
from ._messages import MCall, MResult

#: Bytes an entry takes on the wire besides its payload, result and inputs
#: (keys, ids, numbers); an over-estimate, used only to size batches.
ENTRY_OVERHEAD_BYTES = 512


def log_entry(call: MCall, outcome: Outcome) -> dict | None:
    """The log entry of ``call`` with ``outcome``; None if it changed no state (index 0)."""
    base = {"op": call.op, "export": call.export, "args": list(call.args), "offset": call.offset,
            "payload": call.data if call.op == "write" else b"", "caller": call.caller, "seq": call.seq}
    index = outcome_index(outcome)
    if not index:
        return None
    if outcome.ok:
        values, result, _, inputs = outcome.value
        return {**base, "index": index, "inputs": inputs, "ok": True, "values": list(values),
                "result": bytes(result)}
    return {**base, "index": index, "inputs": (outcome.value or {}).get("op_inputs"), "ok": False,
            "code": outcome.code, "message": outcome.message}


def outcome_index(outcome: Outcome) -> int:
    """The operation index a state-changing call ran as (its outcome records it); 0 if it changed no state."""
    if outcome.ok:
        return outcome.value[2]
    return dict(outcome.value or {}).get("op_index") or 0


def reply_outcome(reply: MResult) -> Outcome:
    """The outcome an owner recorded for a call it answered with ``reply``."""
    return Outcome(True, (list(reply.values), reply.data, reply.index, reply.inputs))


def error_outcome(exc: BaseException) -> Outcome:
    """The outcome an owner recorded for a call it answered with the error ``exc``."""
    details = {"op_index": getattr(exc, "op_index", 0), "op_inputs": getattr(exc, "op_inputs", None)}
    code = getattr(exc, "code", None)
    return Outcome(False, details, str(code) if code else str(code_for(exc)), str(exc))


def replayed_call(workload: str, entry: dict) -> MCall:
    """The operation ``entry`` logged, as a call to run again.

    Raises KeyError, TypeError or ValueError for a malformed entry.
    """
    if entry["op"] not in ("call", "write"):
        raise ValueError(f"operation {entry['op']!r} is not replayable")
    payload = entry.get("payload", b"")
    if not isinstance(payload, bytes):
        raise TypeError("payload must be bytes")
    return MCall(id=0, workload=workload, op=entry["op"], caller=str(entry["caller"]), seq=int(entry["seq"]),
                 export=str(entry.get("export", "")), args=tuple(entry.get("args", ())),
                 offset=int(entry.get("offset", 0)), data=payload)


def entry_outcome(entry: dict) -> Outcome:
    """The outcome ``entry`` logged, as the call ledger keeps it."""
    if entry["ok"]:
        return Outcome(True, (list(entry.get("values", ())), entry.get("result", b""), entry["index"],
                              entry.get("inputs")))
    return Outcome(False, {"op_index": entry["index"]}, entry.get("code", "workload_error"),
                   entry.get("message", ""))


def divergence(entry: dict, got: Outcome) -> str | None:
    """Why a replayed outcome ``got`` differs from the one ``entry`` logged, or None."""
    if bool(entry["ok"]) != got.ok:
        return f"operation {entry['index']} {'succeeded' if got.ok else 'failed'} on replay, not originally"
    if not got.ok:
        if entry.get("code") == got.code:
            return None
        return f"operation {entry['index']} failed with {got.code}, originally {entry.get('code')}"
    values, result, _, _ = got.value
    if list(entry.get("values", ())) != list(values):
        return f"operation {entry['index']} returned {list(values)!r}, originally {list(entry.get('values', ()))!r}"
    if entry.get("result", b"") != result:
        return f"operation {entry['index']} returned {len(result)} other bytes than originally"
    return None


def entry_bytes(entry: dict) -> int:
    """An upper estimate of ``entry``'s size on the wire."""
    return ENTRY_OVERHEAD_BYTES + _size(entry.get("payload")) + _size(entry.get("result")) + _size(entry.get("inputs"))


def batches(entries: Iterable[dict], max_bytes: int) -> Iterator[tuple[dict, ...]]:
    """Split entries, in order, into batches of at most ``max_bytes`` (estimated).

    An entry larger than ``max_bytes`` on its own makes a batch of one.
    """
    batch: list[dict] = []
    size = 0
    for entry in entries:
        n = entry_bytes(entry)
        if batch and size + n > max_bytes:
            yield tuple(batch)
            batch, size = [], 0
        batch.append(entry)
        size += n
    if batch:
        yield tuple(batch)


def _size(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, (bytes, bytearray, str)):
        return len(value) + 5
    if isinstance(value, dict):
        return sum(_size(k) + _size(v) for k, v in value.items()) + 5
    if isinstance(value, (list, tuple)):
        return sum(_size(v) for v in value) + 5
    return 9


def _drain(receive: trio.MemoryReceiveChannel[dict[str, Any]]) -> list[dict[str, Any]]:
    """What ``receive`` holds now, without waiting; an empty list once it is closed and empty."""
    batch: list[dict[str, Any]] = []
    while True:
        try:
            batch.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):  # a closed channel: the reader's loop ends next
            return batch
