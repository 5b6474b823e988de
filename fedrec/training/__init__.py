"""Local training: every way a model's parameters are updated from interactions.

``steps`` holds what they all share, one function per concern (examples and negatives,
mini-batches, the loss, the optimizer and its step). ``local`` is one device's update
(plain), ``batched`` many devices' updates at once (the in-process engine's twin of
``local``), ``central`` and ``mf`` the centralized references. Record-level
DP-SGD is in :mod:`fedrec.privacy.local_dp`, on-device fold-in in
:mod:`fedrec.fallback.ondevice`. May import ``fedrec.models``, ``fedrec.data``,
``fedrec.evaluation``, ``fedrec.errors``; never the federation, engine or experiments.
"""
