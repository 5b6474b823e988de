"""Flower ClientApp: the device side, a thin shell around :mod:`fedrec.federation.device`."""
