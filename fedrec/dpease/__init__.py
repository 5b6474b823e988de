"""DP-EASE: EASE (Steck 2019) fitted on item statistics released once with user-level DP.

Two Gaussian sums over every device (q = 1), each clipped per user and noised by the
server (the same mechanism as a DP-FedAvg round): item counts, then the item-item
co-occurrence over the most frequent items. The server solves EASE on the noisy Gram;
devices score locally with the released weights and the noisy popularity prior.

May import ``fedrec.privacy``, ``fedrec.models``, ``fedrec.data``, ``fedrec.evaluation.scoring``
``fedrec.experiments.results`` and ``fedrec.fallback.features`` (public item content, imported
where used); never Flower (server/ drives it over a Grid).
"""
