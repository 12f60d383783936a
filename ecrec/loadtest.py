"""A bounded load generator for chapter 08's service: N concurrent clients on loopback, latency and throughput.

:func:`run_level` runs ``clients`` asyncio tasks sharing one ``httpx.AsyncClient``;
each sends ``GET /recommend`` requests one after the other (a "closed loop":
a client waits for its answer before the next request) until ``n_requests``
have been sent **or** ``max_seconds`` have passed, whichever comes first:
every loop is bounded in count and in time, and stops by itself. Each
request has its own timeout. :func:`run_load` runs several levels one after
the other and returns one row per level: throughput (answered requests per
second of wall time), latency percentiles with their sample count
(:func:`ecrec.timing.percentiles_ms`: a percentile needs enough samples beyond
it, else NaN with a note), and the count of errors and timeouts.

Only 127.0.0.1 (or ``localhost``) is accepted as a target.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Sequence
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from ecrec.timing import percentiles_ms

__all__ = ["run_level", "run_load"]


def _check_url(base_url: str) -> None:
    host = urlparse(base_url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the load generator only targets this machine's loopback (127.0.0.1), got {base_url!r}")


async def _level(base_url: str, paths: Sequence[str], clients: int, n_requests: int, max_seconds: float,
                 timeout_s: float) -> dict:
    import httpx

    latencies: list[float] = []
    status: dict[str, int] = {}
    sent = 0
    t_start = time.perf_counter()
    deadline = t_start + max_seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < n_requests and time.perf_counter() < deadline:  # bounded in count and in time
            path = paths[sent % len(paths)]
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await http.get(path)
                key = str(r.status_code)
            except httpx.TimeoutException:
                key = "timeout"
            except httpx.HTTPError as e:
                key = type(e).__name__
            dt = time.perf_counter() - t0
            status[key] = status.get(key, 0) + 1
            if key == "200":
                latencies.append(dt)

    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as http:
        await asyncio.wait_for(asyncio.gather(*(client(http) for _ in range(clients))),
                               timeout=max_seconds + timeout_s + 5)
    wall = time.perf_counter() - t_start
    row = {"clients": clients, "sent": sent, "ok": len(latencies), "errors": sent - len(latencies),
           "status": status, "seconds": wall, "throughput_rps": len(latencies) / wall if wall > 0 else float("nan"),
           "stopped_by": "count" if sent >= n_requests else "time"}
    if latencies:
        row |= percentiles_ms(latencies)
    return row


def run_level(base_url: str, paths: Sequence[str], clients: int, n_requests: int, *, max_seconds: float = 120.0,
              timeout_s: float = 5.0) -> dict:
    """One load level: ``clients`` concurrent closed-loop clients, at most ``n_requests`` requests in all.

    Runs its own event loop in a worker thread (so it also works inside a
    running Jupyter kernel).

    Args:
        base_url: ``http://127.0.0.1:<port>``.
        paths: request paths cycled through (e.g. ``/recommend?user_id=...&k=10``).
        clients: concurrent clients, >= 1.
        n_requests: requests to send in all, >= 1.
        max_seconds: the level stops sending after this many seconds even if fewer were sent.
        timeout_s: per-request timeout (a timed-out request counts as an error).

    Returns:
        ``{"clients", "sent", "ok", "errors", "status" (code -> count), "seconds", "throughput_rps",
        "stopped_by", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "n", "note"}`` (percentiles of answered requests).

    Raises:
        ValueError: a target other than loopback, no path, ``clients < 1`` or ``n_requests < 1``.
    """
    _check_url(base_url)
    if not paths or clients < 1 or n_requests < 1 or max_seconds <= 0:
        raise ValueError(f"need paths, clients >= 1, n_requests >= 1 and max_seconds > 0; got {len(paths)} paths, "
                         f"clients={clients}, n_requests={n_requests}, max_seconds={max_seconds}")
    coro = _level(base_url, list(paths), clients, n_requests, max_seconds, timeout_s)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def run_load(base_url: str, paths: Sequence[str], levels: Sequence[int] = (1, 8, 32), n_requests: int = 2000, *,
             warmup: int = 50, max_seconds: float = 120.0, timeout_s: float = 5.0, progress: bool = False) -> pd.DataFrame:
    """Several load levels one after the other (each after ``warmup`` untimed requests); one row per level.

    Returns:
        DataFrame indexed by ``clients`` with the columns of :func:`run_level`.
    """
    from tqdm.auto import tqdm

    rows = []
    for clients in tqdm(list(levels), desc="load levels", disable=not progress):
        if warmup:
            run_level(base_url, paths, clients, warmup, max_seconds=max_seconds, timeout_s=timeout_s)
        shift = np.roll(np.asarray(paths, dtype=object), -warmup % max(len(paths), 1)).tolist()
        rows.append(run_level(base_url, shift, clients, n_requests, max_seconds=max_seconds, timeout_s=timeout_s))
    return pd.DataFrame(rows).set_index("clients")
