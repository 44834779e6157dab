"""Fault-tolerance harness of docs/reliability.md: H1 crashes, H2 I/O faults, H3 power loss, H4
checker, H5 oracle."""
