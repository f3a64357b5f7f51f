"""The nodes' memory over a move (``benchmarks.suite._memory``), read off a real process that grows and shrinks."""

import subprocess
import sys

from benchmarks.suite._memory import after_move, before_move

MiB = 2**20

#: Waits for a line, then touches 64 MiB, frees it and says so; waits again before it ends.
GROWER = """
import sys
sys.stdin.readline()
block = bytearray(64 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
del block
print("done", flush=True)
sys.stdin.readline()
"""


def test_the_peak_is_reset_before_and_holds_what_the_process_touched_meanwhile():
    proc = subprocess.Popen([sys.executable, "-c", GROWER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pids = {"node": proc.pid}
        before = before_move(pids)
        assert before["node"] > 0
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "done\n"
        [(name, memory)] = after_move(pids, before).items()
        assert name == "node" and memory.before_bytes == before["node"]
        assert memory.peak_bytes >= memory.before_bytes + 60 * MiB  # freed again, but the peak keeps it
        again = before_move(pids)  # reset: the peak comes back down to what it holds now
        assert after_move(pids, again)["node"].peak_bytes < memory.peak_bytes - 60 * MiB
    finally:
        proc.kill()
        proc.wait()


def test_a_process_it_cannot_read_is_left_out():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    pids = {"gone": proc.pid}
    assert before_move(pids) == {} and after_move(pids, {}) == {}
