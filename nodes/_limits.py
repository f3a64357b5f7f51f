"""Resource limits a node puts on the workloads it hosts.

One frozen dataclass, handed to ``Host`` at construction.  Per-workload
limits are enforced by wasmtime (``Store.set_limits``, the epoch deadline,
``Config.max_wasm_stack``); per-host and per-application limits are checked
by the host (``nodes._registry``) when a workload is deployed or restored,
or a move into it is announced.

Per-application limits are per *tenant*: an app name is ``TENANT`` or
``TENANT/NAME`` (``tenant_of``), and every app of one tenant shares one
workload count and one memory budget, so a tenant cannot widen its quota by
naming more apps.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits", "system_memory", "tenant_of"]


@dataclass(frozen=True)
class Limits:
    """Caps on what one workload, one application and the whole host may use.

    Raises ``ValueError`` at construction if a value is out of range.
    """

    #: Linear memory one workload may hold, in bytes (``Store.set_limits``).
    #: A guest ``memory.grow`` past it returns -1 (a host ``Memory.grow`` raises).
    memory_bytes: int = 256 * 2**20
    #: Time one call (and first boot, and a checkpoint) may run before it is
    #: stopped by the epoch deadline (``DeadlineExceeded``, wire code
    #: ``deadline_exceeded``).
    call_timeout_s: float = 30.0
    #: Workloads on one host.
    max_workloads: int = 1000
    #: Workloads one tenant (all its apps, ``tenant_of``) may have on one host.
    max_workloads_per_app: int = 1000
    #: Sum of the memory caps of one tenant's workloads on one host, or None
    #: for no cap.  Caps are reserved at deploy time, so the budget holds
    #: however the workloads grow afterwards.
    app_memory_bytes: int | None = None
    #: Sum of the memory caps of all workloads on one host, or None for no
    #: cap (a node's default is a share of physical memory: ``nodes._config``).
    workloads_memory_bytes: int | None = None
    #: Bytes of hibernation files (``nodes._hibernate``) on one host, or None
    #: for no cap: what hibernated workloads count against instead of memory.
    hibernated_bytes: int | None = None
    #: Table elements one workload may hold (``Store.set_limits``).
    table_elements: int = 100_000
    #: Native stack wasm may use (``Config.max_wasm_stack``); deeper
    #: recursion traps with ``STACK_OVERFLOW``.  An engine setting, so it is
    #: ignored when the caller hands ``Host`` its own engine.
    max_wasm_stack_bytes: int = 512 * 1024
    #: Bytes kept per output stream (stdout, stderr) per workload; the rest
    #: is dropped and counted, so a chatty guest cannot fill the disk.
    output_bytes: int = 1 * 2**20

    def __post_init__(self) -> None:
        positive = {
            "memory_bytes": self.memory_bytes,
            "call_timeout_s": self.call_timeout_s,
            "max_workloads": self.max_workloads,
            "max_workloads_per_app": self.max_workloads_per_app,
            "table_elements": self.table_elements,
            "max_wasm_stack_bytes": self.max_wasm_stack_bytes,
        }
        for optional in ("app_memory_bytes", "workloads_memory_bytes", "hibernated_bytes"):
            if getattr(self, optional) is not None:
                positive[optional] = getattr(self, optional)
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"Limits.{name} must be positive, got {value!r}")
        if self.output_bytes < 0:
            raise ValueError(f"Limits.output_bytes must not be negative, got {self.output_bytes!r}")


def tenant_of(app: str) -> str:
    """The tenant an app name belongs to: ``shop`` for ``shop`` and ``shop/cart``."""
    return app.partition("/")[0]


def system_memory() -> tuple[int, int]:
    """Return (total, available) bytes of this machine's memory, (0, 0) if unknown."""
    fields = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return fields.get("MemTotal", 0), fields.get("MemAvailable", 0)
