"""`python -m controlplane.cli ...`, as the supervisor and the benchmarks start the CLI."""

from controlplane.cli import main

main()
