"""The benchmarks: each ``bench_*`` module measures one layer against its physical floor, in the same run.

``python -m benchmarks [--quick]`` runs them all (``benchmarks.__main__``);
``benchmarks.suite`` compares the handover strategies over emulated links
(``benchmarks.netem``); ``benchmarks.soak`` moves workloads under calls
while nodes are killed.  Results go to benchmarks/results.
"""
