"""The cold-start service: POST /recommend takes a sign-up profile, GET /health says it is up.

A thin FastAPI shell: it parses JSON into :class:`fedrec.fallback.Profile`, lets
:func:`fedrec.fallback.resolve_profile` validate it (every problem becomes one line of
a 422 answer; an unknown genre names the known ones) and returns the list of
:class:`fedrec.fallback.preferences.PreferenceRecommender`, with one reason per item and
``basis``: ``preferences`` when the user stated genres, liked items or text,
``popularity`` when they did not (an empty request gets the popularity list).
The service keeps no state about users and logs no ids.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fedrec.errors import ProfileError
from fedrec.fallback import Catalog, Demographics, Profile, resolve_profile
from fedrec.fallback.preferences import basis
from fedrec.fallback.profile import MAX_TEXT
from fedrec.fallback.recommender import Recommender

logger = logging.getLogger(__name__)

MAX_K = 100


class DemographicsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    age: int | None = None
    gender: str | None = None
    occupation: str | None = None


class RecommendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    genres: list[str] = Field(default_factory=list)
    liked_items: list[int | str] = Field(default_factory=list)  # the data set's own item ids
    text: str = Field(default="", max_length=10 * MAX_TEXT)  # free text; resolve_profile checks its length
    demographics: DemographicsIn | None = None
    k: int = Field(default=10, ge=1, le=MAX_K)


class ItemOut(BaseModel):
    item_id: int | str  # the data set's own id
    title: str
    score: float
    reason: str


class RecommendOut(BaseModel):
    basis: str  # "preferences" (what the user stated shapes the list) or "popularity" (nothing stated)
    items: list[ItemOut]


def _shown(part: object, limit: int = 40) -> str:
    """A request's own key as it may appear in a one-line message: escaped and short."""
    text = str(part)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _problems_from_pydantic(err: RequestValidationError) -> list[str]:
    out = []
    for e in err.errors():
        where = ".".join(_shown(p) for p in e.get("loc", ()) if p != "body")
        message = e.get("msg", "invalid")
        if where == "k":
            message = f"k must be an integer from 1 to {MAX_K} ({message})"
        out.append(f"{where or 'body'}: {message}")
    return out


def create_app(catalog: Catalog, recommender: Recommender) -> FastAPI:
    """The FastAPI app serving ``recommender`` (``serve-fallback``: the stated-preference one) over ``catalog``."""
    app = FastAPI(title="fedrec cold-start fallback", version="1")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _problems_from_pydantic(err)})

    @app.exception_handler(ProfileError)
    async def invalid_profile(_: Request, err: ProfileError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": err.problems})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "items": catalog.n_items, "genres": list(catalog.genre_names)}

    @app.post("/recommend", response_model=RecommendOut)
    async def recommend(body: RecommendIn) -> RecommendOut:
        demo = body.demographics or DemographicsIn()
        profile = Profile(
            genres=tuple(body.genres), liked_items=tuple(body.liked_items), text=body.text,
            demographics=Demographics(age=demo.age, gender=demo.gender, occupation=demo.occupation),
        )
        query = resolve_profile(profile, catalog)
        recs = recommender.recommend(query, k=body.k)
        return RecommendOut(
            basis=basis(query),
            items=[
                ItemOut(item_id=catalog.item_id(r.item), title=catalog.titles[r.item], score=r.score, reason=r.reason)
                for r in recs
            ]
        )

    return app


def serve(app: FastAPI, *, host: str, port: int, log_level: str = "warning") -> None:
    """Run ``app`` with uvicorn until interrupted."""
    import uvicorn
    from threadpoolctl import threadpool_limits

    # one request is a small product: BLAS threads only contend with each other (and the host)
    threadpool_limits(1)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
