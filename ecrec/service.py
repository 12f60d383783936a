"""Chapter 08's HTTP service: ``GET /recommend`` over the two-stage pipeline, FastAPI on uvicorn, 127.0.0.1 only.

* :class:`Recommender`: what one request runs, in process: the user's recall
  candidates (chapter 05's hybrid, computed by the nightly batch for every
  known user), their features from a store (:mod:`ecrec.feature_store`, in
  memory or Redis), the DNN's input arrays (:class:`ecrec.feature_store.RequestEncoder`),
  one forward pass, the top ``k`` by score (ties: recall order). An unknown
  user gets the popularity list, with a note.
* :func:`create_app`: the FastAPI app. ``GET /recommend?user_id=&k=[&country=][&ts=]``
  returns ``{"user_id", "k", "source", "items": [{"item_id", "item_index", "score"}], "notes"}``;
  ``GET /health``. ``k`` missing, not an integer, <= 0 or above ``max_k``, an
  unknown query parameter, or a malformed value: 422 with a message that says
  what was wrong and what is accepted. The feature store down: 503 with its
  message, within the store's timeout (Redis: 0.5 s), and the next request
  after it returns is served again.
* :class:`ServiceProcess`: the app under uvicorn in a subprocess (one process
  per worker, ``--workers``), on a free port of 127.0.0.1, the pipeline
  handed over as a pickled bundle (:func:`write_bundle`); stopped with its
  workers on every path (:class:`ecrec.online_store.LocalServer`).
"""

from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from fastapi import (  # module level: FastAPI resolves the handlers' annotations here
    FastAPI,
    Query,
    Request,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ecrec.feature_store import RequestEncoder, StoreUnavailable
from ecrec.io import atomic_write
from ecrec.online_store import LocalServer, free_port

__all__ = ["Recommender", "create_app", "write_bundle", "app_from_env", "ServiceProcess", "BUNDLE_ENV"]

BUNDLE_ENV = "ECREC_SERVICE_BUNDLE"
QUERY_PARAMS = ("user_id", "k", "country", "ts")


@dataclass
class Recommender:
    """One request of the two-stage pipeline, in process.

    Attributes:
        model: the trained DNN (:class:`ecrec.ctr.TrainedDnn`).
        encoder: its :class:`ecrec.feature_store.RequestEncoder`.
        source: the feature store a request reads (``fetch``): in memory or Redis.
        candidates: customer id -> int (K,) catalogue item indexes from recall, best first (-1 padding allowed).
        popular: int (P,) the popularity list (catalogue indexes), best first, and ``popular_scores`` (P,) its
            distinct buyers: the fallback for a user recall does not know.
        at: the snapshot instant, the default request time; country: the default request country.
        max_k: the longest list a request may ask for.
    """

    model: object
    encoder: RequestEncoder
    source: object
    candidates: dict[int, np.ndarray]
    popular: np.ndarray
    popular_scores: np.ndarray
    at: pd.Timestamp
    country: str = "United Kingdom"
    max_k: int = 100
    notes_popular: str = "most popular items of the 30 days before the snapshot (not personalised)"
    stats: dict = field(default_factory=dict)

    @property
    def item_ids(self) -> np.ndarray:
        return self.encoder.item_ids

    def check_k(self, k: int) -> None:
        """Raises ValueError: ``k`` outside 1..max_k."""
        if not 1 <= int(k) <= self.max_k:
            raise ValueError(f"k must be between 1 and {self.max_k}, got {k}")

    def features(self, user_id: int, cands: np.ndarray, when, country) -> dict[str, np.ndarray]:
        """The DNN's input arrays of one user's candidates (feature lookup + encoding)."""
        f = self.source.fetch(user_id, self.encoder.store_row[cands])
        return self.encoder.encode(f, cands, when, country, user_id=user_id)

    def recommend(self, user_id: int, k: int, when=None, country: str | None = None) -> dict:
        """The final list for one request.

        Returns:
            ``{"user_id", "k", "source" ("ranked" | "popular"), "items": [{"item_id", "item_index",
            "score"}], "notes": [str]}``; scores are the DNN's logits (popular: distinct buyers).

        Raises:
            ValueError: ``k`` outside 1..max_k.
            StoreUnavailable: the feature store did not answer.
        """
        from ecrec.system import top_n

        self.check_k(k)
        when = self.at if when is None else pd.Timestamp(when)
        country = self.country if country is None else country
        user_id = int(user_id)
        notes: list[str] = []
        cand = self.candidates.get(user_id)
        if cand is None:
            n = min(k, len(self.popular))
            notes.append(f"user {user_id} is unknown to the recommender: {self.notes_popular}")
            items, scores, source = self.popular[:n], self.popular_scores[:n].astype(np.float64), "popular"
        else:
            cand = np.asarray(cand, dtype=np.int64)
            cand = cand[cand >= 0]
            logits = self.model.predict_logits_arrays(self.features(user_id, cand, when, country))
            items, scores = top_n(logits[None, :], cand[None, :], min(k, len(cand)))
            items, scores, source = items[0], scores[0], "ranked"
        if len(items) < k:
            notes.append(f"k={k} but only {len(items)} items to return")
        return {"user_id": user_id, "k": int(k), "source": source, "notes": notes,
                "items": [{"item_id": str(self.item_ids[i]), "item_index": int(i), "score": float(s)}
                          for i, s in zip(items, scores, strict=True)]}


# --- the HTTP app -------------------------------------------------------------


def _describe(errors) -> str:
    parts = []
    for e in errors:
        where = ".".join(str(x) for x in e.get("loc", ())[1:]) or "request"
        got = f" (got {e['input']!r})" if "input" in e and e.get("type") != "missing" else ""
        parts.append(f"{where}: {e.get('msg', 'invalid')}{got}")
    return "; ".join(parts)


def create_app(rec: Recommender):
    """The FastAPI app over ``rec``: ``GET /recommend`` and ``GET /health`` (see the module docstring)."""
    app = FastAPI(title="ecrec chapter 08", docs_url=None, redoc_url=None, openapi_url=None)
    usage = f"use /recommend?user_id=<customer id>&k=<1..{rec.max_k}>[&country=<name>][&ts=<ISO time>]"

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(status_code=422, content={"detail": f"{_describe(exc.errors())}; {usage}"})

    @app.get("/health")
    def health():
        try:
            rec.source.fetch(next(iter(rec.candidates), 0), rec.encoder.store_row[:1])
        except StoreUnavailable as e:
            return JSONResponse(status_code=503, content={"status": "unavailable", "detail": str(e)})
        return {"status": "ok", "pid": os.getpid(), "store": type(rec.source).__name__,
                "users": len(rec.candidates), "max_k": rec.max_k}

    @app.get("/recommend")
    def recommend(request: Request, user_id: int = Query(..., description="customer id"),
                  k: int = Query(..., ge=1, le=rec.max_k, description="length of the list"),
                  country: str | None = Query(None, min_length=1, max_length=64),
                  ts: str | None = Query(None, max_length=40)):
        extra = sorted(set(request.query_params) - set(QUERY_PARAMS))
        if extra or len(request.query_params.multi_items()) != len(request.query_params):
            what = f"unknown parameter(s) {extra}" if extra else "a parameter given twice"
            return JSONResponse(status_code=422, content={"detail": f"{what}; {usage}"})
        when = None
        if ts is not None:
            try:
                when = pd.Timestamp(ts)
            except (ValueError, TypeError):
                return JSONResponse(status_code=422, content={"detail": f"ts: not an ISO time (got {ts!r}); {usage}"})
            if pd.isna(when):
                return JSONResponse(status_code=422, content={"detail": f"ts: not an ISO time (got {ts!r}); {usage}"})
        try:
            return rec.recommend(user_id, k, when, country)
        except StoreUnavailable as e:
            return JSONResponse(status_code=503, content={"detail": f"feature store unavailable: {e}"})

    return app


# --- the server process -------------------------------------------------------


def write_bundle(rec: Recommender, path: str | Path) -> Path:
    """Pickle the recommender for the service's worker processes (atomically). Returns the path."""
    return atomic_write(path, lambda p: p.write_bytes(pickle.dumps(rec, protocol=pickle.HIGHEST_PROTOCOL)))


def app_from_env():
    """uvicorn's app factory in each worker: the bundle named by ``$ECREC_SERVICE_BUNDLE``, one thread."""
    import torch

    path = os.environ.get(BUNDLE_ENV)
    if not path or not Path(path).is_file():
        raise RuntimeError(f"${BUNDLE_ENV} must name a bundle written by ecrec.service.write_bundle, got {path!r}")
    torch.set_num_threads(int(os.environ.get("ECREC_SERVICE_THREADS", "1")))
    rec = pickle.loads(Path(path).read_bytes())
    return create_app(rec)


class ServiceProcess(LocalServer):
    """The service under uvicorn on a free 127.0.0.1 port: ``workers`` processes, one thread each.

    Args:
        bundle: a file from :func:`write_bundle`.
        workers: uvicorn worker processes (one process per worker).
        start_timeout_s: how long to wait for ``/health`` to answer.

    Raises:
        RuntimeError (from ``start``): uvicorn did not answer in time (with the end of its log).
    """

    def __init__(self, bundle: str | Path, *, workers: int = 1, port: int | None = None,
                 start_timeout_s: float = 90.0, log: str | Path | None = None):
        port = port or free_port()
        self.workers = int(workers)
        command = [sys.executable, "-m", "uvicorn", "ecrec.service:app_from_env", "--factory", "--host", "127.0.0.1",
                   "--port", str(port), "--workers", str(self.workers), "--log-level", "warning", "--no-access-log",
                   "--timeout-graceful-shutdown", "3"]
        env = {BUNDLE_ENV: str(Path(bundle).resolve()), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONHASHSEED": "0"}
        super().__init__(command, port, ready=self._health, start_timeout_s=start_timeout_s, log=log, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _health(self) -> bool:
        import httpx

        pids = set()
        for _ in range(8 * self.workers):  # ready when every worker answers: distinct pids on /health
            r = httpx.get(f"{self.url}/health", timeout=2.0)
            if r.status_code != 200:
                return r.status_code == 503  # up, its store down: started all the same
            pids.add(r.json()["pid"])
            if len(pids) >= self.workers:
                return True
        return False
