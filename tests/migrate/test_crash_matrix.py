"""The crash matrix: real nodes SIGKILLed and SIGTERMed at every phase of a move.

Each case starts edge-1 and cloud-1 (real ``migrate-node`` processes with
TLS) and an application with:

* the subject: a ``counter`` workload on edge-1 with two ``incr`` callers
  (each its own handle) and a writer of random bytes into a 2 MiB buffer,
  moved edge-1 -> cloud-1 by pre-copy while they run;
* a bystander counter on each node, with one caller, that does not move.

The node under test is started with MIGRATE_NODE_PAUSE_AT=<phase>; when it
logs "paused at <phase>" the test sends it the signal and later restarts it
on the same port and data dir.

* SIGKILL: the workloads are protected (checkpoints to the application's
  local node), since a killed owner keeps nothing; its workloads fail over.
* SIGTERM: no protection.  The stopped node finishes or aborts the move,
  checkpoints, and its restart must give back every workload it owned with
  its epoch and call ledger; handles wait for it.

Afterwards, in every case: no call lost or run twice, the buffer byte-exact,
the subject where the table says, and the restarted node claiming no
workload it does not own.  Then the subject moves once more, to the
restarted node, which must take it.
"""

import signal

import pytest
import trio

import migrate
import workloads
from benchmarks.loads import CounterLoad, MemoryLoad
from migrate._messages import MLocate
from migrate.wire import MIGRATION_PHASES

SOURCE, TARGET = "edge-1", "cloud-1"
BUFFER_BYTES = 2 * 2**20
SIGNALS = ("SIGKILL", "SIGTERM")
CHECKPOINT_WRITE = "checkpoint:write"

#: Where the subject runs once the interrupted move has settled, by phase
#: and signal.  A killed source's workload fails over to the application's
#: node ("local") and the handle then retries the move from there.
EXPECTED_OWNER = {
    ("source:before-incoming", "SIGKILL"): TARGET,
    ("source:after-round", "SIGKILL"): TARGET,
    ("source:frozen", "SIGKILL"): TARGET,
    ("source:after-commit", "SIGKILL"): TARGET,
    ("target:incoming", "SIGKILL"): SOURCE,
    ("target:chunk", "SIGKILL"): SOURCE,
    ("target:after-round", "SIGKILL"): SOURCE,
    ("target:before-commit", "SIGKILL"): SOURCE,
    ("target:after-commit", "SIGKILL"): SOURCE,
    # A stopping source finishes the move before it checkpoints.
    ("source:before-incoming", "SIGTERM"): TARGET,
    ("source:after-round", "SIGTERM"): TARGET,
    ("source:frozen", "SIGTERM"): TARGET,
    ("source:after-commit", "SIGTERM"): TARGET,
    # A stopping target refuses the next step, so the source aborts ...
    ("target:incoming", "SIGTERM"): SOURCE,
    ("target:chunk", "SIGTERM"): SOURCE,
    ("target:after-round", "SIGTERM"): SOURCE,
    # ... unless the commit request had already arrived: it is finished.
    ("target:before-commit", "SIGTERM"): TARGET,
    ("target:after-commit", "SIGTERM"): TARGET,
    # No move: the owner is stopped while it writes its checkpoint.
    (CHECKPOINT_WRITE, "SIGKILL"): migrate.LOCAL,
    (CHECKPOINT_WRITE, "SIGTERM"): SOURCE,
}


def test_the_matrix_covers_every_migration_phase():
    assert {phase for phase, _ in EXPECTED_OWNER} == set(MIGRATION_PHASES) | {CHECKPOINT_WRITE}


class Scenario:
    """The nodes, the application, the loads; and the checks every case ends with."""

    def __init__(self, node_procs, cluster_tls, phase: str, signal_name: str):
        self.phase, self.signal_name = phase, signal_name
        self.victim_name = TARGET if phase.startswith("target:") else SOURCE
        pause = {"MIGRATE_NODE_PAUSE_AT": phase}
        self.nodes = {
            SOURCE: node_procs.start(SOURCE, "edge", env=pause if self.victim_name == SOURCE else None),
            TARGET: node_procs.start(TARGET, "cloud", env=pause if self.victim_name == TARGET else None),
        }
        self.victim = self.nodes[self.victim_name]
        self.tls = cluster_tls.issue("app-1", "node")
        self.stop = trio.Event()
        self.loads: dict[str, CounterLoad] = {}

    async def start(self, cluster, nursery, *, subject_on: str = SOURCE):
        self.cluster = cluster
        counter = workloads.load("counter")
        self.subject = await cluster.spawn(counter, on=subject_on)
        self.memory = MemoryLoad(await cluster.attach(self.subject.workload), BUFFER_BYTES, seed=11)
        await self.memory.setup()
        self.bystanders = {name: await cluster.spawn(counter, on=name) for name in (SOURCE, TARGET)}
        if self.signal_name == "SIGKILL":
            for h in (self.subject, *self.bystanders.values()):
                await h.protect("checkpoint", interval_s=0.2, to=migrate.LOCAL)
        self.loads["subject"] = CounterLoad([await cluster.attach(self.subject.workload) for _ in range(2)])
        for name, h in self.bystanders.items():
            self.loads[name] = CounterLoad([await cluster.attach(h.workload)])
        for load in self.loads.values():
            nursery.start_soon(load.run, self.stop)
        nursery.start_soon(self.memory.run, self.stop)
        await trio.sleep(0.2)  # calls flowing before anything happens

    async def signal_at_pause(self) -> None:
        """Wait for the victim to pause at the phase, then signal it and wait for it to exit."""
        await self.victim.wait_for_log(f"paused at {self.phase}")
        self.epochs_before = await self.owned_by(self.victim)
        await self.send_signal()

    async def send_signal(self) -> None:
        if self.signal_name == "SIGKILL":
            self.victim.kill()
            return
        self.victim.proc.send_signal(signal.SIGTERM)
        status = await trio.to_thread.run_sync(self.victim.proc.wait, 60)
        assert status == 0, self.victim.log_text()

    async def owned_by(self, node) -> dict[str, int]:
        """The workloads of this test that ``node`` says it owns, with their epochs."""
        owned = {}
        client = await node.client(self.tls)
        try:
            for h in (self.subject, *self.bystanders.values()):
                where = await client.request(MLocate, workload=h.workload)
                if where.status == "owner":
                    owned[h.workload] = where.epoch
        finally:
            await client.aclose()
        return owned

    async def restart_victim(self, *args: str) -> None:
        self.victim.env = {}
        self.victim.args = [*self.victim.args, *args]
        await trio.to_thread.run_sync(self.victim.restart)

    async def owner_of(self, h) -> tuple[str, int]:
        """Where ``h``'s workload runs, once it runs somewhere: a failover may still be under way."""
        with trio.move_on_after(60):
            while (found := await self.cluster.locate(h.workload)) is None:
                await trio.sleep(0.05)
        assert found is not None, f"no node owns {h.workload}"
        name, _, epoch = found
        return name, epoch

    async def check_restarted_node(self) -> None:
        """The restarted victim owns exactly what the cluster says it owns, at the same epochs."""
        claims = await self.owned_by(self.victim)
        for h in (self.subject, *self.bystanders.values()):
            owner, epoch = await self.owner_of(h)
            if owner == self.victim_name:
                assert claims.get(h.workload) == epoch
            else:
                assert h.workload not in claims, (
                    f"{self.victim_name} claims {h.workload} at epoch {claims[h.workload]} after its restart, "
                    f"but {owner} owns it at epoch {epoch}")
        if self.signal_name == "SIGTERM":
            # Every workload it owned when it stopped came back, at the same epoch.
            for workload, epoch in self.epochs_before.items():
                if workload != self.subject.workload:  # the subject may have moved away meanwhile
                    assert claims.get(workload) == epoch, f"{workload} did not come back at epoch {epoch}"

    async def finish(self) -> None:
        await trio.sleep(0.3)  # calls flow through the restarted node
        self.stop.set()

    async def verdicts(self) -> None:
        for name, load in self.loads.items():
            h = self.subject if name == "subject" else self.bystanders[name]
            check = await load.check(h)
            assert load.errors == [], f"{name}: calls failed: {load.errors[:3]}"
            assert check.exact, f"{name}: {check}"
            assert check.calls > 0
        memory = await self.memory.check()
        assert self.memory.errors == [], f"memory: {self.memory.errors[:3]}"
        assert memory.exact, memory
        assert memory.writes > 0


async def _move(h) -> str:
    try:
        await h.migrate(TARGET, strategy="precopy")
        return "moved"
    except migrate.MigrationFailed:
        return "aborted"


@pytest.mark.parametrize("signal_name", SIGNALS)
@pytest.mark.parametrize("phase", MIGRATION_PHASES)
async def test_a_node_signalled_at_a_phase_of_a_move_loses_and_repeats_nothing(
        node_procs, cluster_tls, phase, signal_name):
    s = Scenario(node_procs, cluster_tls, phase, signal_name)
    with trio.fail_after(150):
        async with migrate.connect(str(s.nodes[SOURCE].address), str(s.nodes[TARGET].address), tls=s.tls) as c:
            async with trio.open_nursery() as nursery:
                await s.start(c, nursery)
                moved: list[str] = []

                async def move() -> None:
                    moved.append(await _move(s.subject))

                nursery.start_soon(move)
                await s.signal_at_pause()
                while not moved:  # the move settles: finished, aborted, or retried after a failover
                    await trio.sleep(0.05)
                await s.restart_victim()
                owner, _ = await s.owner_of(s.subject)
                assert owner == EXPECTED_OWNER[phase, signal_name], f"move {moved[0]}, subject on {owner}"
                await s.check_restarted_node()
                if owner != s.victim_name:
                    await s.subject.migrate(s.victim_name, strategy="precopy")
                    assert (await s.owner_of(s.subject))[0] == s.victim_name
                await s.finish()
            await s.verdicts()


@pytest.mark.parametrize("signal_name", SIGNALS)
async def test_a_node_signalled_while_it_writes_its_shutdown_checkpoint_loses_and_repeats_nothing(
        node_procs, cluster_tls, signal_name):
    """SIGTERM starts the checkpoint; the node pauses in it; then SIGKILL, or a second SIGTERM.

    The subject moved cloud-1 -> edge-1 first, so its epoch (2) must survive too.
    """
    s = Scenario(node_procs, cluster_tls, CHECKPOINT_WRITE, signal_name)
    with trio.fail_after(150):
        async with migrate.connect(str(s.nodes[SOURCE].address), str(s.nodes[TARGET].address), tls=s.tls) as c:
            async with trio.open_nursery() as nursery:
                await s.start(c, nursery, subject_on=TARGET)
                await s.subject.migrate(SOURCE, strategy="precopy")
                s.epochs_before = await s.owned_by(s.victim)
                s.victim.proc.send_signal(signal.SIGTERM)  # starts the shutdown checkpoint
                await s.victim.wait_for_log(f"paused at {CHECKPOINT_WRITE}")
                await s.send_signal()  # a second SIGTERM resumes the write
                # A half-written checkpoint stops the next start until the operator sets it aside
                # (tests/nodes/test_saved_state.py); the workloads failed over meanwhile.
                await s.restart_victim(*(["--discard-state"] if signal_name == "SIGKILL" else []))
                owner, _ = await s.owner_of(s.subject)
                assert owner == EXPECTED_OWNER[CHECKPOINT_WRITE, signal_name]
                await s.check_restarted_node()
                if owner != s.victim_name:
                    await s.subject.migrate(s.victim_name, strategy="precopy")
                await s.finish()
            await s.verdicts()
