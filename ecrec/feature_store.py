"""Chapter 08's feature store: chapter 03's point-in-time features as columnar arrays, in memory or in Redis.

A ranker's request needs, for one user and K candidate items, the user's
features (history, frequency, spend, recency), each item's features
(popularity, shares, price, age) and each (user, item) pair's (past
purchases of that item). Offline, :func:`ecrec.features.point_in_time_features`
recomputes them from the log for every example; a request cannot wait for
that. A feature store computes them **once**, at a snapshot instant ``at``
(a nightly batch job in a shop), and serves them by lookups:

* :class:`FeatureStore`: the snapshot as columnar numpy arrays, one row per
  user, per item and per past (user, item) pair; a lookup is integer
  indexing (``users -> row`` in a dict, items by their row, pairs by binary
  search in a sorted key array). Tens of microseconds for K = 100.
* :class:`RedisFeatureStore`: the same snapshot written to a Redis server
  (:func:`write_to_redis`; :class:`ecrec.online_store.RedisServer` starts one)
  and read back with **one pipelined round trip** per request (``GET`` user,
  ``MGET`` items, ``HMGET`` pairs). Same values, bit for bit; plus the network hop.

Both answer :meth:`fetch` (one request: a user and K item rows) with a
:class:`RequestFeatures`; :class:`RequestEncoder` turns that, with the
request's context, into the DNN's input arrays (``cat``, ``num``, ``hist``,
``text``) without building a DataFrame: the same numbers as
``model.preprocessor.transform(add_item_attributes(frame))`` (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ecrec import features as F
from ecrec.schema import HIST_ITEMS, INVOICE_NO, ITEM_ID, TS, USER_ID

__all__ = ["USER_COLUMNS", "PAIR_COLUMNS", "RequestFeatures", "FeatureStore", "RedisFeatureStore",
           "write_to_redis", "RequestEncoder", "StoreUnavailable"]

_DAY_S = 86_400.0
USER_COLUMNS = (HIST_ITEMS, "hist_len", "u_n_invoices", "u_n_lines", "u_spend", "u_days_since_last",
                "u_tenure_days")
PAIR_COLUMNS = ("ui_n_before", "ui_days_since_last")


class StoreUnavailable(RuntimeError):
    """The online store did not answer (stopped, unreachable or slower than its timeout)."""


@dataclass
class RequestFeatures:
    """One request's features: a user and K items (all columnar).

    Attributes:
        known: the user has a purchase before ``at`` (else the newcomer's defaults).
        user: user column -> scalar (``hist_len`` and ``u_*``, their snapshot dtypes).
        hist: int64 (h,) item rows of the user's history, newest first (h <= history_len).
        items: item column (``i_*``) -> (K,) array.
        pairs: ``ui_n_before`` (float64, 0 = never bought) and ``ui_days_since_last`` (float64, NaN) -> (K,).
    """

    known: bool
    user: dict[str, object]
    hist: np.ndarray
    items: dict[str, np.ndarray]
    pairs: dict[str, np.ndarray]


class FeatureStore:
    """Chapter 03's point-in-time features at one instant ``at``, held as columnar arrays.

    User features and item features are computed once with
    :func:`ecrec.features.point_in_time_features` at ``at`` for every user and
    item with a purchase before ``at`` (plus one "ghost" row each, what the
    function gives a newcomer: zero counts, NaN recencies, empty history);
    user x item features come from a sorted int64 key array of past (user,
    item) purchases. Every value uses only events strictly before ``at``:
    :meth:`lookup` equals ``point_in_time_features`` with ``ts = at`` row for
    row (tested). Features measured in days are measured to ``at``, not to
    the request time: a request later than the snapshot sees them as of the snapshot.

    Attributes:
        at: the snapshot instant.
        users: int64 (n_users,) customer ids (row order); items: str (n_items,) stock codes.
        user_cols: column -> (n_users + 1,) array, the last row the ghost user.
        hist_rows: int64 (n_users + 1, history_len) item rows of each history, -1 padded.
        item_cols: ``i_*`` column -> (n_items + 1,) array, the last row the ghost item.
    """

    def __init__(self, events: pd.DataFrame, at, *, history_len: int = 10, pop_windows: tuple[int, ...] = (7, 30)):
        """Build the snapshot (a batch job: seconds, once).

        Args:
            events: :func:`ecrec.features.purchase_events` (may include later events: they are ignored).
            at: the snapshot instant.
            history_len, pop_windows: as chapter 03's dataset (``CtrDatasetConfig``).

        Raises:
            ValueError: ``events`` holds no event before ``at``.
        """
        self.at = pd.Timestamp(at)
        past = events[events[TS] < self.at]
        if past.empty:
            raise ValueError(f"no purchase event before {self.at}: nothing to build features from")
        self.history_len, self.pop_windows = history_len, tuple(pop_windows)
        users = np.sort(past[USER_ID].unique()).astype(np.int64)
        items = np.sort(past[ITEM_ID].astype(str).unique())
        ghost_user, ghost_item = int(users.min()) - 1, "\x00unknown"
        kw = {"history_len": history_len, "pop_windows": self.pop_windows}
        u_ex = pd.DataFrame({USER_ID: np.append(users, ghost_user), ITEM_ID: ghost_item, TS: self.at})
        u_feats = F.point_in_time_features(u_ex, past, **kw)
        i_ex = pd.DataFrame({USER_ID: ghost_user, ITEM_ID: np.append(items, ghost_item).astype(object), TS: self.at})
        i_feats = F.point_in_time_features(i_ex, past, **kw)
        self.users, self.items = users, items
        self._user_row = dict(zip(users.tolist(), range(len(users)), strict=True))
        self._item_index = pd.Index(items)
        self.user_cols = {c: u_feats[c].to_numpy() for c in USER_COLUMNS if c != HIST_ITEMS}
        self.hist_series = u_feats[HIST_ITEMS].reset_index(drop=True)  # lists, for frame() only
        hm = F.hist_matrix(self.hist_series, self._item_index, history_len)
        self.hist_rows = np.where(hm >= 0, hm, -1).astype(np.int64)
        self.item_columns = [c for c in i_feats.columns if c.startswith("i_")]
        self.item_cols = {c: i_feats[c].to_numpy() for c in self.item_columns}
        pairs = past.groupby([USER_ID, ITEM_ID], sort=False)[TS].agg(["size", "max"]).reset_index()
        u_pos = np.searchsorted(users, pairs[USER_ID].to_numpy())
        i_pos = self._item_index.get_indexer(pairs[ITEM_ID].astype(str).to_numpy())
        keys = self._pair_key(u_pos, i_pos)
        order = np.argsort(keys)
        self.pair_keys = keys[order]
        self.pair_cols = {"ui_n_before": pairs["size"].to_numpy(np.float64)[order],
                          "ui_days_since_last": ((self.at - pairs["max"]).dt.total_seconds().to_numpy()
                                                 / _DAY_S)[order]}

    # --- integer indexes ---------------------------------------------------------

    def _pair_key(self, u_rows, i_rows) -> np.ndarray:
        return np.asarray(u_rows, dtype=np.int64) * (len(self.items) + 1) + np.asarray(i_rows, dtype=np.int64)

    def user_row(self, user_id) -> int:
        """The user's row, -1 when the user has no purchase before ``at``."""
        return self._user_row.get(int(user_id), -1)

    def user_rows(self, user_ids) -> np.ndarray:
        """int64 rows of many users (-1: unknown)."""
        u = np.asarray(user_ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.users, u), len(self.users) - 1)
        return np.where(self.users[pos] == u, pos, -1)

    def item_rows(self, item_ids) -> np.ndarray:
        """int64 rows of stock codes (-1: no sale before ``at``)."""
        return self._item_index.get_indexer(np.asarray(item_ids).astype(str)).astype(np.int64)

    # --- lookups -----------------------------------------------------------------

    def lookup(self, user_rows, item_rows) -> dict[str, np.ndarray]:
        """Feature columns of (user row, item row) pairs by integer indexing (no log, no DataFrame).

        Args:
            user_rows, item_rows: int (r,) rows from :meth:`user_rows` / :meth:`item_rows`; -1 = unknown.

        Returns:
            column -> (r,) array: ``hist_len``, ``u_*``, ``i_*``, ``ui_*`` (not ``hist_items``: see ``hist_rows``).

        Raises:
            ValueError: arrays of different lengths.
        """
        u = np.asarray(user_rows, dtype=np.int64)
        i = np.asarray(item_rows, dtype=np.int64)
        if u.shape != i.shape:
            raise ValueError(f"user_rows and item_rows differ in shape: {u.shape} vs {i.shape}")
        ur = np.where(u >= 0, u, len(self.users))  # the ghost row: a user without history
        ir = np.where(i >= 0, i, len(self.items))
        out = {c: v[ur] for c, v in self.user_cols.items()} | {c: v[ir] for c, v in self.item_cols.items()}
        return out | self._pairs(u, i)

    def _pairs(self, u: np.ndarray, i: np.ndarray) -> dict[str, np.ndarray]:
        n_before, days = np.zeros(len(u)), np.full(len(u), np.nan)
        known = (u >= 0) & (i >= 0)
        if known.any() and len(self.pair_keys):
            q = self._pair_key(u[known], i[known])
            pos = np.minimum(np.searchsorted(self.pair_keys, q), len(self.pair_keys) - 1)
            hit = self.pair_keys[pos] == q
            idx = np.flatnonzero(known)[hit]
            n_before[idx] = self.pair_cols["ui_n_before"][pos[hit]]
            days[idx] = self.pair_cols["ui_days_since_last"][pos[hit]]
        return {"ui_n_before": n_before, "ui_days_since_last": days}

    def fetch(self, user_id, item_rows) -> RequestFeatures:
        """One request's features: the user and K item rows (-1: an item with no sale before ``at``)."""
        u = self.user_row(user_id)
        i = np.asarray(item_rows, dtype=np.int64)
        ur, ir = (u if u >= 0 else len(self.users)), np.where(i >= 0, i, len(self.items))
        hist = self.hist_rows[ur]
        return RequestFeatures(u >= 0, {c: v[ur] for c, v in self.user_cols.items()}, hist[hist >= 0],
                               {c: v[ir] for c, v in self.item_cols.items()},
                               self._pairs(np.full(len(i), u, dtype=np.int64), i))

    def frame(self, user_ids, item_ids, when, country) -> pd.DataFrame:
        """Feature rows for (user, item) pairs as chapter 03's DataFrame (offline scoring, checks).

        Args:
            user_ids: (r,) customer ids; item_ids: (r,) stock codes (str);
            when: (r,) request times (datetime64) or one time; country: (r,) countries or one.

        Returns:
            Frame of r rows: ``user_id``, ``item_id``, ``ts`` (= ``when``),
            ``invoice_no`` (``"request-<user_id>"``), ``country``, the user
            columns, ``i_*``, ``ui_*``, ``hour``, ``weekday``, ``month``.

        Raises:
            ValueError: arrays of different lengths.
        """
        u = np.asarray(user_ids, dtype=np.int64)
        it = np.asarray(item_ids).astype(str)
        if len(u) != len(it):
            raise ValueError(f"user_ids and item_ids differ in length: {len(u)} vs {len(it)}")
        r = len(u)
        when = pd.DatetimeIndex(np.broadcast_to(np.asarray(when, dtype="datetime64[ns]"), (r,)))
        u_rows = self.user_rows(u)
        cols = self.lookup(u_rows, self.item_rows(it))
        hist = self.hist_series.iloc[np.where(u_rows >= 0, u_rows, len(self.users))].reset_index(drop=True)
        out = pd.DataFrame({USER_ID: u, ITEM_ID: it, TS: when, INVOICE_NO: np.char.add("request-", u.astype(str)),
                            "country": np.broadcast_to(np.asarray(country, dtype=object), (r,))})
        out[HIST_ITEMS] = hist
        for c in [*USER_COLUMNS[1:], *self.item_columns, *PAIR_COLUMNS]:
            out[c] = cols[c]
        out["hour"] = np.asarray(when.hour, dtype=np.int64)
        out["weekday"] = np.asarray(when.day_of_week, dtype=np.int64)
        out["month"] = np.asarray(when.month, dtype=np.int64)
        return out

    def nbytes(self) -> int:
        """Bytes of the arrays a lookup reads (user, item and pair tables)."""
        arrays = [*self.user_cols.values(), self.hist_rows, *self.item_cols.values(), self.pair_keys,
                  *self.pair_cols.values()]
        return int(sum(a.nbytes for a in arrays))


# --- Redis --------------------------------------------------------------------

# Key layout: one string per user (its numeric columns as float64, then its history's item rows as int64),
# one string per item (its i_* columns as float64), one hash per user of its past items (field: item row,
# value: the two ui_* float64). A request reads them in one pipelined round trip.
_GHOST = "ghost"


def _user_key(prefix: str, user) -> str:
    return f"{prefix}u:{user}"


def write_to_redis(store: FeatureStore, client, *, prefix: str = "ecrec:", chunk: int = 2000) -> dict[str, int]:
    """Write the snapshot into Redis (a nightly job), pipelined in chunks, then ``SAVE`` it to disk.

    Values are raw little-endian float64/int64 bytes, so they read back bit for bit.

    Args:
        store: the in-memory snapshot.
        client: a ``redis.Redis`` connected to the server.
        prefix: namespace of the keys.
        chunk: commands per pipeline round trip.

    Returns:
        ``{"users", "items", "pairs", "bytes"}``: what was written (``bytes``: Redis' ``used_memory``).
    """
    ucols = list(store.user_cols)
    umat = np.column_stack([store.user_cols[c].astype(np.float64) for c in ucols])
    imat = np.column_stack([store.item_cols[c].astype(np.float64) for c in store.item_columns])
    pipe = client.pipeline(transaction=False)
    n_cmd = 0

    def flush(force: bool = False):
        nonlocal pipe, n_cmd
        if n_cmd >= chunk or (force and n_cmd):
            pipe.execute()
            pipe, n_cmd = client.pipeline(transaction=False), 0

    for row in range(len(store.users) + 1):
        hist = store.hist_rows[row]
        name = store.users[row] if row < len(store.users) else _GHOST
        pipe.set(_user_key(prefix, name), umat[row].tobytes() + hist[hist >= 0].astype(np.int64).tobytes())
        n_cmd += 1
        flush()
    for row in range(len(store.items) + 1):
        pipe.set(f"{prefix}i:{row if row < len(store.items) else _GHOST}", imat[row].tobytes())
        n_cmd += 1
        flush()
    n_items1 = len(store.items) + 1
    u_of, i_of = np.divmod(store.pair_keys, n_items1)
    vals = np.column_stack([store.pair_cols[c] for c in PAIR_COLUMNS])
    starts = np.flatnonzero(np.r_[True, u_of[1:] != u_of[:-1]])
    for s, e in zip(starts, np.r_[starts[1:], len(u_of)], strict=True):
        mapping = {int(i): vals[j].tobytes() for j, i in zip(range(s, e), i_of[s:e], strict=True)}
        pipe.hset(f"{prefix}p:{store.users[u_of[s]]}", mapping=mapping)
        n_cmd += 1
        flush()
    flush(force=True)
    client.set(f"{prefix}meta", f"{len(ucols)},{len(store.item_columns)}")
    client.save()  # the snapshot survives a restart of the server (its RDB file)
    return {"users": len(store.users), "items": len(store.items), "pairs": len(store.pair_keys),
            "bytes": int(client.info("memory")["used_memory"])}


class RedisFeatureStore:
    """The same snapshot read from Redis: :meth:`fetch` answers like :meth:`FeatureStore.fetch`.

    One pipelined round trip per request (``GET`` the user, ``MGET`` the K
    items, ``HMGET`` the K pairs). The client has a socket timeout, so a
    stopped or stuck server raises :class:`StoreUnavailable` within
    ``timeout_s`` instead of hanging; the next request reconnects by itself.

    Args:
        schema: the :class:`FeatureStore` whose snapshot was written (its column
            names, dtypes and ghost rows; its arrays are not read by :meth:`fetch`).
        host, port: the server, on 127.0.0.1.
        timeout_s: connect and read timeout in seconds.
    """

    def __init__(self, schema: FeatureStore, port: int, *, host: str = "127.0.0.1", timeout_s: float = 0.5,
                 prefix: str = "ecrec:"):
        self.user_columns = list(schema.user_cols)
        self.user_dtypes = [schema.user_cols[c].dtype for c in self.user_columns]
        self.item_columns = list(schema.item_columns)
        self.item_dtypes = [schema.item_cols[c].dtype for c in self.item_columns]
        self.host, self.port, self.timeout_s, self.prefix = host, int(port), float(timeout_s), prefix
        self._client = None

    def __getstate__(self):  # a client holds sockets: a copy in another process opens its own
        return {k: v for k, v in self.__dict__.items() if k != "_client"} | {"_client": None}

    @property
    def client(self):
        if self._client is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._client = redis.Redis(host=self.host, port=self.port, socket_timeout=self.timeout_s,
                                       socket_connect_timeout=self.timeout_s, retry=Retry(NoBackoff(), 0))
        return self._client

    def fetch(self, user_id, item_rows) -> RequestFeatures:
        """One request's features in one round trip.

        Raises:
            StoreUnavailable: the server refused, closed or did not answer within ``timeout_s``.
        """
        import redis

        i = np.asarray(item_rows, dtype=np.int64)
        p = self.prefix
        item_keys = [f"{p}i:{r}" if r >= 0 else f"{p}i:{_GHOST}" for r in i.tolist()]
        pipe = self.client.pipeline(transaction=False)
        pipe.get(_user_key(p, int(user_id)))
        pipe.get(_user_key(p, _GHOST))
        pipe.mget(item_keys)
        pipe.hmget(f"{p}p:{int(user_id)}", [int(r) for r in i.tolist()]) if len(i) else pipe.ping()
        try:
            user_b, ghost_b, items_b, pairs_b = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise StoreUnavailable(f"Redis at {self.host}:{self.port} did not answer within {self.timeout_s} s "
                                   f"({type(e).__name__}: {e})") from e
        known = user_b is not None
        raw = user_b if known else ghost_b
        if raw is None or any(b is None for b in items_b):
            raise StoreUnavailable(f"Redis at {self.host}:{self.port} holds no snapshot under '{p}' "
                                   "(write it with ecrec.feature_store.write_to_redis)")
        nu = len(self.user_columns)
        uvals = np.frombuffer(raw[: 8 * nu], dtype=np.float64)
        hist = np.frombuffer(raw[8 * nu:], dtype=np.int64).copy()
        user = {c: uvals[j].astype(dt) for j, (c, dt) in enumerate(zip(self.user_columns, self.user_dtypes,
                                                                       strict=True))}
        imat = np.frombuffer(b"".join(items_b), dtype=np.float64).reshape(len(i), len(self.item_columns))
        items = {c: imat[:, j].astype(dt) for j, (c, dt) in enumerate(zip(self.item_columns, self.item_dtypes,
                                                                          strict=True))}
        n_before, days = np.zeros(len(i)), np.full(len(i), np.nan)
        if known and len(i):
            for j, b in enumerate(pairs_b):
                if b is not None:
                    n_before[j], days[j] = np.frombuffer(b, dtype=np.float64)
        return RequestFeatures(known, user, hist, items, {"ui_n_before": n_before, "ui_days_since_last": days})

    def close(self) -> None:
        """Close the client's connections (idempotent)."""
        if self._client is not None:
            self._client.close()
            self._client = None


# --- the DNN's inputs from arrays ---------------------------------------------


class RequestEncoder:
    """A fitted :class:`ecrec.ctr.CtrPreprocessor`, applied to one request's arrays (no DataFrame).

    What depends on the item only (its id's and category's codes, its text
    row) is encoded once per item of the catalogue; a request then gathers K
    rows, computes the (user, item) columns (``seq_same_category``,
    ``text_sim_hist``, ``ui_*``) and applies the numeric pipeline's fitted
    parameters (log1p, median imputation with missing indicators,
    standardisation) to a (K, m) matrix. Equal to
    ``preprocessor.transform(add_item_attributes(store.frame(...)))`` (tested).

    Args:
        preprocessor: the DNN's fitted preprocessor (``model.preprocessor``).
        store: the snapshot (its item rows, history rows and columns).
        catalog: :func:`ecrec.features.item_catalog` rows (``item_id``, ``category``).
        item_ids: (n,) stock code of each catalogue item index the requests use.
        text: ``(item_ids, vectors)`` as given to the DNN, or None.

    Raises:
        ValueError: the preprocessor reads a column this encoder cannot produce.
    """

    CONTEXT = ("hour", "weekday", "month", "country")

    def __init__(self, preprocessor, store: FeatureStore, catalog: pd.DataFrame, item_ids, text=None):
        self.pre, self.store = preprocessor, store
        self.item_ids = np.asarray(item_ids).astype(str)
        self.store_row = store.item_rows(self.item_ids)  # catalogue index -> snapshot item row (-1: none)
        cat = catalog.drop_duplicates("item_id").set_index("item_id")["category"].astype(str)
        categories = pd.Index(np.sort(cat.unique()))
        item_cat = pd.Series(categories.get_indexer(cat), index=cat.index)
        # category code of each catalogue item (-2: not in the catalogue) and of each snapshot item (-1)
        self.cand_cat = item_cat.reindex(pd.Index(self.item_ids, dtype=object)).fillna(-2).to_numpy(np.int64)
        self.store_cat = np.append(item_cat.reindex(pd.Index(store.items, dtype=object)).fillna(-1)
                                   .to_numpy(np.int64), -1)
        category_names = cat.reindex(pd.Index(self.item_ids, dtype=object)).fillna("UNKNOWN").to_numpy(object)
        self.item_codes = {"item_id": self._codes("item_id", self.item_ids),
                           "category": self._codes("category", category_names)}
        known = set(self.item_codes) | set(self.CONTEXT) | {USER_ID}
        missing = [c for c in self.pre.categorical if c not in known]
        if missing:
            raise ValueError(f"RequestEncoder cannot encode categorical columns {missing}")
        self.text = None
        if self.pre.text_ids is not None or "text_sim_hist" in self.pre.numeric:
            if text is None:
                raise ValueError("the preprocessor reads text; pass text=(item_ids, vectors)")
            self._init_text(text)
        self.hist_codes = self._hist_codes()
        self._init_numeric()
        # the request's own values (user id, country, hour...) -> their code: a dict, O(1) per request
        self.context_codes = {c: dict(zip(self.pre.encoders_[c].vocabulary_.tolist(),
                                          range(1, self.pre.encoders_[c].n_indices), strict=True))
                              for c in self.pre.categorical if c not in self.item_codes}

    def _codes(self, column: str, values) -> np.ndarray | None:
        enc = self.pre.encoders_.get(column)
        return None if enc is None else enc.transform(np.asarray(values, dtype=object))

    def _init_text(self, text) -> None:
        ids, vectors = pd.Index(np.asarray(text[0], dtype=object)), np.asarray(text[1], dtype=np.float32)
        self.text = np.vstack([vectors, np.zeros((1, vectors.shape[1]), np.float32)])  # last row: no text
        miss = len(vectors)
        cand = ids.get_indexer(self.item_ids)
        self.cand_text = np.where(cand >= 0, cand, miss)
        self.cand_norm = np.linalg.norm(self.text[self.cand_text], axis=1)
        srow = ids.get_indexer(pd.Index(self.store.items, dtype=object))
        self.store_text = np.where(srow >= 0, srow, miss)  # snapshot item row -> text row
        if self.pre.text_ids is not None:
            t = self.pre.text_ids.get_indexer(self.item_ids)
            self.item_codes["text"] = np.where(t >= 0, t, len(self.pre.text_ids)).astype(np.int64)

    def _hist_codes(self) -> np.ndarray | None:
        if not self.pre.sequence:
            return None
        enc = self.pre.encoders_["item_id"]
        return enc.vocabulary_.get_indexer(pd.Index(self.store.items, dtype=object))  # -1: not in the vocabulary

    def _init_numeric(self) -> None:
        imp = self.pre.numeric_.named_steps["impute"] if self.pre.numeric_ is not None else None
        if self.pre.extra_numeric:
            raise ValueError("RequestEncoder does not serve extra_numeric columns (a second model's score)")
        if imp is not None:
            scale = self.pre.numeric_.named_steps["scale"]
            self.medians = imp.statistics_.astype(np.float64)
            self.indicator = imp.indicator_.features_ if imp.indicator_ is not None else np.zeros(0, np.int64)
            self.mean, self.scale = scale.mean_, scale.scale_

    def encode(self, f: RequestFeatures, candidates, when, country, user_id=None) -> dict[str, np.ndarray]:
        """The DNN's input arrays for one request.

        Args:
            f: from a store's ``fetch(user_id, encoder.store_row[candidates])``.
            candidates: int (K,) catalogue item indexes (no padding).
            when: the request time; country: the request's country.
            user_id: the customer id (for the ``user_id`` embedding).

        Returns:
            ``cat`` int64 (K, k), ``num`` float32 (K, m), ``hist`` int64 (K, history_len), ``text`` int64 (K,).
        """
        c = np.asarray(candidates, dtype=np.int64)
        k, when = len(c), pd.Timestamp(when)
        context = {"hour": when.hour, "weekday": when.day_of_week, "month": when.month, "country": country,
                   USER_ID: user_id}
        cat = np.empty((k, len(self.pre.categorical)), dtype=np.int64)
        for j, name in enumerate(self.pre.categorical):
            if name in self.item_codes:
                cat[:, j] = self.item_codes[name][c]
            else:  # 0: a value the encoder never saw (IdEncoder's unknown bucket)
                cat[:, j] = self.context_codes[name].get(context[name], 0)
        out = {"cat": cat}
        out["num"] = self._numeric(f, c, k)
        if self.hist_codes is not None:
            enc = self.pre.encoders_["item_id"]
            h = self.hist_codes[f.hist[: self.pre.history_len]]
            row = np.full(self.pre.history_len, enc.n_indices, dtype=np.int64)
            row[: len(h)] = np.where(h >= 0, h + 1, 0)  # 0: the unknown id; n_indices: padding
            out["hist"] = np.broadcast_to(row, (k, self.pre.history_len)).copy()
        if self.pre.text_ids is not None:
            out["text"] = self.item_codes["text"][c]
        return out

    def _numeric(self, f: RequestFeatures, c: np.ndarray, k: int) -> np.ndarray:
        if self.pre.numeric_ is None:
            return np.zeros((k, 0), np.float32)
        x = np.empty((k, len(self.pre.numeric)), dtype=np.float64)
        for j, name in enumerate(self.pre.numeric):
            if name in f.items:
                x[:, j] = f.items[name]
            elif name in f.pairs:
                x[:, j] = f.pairs[name]
            elif name in f.user:
                x[:, j] = f.user[name]
            elif name == "seq_same_category":
                hc = self.store_cat[f.hist]
                x[:, j] = (hc[None, :] == self.cand_cat[c][:, None]).sum(1)
            elif name == "text_sim_hist":
                x[:, j] = self._text_sim(f, c)
            else:
                raise ValueError(f"RequestEncoder cannot compute numeric column {name!r}")
        # the numeric pipeline's fitted steps (ecrec.encoders.numeric_encoder): log1p, impute, standardise
        x = np.log1p(np.clip(x, 0, None))
        missing = np.isnan(x)
        ind = missing[:, self.indicator].astype(np.float64)
        x = np.where(missing, self.medians[None, :], x)
        x = np.hstack([x, ind])
        return ((x - self.mean) / self.scale).astype(np.float32)

    def _text_sim(self, f: RequestFeatures, c: np.ndarray) -> np.ndarray:
        # ecrec.features.text_history_similarity's steps, for one history: its mean vector at unit norm,
        # then the cosine with each candidate's vector (0 without history or without text)
        miss = len(self.text) - 1
        rows = self.store_text[f.hist][None, :] if len(f.hist) else np.full((1, 1), miss)
        counts = (rows != miss).sum(1, keepdims=True)
        mean = self.text[rows].sum(1) / np.maximum(counts, 1)
        norms = np.linalg.norm(mean, axis=1, keepdims=True)
        h = (mean / np.maximum(norms, 1e-12)).astype(np.float32)[0]
        vec = self.text[self.cand_text[c]]
        cn = self.cand_norm[c]
        return np.where(cn > 0, (vec * h).sum(1) / np.maximum(cn, 1e-12), 0.0)
