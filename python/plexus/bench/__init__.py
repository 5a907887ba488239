"""plexus-bench: nccl-tests-style microbenchmarks of plexus against gloo, MPI and NCCL.

Run `plexus-bench --help` (or `python -m plexus.bench --help`). Modules, one job each:
cli (arguments, one rank's run), launch (starting ranks, rendezvous), systems (plexus and peers),
collectives (sizes, busbw factors, expected results), data (inputs and the check), sweep (timing
loop), report (table, JSON), plot.
"""
