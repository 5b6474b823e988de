"""Runs and reports: one federated run from config to artefacts (``run``), the
references in the same harness (``baselines``, ``references``), the privacy-utility
``sweep``, the cold-start evaluation (``coldstart``) and the artefact writers
(``results``). The top of the library: may import everything in ``fedrec`` but the CLI.
"""
