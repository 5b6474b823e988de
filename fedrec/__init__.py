"""fedrec: a privacy-preserving federated recommender.

The library holds every piece of numerics, data handling and privacy accounting; it
never imports Flower. The Flower apps in ``clients/`` and ``server/`` are thin shells
around it.
"""

__version__ = "0.1.0"
