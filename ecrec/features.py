"""Chapter 03's point-in-time CTR dataset, built from the cleaned Online Retail log.

The contract that the chapters reading chapter 03's examples share: 03 (ID-based
CTR models), 04 (BERT), 06 (multi-task) and 07. Each calls
:func:`load_or_build_ctr_dataset` with the :class:`CtrDatasetConfig` of
:func:`dataset_config`, so they all read exactly the same examples and split
from one parquet file cached under a hash of the config, of the code that builds
it and of the data (:func:`dataset_key`). Chapter 05 (recall) does not read this
dataset: :func:`ecrec.recall.build_recall_data` starts from the same
:func:`purchase_events` and :func:`item_catalog`.

Modules, one concept each (every name below is re-exported here, so
``from ecrec.features import X`` works for all of them)
----------------------------------------------------------------------------
* :mod:`ecrec.events`: :func:`purchase_events` (clean -> one row per (invoice,
  item): the positives and the history every feature is computed from),
  :func:`split_dates` / :func:`assign_split` (one global time split, test
  last), :func:`cold_items`.
* :mod:`ecrec.negatives`: :func:`sample_negatives` (seeded, ``"uniform"`` or
  ``"popularity"`` over the items sold in the 30 days before the positive;
  only the positive's own basket is excluded).
* :mod:`ecrec.pit_features`: :func:`point_in_time_features` (examples + event
  log -> features that use only events strictly before each example's ``ts``).
* here: :class:`CtrDatasetConfig`, :func:`dataset_config`,
  :func:`build_ctr_dataset`, :func:`load_or_build_ctr_dataset`,
  :func:`dataset_key` (the parquet cache), and the item attributes a model
  joins (:func:`item_catalog`, :func:`hist_matrix`,
  :func:`text_history_similarity`, :func:`add_item_attributes`).

Columns of the CTR dataset (one row per example, sorted by ``ts``, ``user_id``,
``invoice_no``, ``label`` descending, ``item_id``; fresh RangeIndex)
-------------------------------------------------------------------------------
======================  =====================  ===================================================
column                  dtype                  meaning
======================  =====================  ===================================================
``user_id``             int64                  CustomerID
``item_id``             str                    StockCode
``ts``                  datetime64[us]         the invoice's time (a negative shares its positive's)
``invoice_no``          str                    the positive's invoice: one "impression list"
``label``               int8                   1 bought, 0 sampled negative
``split``               str                    ``"train"``, ``"valid"`` or ``"test"`` (by ``ts``)
``cold_user``           bool                   user bought nothing before ``valid_start`` (whole log)
``cold_item``           bool                   nobody bought the item before ``valid_start`` (whole log)
``country``             str                    the invoice's country (context, known at ``ts``)
``hist_items``          list<string>[pyarrow]  up to ``history_len`` items the user bought
                                               strictly before ``ts``, newest first
``hist_len``            int64                  ``len(hist_items)``
``u_n_invoices``        float64                user's invoices before ``ts`` (frequency)
``u_n_lines``           float64                user's invoice lines before ``ts``
``u_spend``             float64                user's spend before ``ts``, pounds (monetary)
``u_days_since_last``   float64                days since the user's last invoice (recency), NaN if none
``u_tenure_days``       float64                days since the user's first invoice, NaN if none
``i_pop_all``           float64                item's purchases (any user) before ``ts``
``i_pop_<w>d``          float64                ... in the ``w`` days before ``ts`` (``pop_windows``)
``i_share_all``         float64                ``i_pop_all`` per 1,000 purchases (all items) before ``ts``
``i_share_<w>d``        float64                ``i_pop_<w>d`` per 1,000 purchases in the same window
``i_price``             float64                item's last unit price before ``ts``, NaN if never sold
``i_age_days``          float64                days since the item's first sale, NaN if never sold
``ui_n_before``         float64                times this user bought this item before ``ts``
``ui_days_since_last``  float64                days since the user last bought it, NaN if never
``hour``                int64                  hour of ``ts`` (0-23)
``weekday``             int64                  day of week of ``ts`` (Monday 0)
``month``               int64                  month of ``ts`` (1-12)
======================  =====================  ===================================================

NaN means "no history" and is left for the encoders (:func:`ecrec.encoders.numeric_encoder`)
to impute with an explicit missing indicator. Static item attributes
(description, category) come from :func:`item_catalog`; join on ``item_id``.

Point in time: every ``u_*``, ``i_*``, ``ui_*`` and ``hist_*`` value of an
example is computed from purchase events with a time strictly before the
example's ``ts`` (items of the same invoice are not "before"). The event log
is the whole cleaned log (all users), also when ``max_users`` subsamples the
users that get examples: popularity is a global statistic.
"""


from __future__ import annotations

import functools
import hashlib
import inspect
import json
import sys
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

# re-exported: callers import these names from ecrec.features
from ecrec.events import (
    _DAY_S,
    SPLITS,
    _datetime_index,
    _seconds,
    assign_split,
    cold_items,
    purchase_events,
    split_dates,
)
from ecrec.negatives import NEGATIVE_SAMPLING, _sorted_member, sample_negatives
from ecrec.pit_features import HIST_DTYPE, _Sorted, point_in_time_features

__all__ = [
    "SPLITS", "NEGATIVE_SAMPLING", "HIST_DTYPE", "purchase_events", "split_dates", "assign_split", "cold_items",
    "sample_negatives", "point_in_time_features", "CtrDatasetConfig", "DATASET_SIZES", "dataset_config",
    "build_ctr_dataset", "builder_sources", "dataset_key", "load_or_build_ctr_dataset", "item_catalog",
    "hist_matrix", "text_history_similarity", "add_item_attributes",
]
# private helpers re-exported for the benchmarks and tests that reach them through this module
_REEXPORTED_PRIVATE = (_DAY_S, _datetime_index, _seconds, _sorted_member, _Sorted)


# --- configuration ----------------------------------------------------------


@dataclass(frozen=True)
class CtrDatasetConfig:
    """Everything that decides the examples; its hash names the cached parquet.

    Attributes:
        seed: seeds user subsampling and negative sampling.
        neg_ratio: negatives drawn per positive (>= 1).
        negatives: ``"uniform"`` over the items sold in the ``neg_window_days``
            days before the example's ``ts``, or ``"popularity"``:
            proportional to their sales in that window. The items of the
            positive's basket (all of the user's invoices at that moment)
            are excluded (:func:`sample_negatives`).
        history_len: length cap of ``hist_items`` (>= 1).
        max_users: keep a seeded random sample of this many customers
            (``None``: all 4,334).
        valid_days, test_days: see :func:`split_dates`.
        pop_windows: trailing windows in days for ``i_pop_<w>d``.
        neg_window_days: trailing window of the negative candidates, days.
        neg_exclude_bought_in_split: also exclude, as negatives, the items
            the same user bought at any time in the positive's split window
            (``False``, the default: only the basket; see
            :func:`sample_negatives` for the trade-off).

    Raises:
        ValueError: unknown ``negatives``, a count or window below 1 or not
            an integer, ``max_users`` not ``None`` or >= 1, ``pop_windows``
            empty, repeated or below 1, or ``neg_exclude_bought_in_split``
            not a bool.
    """

    seed: int = 42
    neg_ratio: int = 4
    negatives: str = "uniform"
    history_len: int = 10
    max_users: int | None = None
    valid_days: int = 30
    test_days: int = 30
    pop_windows: tuple[int, ...] = field(default=(7, 30))
    neg_window_days: int = 30
    neg_exclude_bought_in_split: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.neg_exclude_bought_in_split, (bool, np.bool_)):
            raise ValueError(f"neg_exclude_bought_in_split must be a bool, got {self.neg_exclude_bought_in_split!r}")
        if self.negatives not in NEGATIVE_SAMPLING:
            raise ValueError(f"negatives must be one of {NEGATIVE_SAMPLING}, got {self.negatives!r}")
        for name in ("neg_ratio", "history_len", "valid_days", "test_days", "neg_window_days"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_users is not None and (not isinstance(self.max_users, (int, np.integer)) or self.max_users < 1):
            raise ValueError(f"max_users must be None or an integer >= 1, got {self.max_users!r}")
        windows = tuple(int(w) for w in self.pop_windows)
        if not windows or any(w < 1 for w in windows) or len(set(windows)) != len(windows):
            raise ValueError(f"pop_windows must be distinct integers >= 1, got {self.pop_windows!r}")
        object.__setattr__(self, "pop_windows", windows)


# Chapter 03's dataset sizes per profile: the one source every chapter that reads
# chapter 03's examples starts from (a chapter may override ``max_users`` only).
DATASET_SIZES: dict[str, dict[str, int | None]] = {
    "smoke": {"max_users": 250, "neg_ratio": 4, "history_len": 10},
    "full": {"max_users": None, "neg_ratio": 4, "history_len": 10},
}


def dataset_config(size: dict, *, seed: int, negatives: str = "uniform") -> CtrDatasetConfig:
    """Chapter 03's :class:`CtrDatasetConfig` from a chapter's resolved sizes.

    Every chapter that reads chapter 03's examples (03, 04, 06, 07) builds its
    configuration here, so that the examples cannot drift between chapters.

    Args:
        size: a chapter's sizes (``ecrec.profiles.pick_sizes``); must hold
            ``max_users``, ``neg_ratio`` and ``history_len`` (start a chapter's
            size table from :data:`DATASET_SIZES`).
        seed: user subsampling and negative sampling seed.
        negatives: ``"uniform"`` or ``"popularity"``.

    Raises:
        KeyError: a size is missing (the message names it and the fix).
        ValueError: as :class:`CtrDatasetConfig`.
    """
    missing = [k for k in ("max_users", "neg_ratio", "history_len") if k not in size]
    if missing:
        raise KeyError(f"dataset_config: sizes lack {missing}; start the chapter's SIZES from "
                       "ecrec.features.DATASET_SIZES[profile]")
    return CtrDatasetConfig(seed=seed, negatives=negatives, max_users=size["max_users"],
                            neg_ratio=size["neg_ratio"], history_len=size["history_len"])



# --- the dataset --------------------------------------------------------------


def _select_users(events: pd.DataFrame, max_users: int | None, seed: int) -> np.ndarray:
    users = np.sort(events["user_id"].unique())
    if max_users is None or max_users >= len(users):
        return users
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(users, size=max_users, replace=False))


def build_ctr_dataset(clean: pd.DataFrame, config: CtrDatasetConfig | None = None) -> pd.DataFrame:
    """Positives, seeded negatives, global time split, cold flags and point-in-time features.

    Args:
        clean: cleaned Online Retail (:func:`ecrec.data.load_clean_online_retail`).
        config: :class:`CtrDatasetConfig` (default one if ``None``).

    Returns:
        The CTR dataset, columns as in the module docstring. Same ``clean``
        and config give an identical frame.

    Raises:
        ValueError: ``clean`` lacks columns, or the split leaves no training data.
    """
    config = config or CtrDatasetConfig()
    events = purchase_events(clean)
    valid_start, test_start = split_dates(events["ts"], config.valid_days, config.test_days)
    events["split"] = assign_split(events["ts"], valid_start, test_start)
    keep_users = _select_users(events, config.max_users, config.seed)
    positives = events[events["user_id"].isin(keep_users)].reset_index(drop=True)
    negatives = sample_negatives(
        positives, events, neg_ratio=config.neg_ratio, method=config.negatives, seed=config.seed + 1,
        window_days=config.neg_window_days, exclude_bought_in_split=bool(config.neg_exclude_bought_in_split),
    )
    cols = ["invoice_no", "user_id", "item_id", "ts", "country", "split"]
    examples = pd.concat(
        [positives[cols].assign(label=np.int8(1)), negatives[cols].assign(label=np.int8(0))],
        ignore_index=True,
    )
    examples["label"] = examples["label"].astype(np.int8)
    examples = examples.sort_values(
        ["ts", "user_id", "invoice_no", "label", "item_id"],
        ascending=[True, True, True, False, True],
        kind="stable",
    ).reset_index(drop=True)
    # cold = no purchase in the train window of the WHOLE log (not only of the sampled users)
    train_events = events[events["split"] == "train"]
    examples["cold_user"] = ~examples["user_id"].isin(train_events["user_id"].unique())
    examples["cold_item"] = cold_items(events, examples["item_id"], valid_start)
    feats = point_in_time_features(
        examples, events, history_len=config.history_len, pop_windows=config.pop_windows
    )
    out = pd.concat([examples, feats], axis=1)
    front = ["user_id", "item_id", "ts", "invoice_no", "label", "split", "cold_user", "cold_item", "country"]
    out = out[front + [c for c in out.columns if c not in front]]
    out["split"] = out["split"].astype(str)
    out.attrs["negative_sampling"] = negatives.attrs.get("negative_sampling", {})
    return out


def _data_fingerprint(clean: pd.DataFrame) -> str:
    cols = [c for c in ("InvoiceNo", "StockCode", "InvoiceDate", "Quantity", "UnitPrice", "CustomerID") if c in clean]
    digest = pd.util.hash_pandas_object(clean[cols], index=False).to_numpy()
    return hashlib.sha256(digest.tobytes()).hexdigest()[:16]


# The modules whose code decides the cached frame (this one and the ones it was split into).
_DATASET_MODULES = frozenset({__name__, "ecrec.events", "ecrec.negatives", "ecrec.pit_features"})
# The functions whose code decides the cached frame; the helpers they call are found from their code.
_BUILDERS = ("build_ctr_dataset", "sample_negatives", "point_in_time_features", "purchase_events",
             "split_dates", "assign_split", "_write_dataset", "_read_dataset")


def _names_used(code: types.CodeType) -> set[str]:
    """Global names a code object (and the functions, classes and lambdas nested in it) refers to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_used(const)
    return names


def _code_of(obj) -> list[types.CodeType]:
    if isinstance(obj, type):
        return [f.__code__ for f in vars(obj).values() if isinstance(f, types.FunctionType)]
    return [obj.__code__]


def builder_sources() -> dict[str, str]:
    """Source of every function and class that building the dataset runs.

    Starts from the builders (:func:`build_ctr_dataset`, :func:`sample_negatives`,
    :func:`point_in_time_features`, :func:`purchase_events`, :func:`split_dates`,
    :func:`assign_split`, the parquet writer and reader) and follows the
    module-level functions and classes they name (``_select_users``,
    ``_Sorted``, :class:`CtrDatasetConfig`...), transitively, in this module
    and the modules it was split into (:data:`_DATASET_MODULES`: each name is
    looked up in the module of the code that names it); module-level constants
    they name (``_DAY_S``, ``HIST_DTYPE``...) enter as their ``repr``.

    Returns:
        ``{name: source}``, sorted by name.
    """
    out: dict[str, str] = {}
    todo = [(name, globals()) for name in _BUILDERS]
    while todo:
        name, namespace = todo.pop()
        if name in out or name not in namespace:
            continue
        obj = namespace[name]
        if isinstance(obj, (types.FunctionType, type)) and getattr(obj, "__module__", None) in _DATASET_MODULES:
            out[name] = inspect.getsource(obj)
            home = vars(sys.modules[obj.__module__])  # names in its code resolve in its own module
            for code in _code_of(obj):
                todo += [(n, home) for n in sorted(_names_used(code))]
        elif isinstance(obj, (int, float, str, tuple, frozenset, pd.api.extensions.ExtensionDtype)):
            out[name] = repr(obj)
    return dict(sorted(out.items()))


@functools.cache
def _code_fingerprint() -> str:
    """Hash of :func:`builder_sources` (computed once per process: the source does not change under it)."""
    return hashlib.sha256(json.dumps(builder_sources(), sort_keys=True).encode()).hexdigest()[:16]


def dataset_key(clean: pd.DataFrame, config: CtrDatasetConfig) -> str:
    """16 hex digits from the config, the builder's code and a hash of ``clean``'s content.

    The code part hashes the source of every function that builds the
    dataset (:func:`builder_sources`), so an edit to any of them (a comment
    included) names a new cache file instead of reading a stale one; there is
    no version number to remember to bump.
    """
    payload = json.dumps(
        {"config": asdict(config), "code": _code_fingerprint(), "data": _data_fingerprint(clean)},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _read_dataset(path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return table.to_pandas(types_mapper=lambda t: HIST_DTYPE if pa.types.is_list(t) else None)


def _write_dataset(df: pd.DataFrame, path: Path) -> None:
    import pyarrow.parquet as pq

    # pandas' own metadata for an ArrowDtype list column cannot be read back by pandas 3
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(table, path)


def load_or_build_ctr_dataset(
    clean: pd.DataFrame,
    config: CtrDatasetConfig | None = None,
    cache_dir: str | Path = "cache",
    *,
    rebuild: bool = False,
) -> pd.DataFrame:
    """Read ``cache_dir/ctr_<key>.parquet`` if present, else build it and save it atomically.

    ``key`` is :func:`dataset_key` (config + the builder's source + data hash), so
    the chapters that pass the same config (03, 04, 06, 07: :func:`dataset_config`) share one file, and a
    changed config or data never reads a stale one. A ``ctr_<key>.json``
    beside it records the config and row counts.

    Returns:
        The frame :func:`build_ctr_dataset` returns (identical after a round trip).

    Raises:
        ValueError: as :func:`build_ctr_dataset`.
    """
    from ecrec.io import atomic_write, atomic_write_text

    config = config or CtrDatasetConfig()
    cache_dir = Path(cache_dir)
    key = dataset_key(clean, config)
    path = cache_dir / f"ctr_{key}.parquet"
    if path.is_file() and not rebuild:
        return _read_dataset(path)
    df = build_ctr_dataset(clean, config)
    atomic_write(path, lambda p: _write_dataset(df, p))
    summary = {
        "config": asdict(config),
        "code": _code_fingerprint(),
        "rows": len(df),
        "rows_by_split": df["split"].value_counts().to_dict(),
        "positives": int(df["label"].sum()),
        "negative_sampling": df.attrs.get("negative_sampling", {}),
    }
    atomic_write_text(cache_dir / f"ctr_{key}.json", json.dumps(summary, indent=2, default=int))
    return _read_dataset(path)


def item_catalog(clean: pd.DataFrame) -> pd.DataFrame:
    """One row per item: ``item_id`` (str), ``description`` (str), ``category`` (str), ``price`` (float64).

    ``category`` is the description's last word (mostly the product noun:
    HOLDER, BAG, MUG...), a cheap category from text. ``price`` is the median
    unit price over the whole log, in pounds: a catalog attribute for display
    and text prompts; models use the point-in-time ``i_price`` instead.

    Raises:
        ValueError: ``clean`` lacks StockCode, Description or UnitPrice.
    """
    missing = [c for c in ("StockCode", "Description", "UnitPrice") if c not in clean.columns]
    if missing:
        raise ValueError(f"item_catalog: missing columns {missing}")
    from ecrec.data import canonical_descriptions

    desc = canonical_descriptions(clean)
    price = clean.groupby("StockCode")["UnitPrice"].median()
    cat = pd.DataFrame({"item_id": price.index.astype(str), "price": price.to_numpy(np.float64)})
    cat["description"] = cat["item_id"].map(desc).fillna("").astype(str)
    words = cat["description"].str.upper().str.findall(r"[A-Z]+")
    cat["category"] = words.str[-1].fillna("UNKNOWN").astype(str)
    return cat[["item_id", "description", "category", "price"]].sort_values("item_id").reset_index(drop=True)


def _list_array(values: pd.Series) -> pa.ListArray:
    arr = pa.array(values.array) if isinstance(values.dtype, pd.ArrowDtype) else pa.array(list(values))
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not pa.types.is_list(arr.type):
        raise TypeError(f"expected a column of lists of item ids, got arrow type {arr.type}")
    return arr


def hist_matrix(hist_items: pd.Series, vocabulary: pd.Index, history_len: int) -> np.ndarray:
    """Pad ``hist_items`` into an (n, history_len) int64 matrix of positions in ``vocabulary``.

    Keeps the stored order (newest first) and the first ``history_len``
    items. Items not in ``vocabulary`` become -2, padding -1 (the caller maps
    them to its own unknown and padding indices).

    Raises:
        ValueError: ``history_len < 1``.
        TypeError: ``hist_items`` does not hold lists.
    """
    import pyarrow.compute as pc

    if history_len < 1:
        raise ValueError(f"history_len must be >= 1, got {history_len}")
    arr = _list_array(hist_items)
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(arr)
    vocab = pa.array(np.asarray(vocabulary, dtype=object), pa.string())
    codes = pc.index_in(flat.cast(pa.string()), value_set=vocab).fill_null(-2)
    codes = codes.to_numpy(zero_copy_only=False).astype(np.int64)
    row = np.repeat(np.arange(len(arr)), lengths)
    pos = np.arange(len(codes)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out = np.full((len(arr), history_len), -1, dtype=np.int64)
    keep = pos < history_len
    out[row[keep], pos[keep]] = codes[keep]
    return out


def text_history_similarity(
    df: pd.DataFrame, item_ids: pd.Index, vectors: np.ndarray, *, chunk: int = 65_536
) -> np.ndarray:
    """Cosine between each candidate's text vector and the mean text vector of the user's history.

    The history is the same for every row of an invoice, so its mean vector
    is computed once per invoice, then the cosine per row in chunks. 0 where
    the history is empty or the candidate has no vector. Point in time as
    ``hist_items`` is; the vectors come from item descriptions (static).

    Args:
        df: frame with ``item_id``, ``hist_items``, ``invoice_no``.
        item_ids: (m,) ids of the rows of ``vectors``.
        vectors: (m, d) item text vectors (e.g. MiniLM of descriptions).

    Returns:
        (n,) float64 in [-1, 1].

    Raises:
        ValueError: ``vectors`` rows do not match ``item_ids``.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(item_ids):
        raise ValueError(f"vectors must be (len(item_ids), d), got {vectors.shape} for {len(item_ids)} ids")
    item_ids = pd.Index(np.asarray(item_ids, dtype=object))
    table = np.vstack([vectors, np.zeros((1, vectors.shape[1]), np.float32)])  # last row: missing
    miss = len(vectors)
    inv_codes, _ = pd.factorize(df["invoice_no"].astype(str))
    first = pd.Series(np.arange(len(df))).groupby(inv_codes).first().to_numpy()
    hist = df["hist_items"].iloc[first]
    width = max(int(hist.map(len).max()) if len(hist) else 1, 1)
    hm = hist_matrix(hist, item_ids, width)
    hm = np.where(hm >= 0, hm, miss)
    counts = (hm != miss).sum(1, keepdims=True)
    mean = table[hm].sum(1) / np.maximum(counts, 1)
    norms = np.linalg.norm(mean, axis=1, keepdims=True)
    mean = (mean / np.maximum(norms, 1e-12)).astype(np.float32)
    cand = item_ids.get_indexer(df["item_id"].astype(str).to_numpy())
    cand = np.where(cand >= 0, cand, miss)
    out = np.empty(len(df), dtype=np.float64)
    for s in range(0, len(df), chunk):
        c = table[cand[s : s + chunk]]
        cn = np.linalg.norm(c, axis=1)
        h = mean[inv_codes[s : s + chunk]]
        out[s : s + chunk] = np.where(cn > 0, (c * h).sum(1) / np.maximum(cn, 1e-12), 0.0)
    return out


def add_item_attributes(
    df: pd.DataFrame,
    catalog: pd.DataFrame,
    text: tuple[pd.Index, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Join static item attributes and the history-vs-candidate features a model reads.

    Adds ``description`` and ``category`` (from :func:`item_catalog`; "" and
    "UNKNOWN" for items missing from it), ``seq_same_category`` (float64:
    how many of ``hist_items`` share the candidate's category) and, when
    ``text=(item_ids, vectors)`` is given, ``text_sim_hist``
    (:func:`text_history_similarity`). Returns a new frame; ``df`` is not modified.
    """
    import pyarrow.compute as pc

    out = df.copy()
    cat = catalog.set_index("item_id")
    out["description"] = out["item_id"].map(cat["description"]).fillna("").astype(str)
    out["category"] = out["item_id"].map(cat["category"]).fillna("UNKNOWN").astype(str)
    categories = pd.Index(np.sort(cat["category"].unique()))
    item_cat = pd.Series(categories.get_indexer(cat["category"]), index=cat.index)
    arr = _list_array(out["hist_items"])
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pd.Index(np.asarray(pc.list_flatten(arr).to_numpy(zero_copy_only=False), dtype=object))
    flat_cat = item_cat.reindex(flat).fillna(-1).to_numpy(np.int64)
    cand_cat = item_cat.reindex(out["item_id"].astype(str)).fillna(-2).to_numpy(np.int64)
    row = np.repeat(np.arange(len(out)), lengths)
    match = flat_cat == cand_cat[row]
    out["seq_same_category"] = np.bincount(row[match], minlength=len(out)).astype(np.float64)
    if text is not None:
        out["text_sim_hist"] = text_history_similarity(out, text[0], text[1])
    return out
