"""Flower ServerApp: the server side, a thin shell around :mod:`fedrec.federation.rounds`."""
