"""Cold start: a central content-based recommender with a popularity prior, the
collaborative scorer built from a DP-EASE release (post-processing, no extra epsilon),
the routing that hands a user over to the on-device federated model as their history
grows, and the HTTP service (``service``, FastAPI). May import ``fedrec.data``,
``fedrec.models``, ``fedrec.training.local``, ``fedrec.evaluation.scoring``; never Flower.
"""

from fedrec.fallback.catalog import Catalog, build_catalog
from fedrec.fallback.content import BlendConfig, ContentRecommender
from fedrec.fallback.features import FeatureConfig
from fedrec.fallback.profile import Demographics, Profile, Query, resolve_profile
from fedrec.fallback.recommender import PopularityRecommender, Recommendation, Recommender, top_k
from fedrec.fallback.routing import Route, RoutedRecommender, RoutingConfig, blend_scores, route

__all__ = [
    "BlendConfig",
    "Catalog",
    "ContentRecommender",
    "Demographics",
    "FeatureConfig",
    "PopularityRecommender",
    "Profile",
    "Query",
    "Recommendation",
    "Recommender",
    "Route",
    "RoutedRecommender",
    "RoutingConfig",
    "blend_scores",
    "build_catalog",
    "resolve_profile",
    "route",
    "top_k",
]
