"""Data: loading labelled tables into `datasets` (`loading`), the one text builder (`text_encoding`), validation
splits (`splits`) and the bundled demo data (`demo`).

Imports `multitask.io` and the shared conventions only.
"""
