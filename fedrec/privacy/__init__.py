"""Differential privacy, every number that decides epsilon in one place: Poisson
sampling (``sampling``), clipping, noise, the DP aggregator that wraps the mean and owns
z, C, q and the privacy session (``aggregator``, ``dp_fedavg``, ``session``), other
releases such as evaluation metrics (``eval_release``), Opacus accounting
(``accountant``), the signed ledger, its audit and report, record-level DP-SGD
(``local_dp``), canaries and the empirical audit. May import ``fedrec.models``,
``fedrec.data``, ``fedrec.training.local`` (DP-SGD's steps), ``fedrec.federation.fedavg``
numerics, ``fedrec.config`` and the artefact names of ``fedrec.experiments.results``;
never the round loop or the engine (the empirical audit imports them lazily).
"""
