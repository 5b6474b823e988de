"""Differential privacy: clipping, noise, accounting, the ledger and its audit."""
