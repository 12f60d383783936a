"""The Open Bandit Dataset's small sample: a real impression log with clicks and true propensities.

ZOZOTOWN (a Japanese fashion e-commerce site) showed three items at a time on
its front page; two logging policies ran side by side, each on three
campaigns: **uniform random** and **Bernoulli Thompson sampling** (BTS). Every
row is one impression: the item shown, its position (1-3), whether it was
clicked, and the probability with which the logging policy chose that item
for that position (the *propensity*). The small sample (10,000 rows per
policy and campaign) ships inside the ``obp`` package (Apache-2.0); it is read
here from the installed package with :mod:`importlib.resources`, not with
obp's ``OpenBanditDataset``, whose loader fails on pandas >= 2.

Source: Saito, Aihara, Matsutani and Narita (2021). Open Bandit Dataset and
Pipeline: Towards Realistic and Reproducible Off-Policy Evaluation. NeurIPS
Datasets and Benchmarks. https://github.com/st-tech/zr-obp
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["POLICIES", "CAMPAIGNS", "N_ITEMS", "ROWS", "SHA256", "ObdFileError", "BanditLog", "obd_path", "bts_action_dist",
           "load_open_bandit"]

POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
N_ITEMS = {"all": 80, "men": 34, "women": 46}
ROWS = 10_000
LEN_LIST = 3
N_USER_FEATURES = 4
SHA256 = {
    ("random", "all"): ("7168295b6e0a9eabcf3392320a5dd434e542b68e705d5cd9491499af589812f1",
                        "eba04cc23d5f130a93ff174c5392986882b94c3839433cb8143870eaa6221358"),
    ("random", "men"): ("ede6d08c6877f99cd3770f7d09e26c738e6aa6de4445ccccfb1356ba5d06b1eb",
                        "6d855c2b7e917d0448d71bbe62c023147495882c0fdc8c41e86fef86abf9fe09"),
    ("random", "women"): ("e65f3bd3beb17664fa69cc129bf7bf852a775f8ffa630506e505fc905315bb34",
                          "b1ca4905f97703d196004f2ad4552c1e90c2afad8b50688d333b0d2dc0b33147"),
    ("bts", "all"): ("0ad874e4dbf6902f0845dd478ad8dde5ef6903583d3ffaace78411bdad064106",
                     "5d4359ba1cfa3ae88f0f1bae66bd633859fe6323817183632ee57b83539d9153"),
    ("bts", "men"): ("db6d1f7ed2d591ba521533e45286d4c1fba7fe57a8ad2e80342210335f43c527",
                     "3b411ed6b0471316321a6b93f4f756bb25888eac6218cd71d0b603d41d85732d"),
    ("bts", "women"): ("e5d1b49a39b608585a2f3014a3f54970430cd37a495c1b73fceb85cdf428a5b8",
                       "a56295bad066a558eb783055afd9279f5f4e209a4776eafc22151c53f0ac89d4"),
}  # (impression log, item context) per (policy, campaign), as shipped in obp 0.4.1
INSTALL_HINT = "Install it with `pip install -r requirements.txt -c constraints.txt` (obp==0.4.1)."


class ObdFileError(ValueError):
    """A file of the Open Bandit Dataset is missing, altered or malformed."""


@dataclass(frozen=True)
class BanditLog:
    """One policy's log on one campaign.

    Attributes:
        policy: ``"random"`` or ``"bts"``.
        campaign: ``"all"``, ``"men"`` or ``"women"``.
        frame: one row per impression, in time order: ``ts`` (datetime, UTC),
            ``item_id`` (int64 in ``[0, n_items)``), ``position`` (int64,
            **0-based**: 0 is the top slot, as obp counts), ``click`` (int64 0/1),
            ``pscore`` (float64 in (0, 1]: the logging policy's probability of
            this item at this position), ``user_feature_0..3`` (text, hashed
            categories) and ``affinity_k`` (float64, the user's past affinity
            to item k).
        items: ``item_id`` and ``item_feature_0..3`` (item context).
        n_items: actions available to the policy.
    """

    policy: str
    campaign: str
    frame: pd.DataFrame
    items: pd.DataFrame
    n_items: int

    @property
    def n_rounds(self) -> int:
        return len(self.frame)


def obd_path(policy: str, campaign: str, kind: str = "log") -> Path:
    """Where the installed ``obp`` package keeps a file of the sample.

    Args:
        policy: one of :data:`POLICIES`; campaign: one of :data:`CAMPAIGNS`.
        kind: ``"log"`` (the impressions) or ``"items"`` (the item context).

    Raises:
        ValueError: unknown policy, campaign or kind.
        ObdFileError: ``obp`` is not installed.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if campaign not in CAMPAIGNS:
        raise ValueError(f"campaign must be one of {CAMPAIGNS}, got {campaign!r}")
    if kind not in ("log", "items"):
        raise ValueError(f"kind must be 'log' or 'items', got {kind!r}")
    from importlib import resources

    try:
        root = resources.files("obp")
    except ModuleNotFoundError as exc:
        raise ObdFileError(f"the `obp` package is not installed, and the Open Bandit Dataset ships in it. "
                           f"{INSTALL_HINT}") from exc
    name = f"{campaign}.csv" if kind == "log" else "item_context.csv"
    return Path(str(root / "dataset" / "obd" / policy / campaign / name))


def _verified_csv(path: Path, expected_sha: str, root: Path | None) -> pd.DataFrame:
    where = f"{path}" + ("" if root is None else f" (under {root})")
    if not path.is_file():
        raise ObdFileError(f"{where}: file not found. Reinstall obp: `pip install --force-reinstall obp==0.4.1`.")
    data = path.read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if found != expected_sha:
        raise ObdFileError(f"{where}: sha256 {found} differs from obp 0.4.1's {expected_sha} ({len(data):,} bytes): "
                           "the file is altered or from another obp release. "
                           "Reinstall it: `pip install --force-reinstall obp==0.4.1`.")
    import io

    return pd.read_csv(io.BytesIO(data), index_col=0)


def _tidy_log(raw: pd.DataFrame, n_items: int, source: str) -> pd.DataFrame:
    needed = ["timestamp", "item_id", "position", "click", "propensity_score"] + [
        f"user_feature_{k}" for k in range(N_USER_FEATURES)] + [f"user-item_affinity_{k}" for k in range(n_items)]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise ObdFileError(f"{source}: missing columns {missing[:5]}{'...' if len(missing) > 5 else ''}")
    frame = pd.DataFrame({
        "ts": pd.to_datetime(raw["timestamp"], utc=True),
        "item_id": raw["item_id"].astype(np.int64),
        "position": raw["position"].astype(np.int64) - 1,
        "click": raw["click"].astype(np.int64),
        "pscore": raw["propensity_score"].astype(np.float64),
    })
    for k in range(N_USER_FEATURES):
        frame[f"user_feature_{k}"] = raw[f"user_feature_{k}"].astype(str)
    affinity = raw[[f"user-item_affinity_{k}" for k in range(n_items)]].to_numpy(np.float64)
    frame = pd.concat([frame, pd.DataFrame(affinity, columns=[f"affinity_{k}" for k in range(n_items)],
                                           index=frame.index)], axis=1)
    problems = []
    if len(frame) != ROWS:
        problems.append(f"{len(frame)} rows, expected {ROWS}")
    if not frame["item_id"].between(0, n_items - 1).all():
        problems.append(f"item_id outside [0, {n_items})")
    if not frame["position"].between(0, LEN_LIST - 1).all():
        problems.append(f"position outside 1..{LEN_LIST}")
    if not frame["click"].isin((0, 1)).all():
        problems.append("click not 0/1")
    if not ((frame["pscore"] > 0) & (frame["pscore"] <= 1)).all():
        problems.append("propensity_score outside (0, 1]")
    if problems:
        raise ObdFileError(f"{source}: " + "; ".join(problems))
    return frame.sort_values("ts", kind="stable").reset_index(drop=True)


def load_open_bandit(policy: str, campaign: str, *, root: str | Path | None = None) -> BanditLog:
    """Read and check one log of the Open Bandit Dataset's small sample.

    Args:
        policy: ``"random"`` (uniform random logging) or ``"bts"`` (Bernoulli
            Thompson sampling).
        campaign: ``"all"`` (80 items), ``"men"`` (34) or ``"women"`` (46).
        root: a folder laid out like obp's ``dataset/obd`` (``<policy>/<campaign>/...``)
            to read instead of the installed package (the files must still
            match obp 0.4.1's sha256).

    Returns:
        A :class:`BanditLog` (10,000 impressions, time order, 0-based positions).

    Raises:
        ValueError: unknown policy or campaign.
        ObdFileError: obp missing, a file missing, its sha256 wrong, or its
            columns, row count or values not those of the sample.
    """
    log_path, item_path = obd_path(policy, campaign, "log"), obd_path(policy, campaign, "items")
    if root is not None:
        base = Path(root) / policy / campaign
        log_path, item_path = base / log_path.name, base / item_path.name
    sha_log, sha_items = SHA256[policy, campaign]
    raw = _verified_csv(log_path, sha_log, None if root is None else Path(root))
    items = _verified_csv(item_path, sha_items, None if root is None else Path(root)).reset_index(drop=True)
    n_items = N_ITEMS[campaign]
    frame = _tidy_log(raw, n_items, str(log_path))
    return BanditLog(policy, campaign, frame, items, n_items)


def bts_action_dist(campaign: str, *, n_sim: int, seed: int) -> np.ndarray:
    """The Bernoulli TS policy that ran on ZOZOTOWN, as an evaluation policy: P(item at position).

    obp's ``BernoulliTS`` with ``is_zozotown_prior=True`` carries the Beta
    priors that the production policy used; the probability of each item at
    each position is estimated by drawing ``n_sim`` rankings (as the OBD paper
    does). Context-free: the same for every impression.

    Returns:
        float64 (n_items, 3); each column sums to 1.

    Raises:
        ValueError: unknown campaign or ``n_sim`` < 1.
    """
    if campaign not in CAMPAIGNS:
        raise ValueError(f"campaign must be one of {CAMPAIGNS}, got {campaign!r}")
    if n_sim < 1:
        raise ValueError(f"n_sim must be >= 1, got {n_sim}")
    from obp.policy import BernoulliTS

    policy = BernoulliTS(n_actions=N_ITEMS[campaign], len_list=LEN_LIST, is_zozotown_prior=True, campaign=campaign,
                         random_state=seed)
    return np.asarray(policy.compute_batch_action_dist(n_sim=n_sim, n_rounds=1)[0], dtype=np.float64)
