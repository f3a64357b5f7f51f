"""Settings for the whole suite: hypothesis without per-example deadlines.

A hypothesis deadline is a timing assertion: on a loaded 2-core CI machine
one example of a pure-function property took 202 ms against the 200 ms
default and failed the run.  Times belong in benchmarks/, so no example
has a deadline, and the too-slow health check (generation time) is off.
"""

from hypothesis import HealthCheck, settings

settings.register_profile("wasm-migrate", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("wasm-migrate")
