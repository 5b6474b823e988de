"""Leave-one-out evaluation: ranking metrics (``metrics``: HR@K, NDCG@K, sampled and
full ranking) and scoring a model on a user's held-out item (``scoring``). May import
``fedrec.models`` and ``fedrec.data`` only.
"""
