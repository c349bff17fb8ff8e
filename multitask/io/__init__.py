"""Input and output: the one table reader (`tables`), Hub I/O (`hub`) and the run directory (`rundir`).

Imports only the shared conventions (`multitask.errors`, `multitask.labels`); every other stage reads and writes
through here.
"""
