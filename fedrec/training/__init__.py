"""Local training: every way a model's parameters are updated from interactions.

``local`` is one device's update (plain), ``batched`` many devices' updates at once (the
in-process engine's twin of ``local``), ``central`` the centralized reference. Record-level
DP-SGD is in :mod:`fedrec.privacy.local_dp`, on-device fold-in in
:mod:`fedrec.fallback.ondevice`. May import ``fedrec.models``, ``fedrec.data``,
``fedrec.evaluation``, ``fedrec.errors``; never the federation, engine or experiments.
"""
