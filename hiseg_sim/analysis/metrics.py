"""Per-group quality, effort and interaction curves from a run's episode and action tables.

Inputs are the long tables of :func:`hiseg_sim.experiments.load_run`:

- ``episodes``: one row per episode (``annotator``, ``segmenter``, ``case_id``, ``replicate``,
  ``size_band``, ``texture_group``, ``final_dice``, ``final_iou``, ``hd95``, ``nsd``,
  ``seconds_total``, ``n_prompts``, ``accepted``, ``gave_up`` ...);
- ``actions``: one row per action (the same keys plus ``step``, ``is_prompt``,
  ``prompt_index``, ``dice``, ``seconds_total``).

Definitions:

- *Dice after k prompts*: the Dice right after the k-th prompt that reached the model (clicks,
  boxes, propagations; undo and accept are not prompts). An episode that stopped with fewer
  prompts keeps its final Dice (the person accepted that mask); before the first prompt, 0.
- *NoC@t*: the smallest k whose Dice after k prompts is >= t, within ``max_prompts`` (RITM's
  20); episodes that never get there are counted (``never``) and, as in RITM, enter the mean as
  ``max_prompts`` (``noc_mean``); ``noc_mean_reached`` averages only those that got there.
  NoC here is on Dice (the env's score); RITM's is on IoU (``metric="iou"`` uses IoU = D/(2-D)).
- *Dice against simulated time*: a step function per episode — 0 until the first action ends,
  then the Dice after the last action finished by time t, the final Dice after the episode ends.
  Group curves average episodes on a common grid. *Time to t*: the simulated seconds at which
  the Dice first reaches t (NaN if never). *AUC*: the mean of the Dice-time curve over
  ``[0, horizon]`` (area divided by the horizon, so 1.0 is a perfect mask from second 0).

Every interval is a 95 % cluster bootstrap over cases (:mod:`hiseg_sim.analysis.stats`), seeded.
Any summary can be split further ``by`` size band (``<6``, ``6-10``, ``10-20``, ``>=20`` mm) or
texture group (``ground-glass``, ``part-solid``, ``solid``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from hiseg_sim.analysis.stats import bootstrap_ci

__all__ = [
    "SIZE_BANDS",
    "TEXTURE_GROUPS",
    "EPISODE_KEYS",
    "group_summary",
    "strata_table",
    "prompt_dice_matrix",
    "dice_after_k",
    "noc_table",
    "noc_summary",
    "reach_curve",
    "dice_time_matrix",
    "dice_time_curves",
    "time_to_threshold",
    "time_summary",
]

SIZE_BANDS = ("<6", "6-10", "10-20", ">=20")
TEXTURE_GROUPS = ("ground-glass", "part-solid", "solid")
EPISODE_KEYS = ["segmenter", "annotator", "case_id", "replicate", "position"]
#: columns carried into per-episode tables for grouping
_GROUPING = ("group", "protocol", "size_band", "texture_group", "feedback", "annotator_name")


def _keys(df: pd.DataFrame) -> list[str]:
    return [k for k in EPISODE_KEYS if k in df.columns]


def _index(episodes: pd.DataFrame) -> pd.DataFrame:
    """The episodes' scalar columns (no packed masks), renumbered 0 … n-1: row i of every matrix."""
    return episodes.drop(columns=[c for c in episodes.columns if c.endswith("_bits")]).reset_index(drop=True)


def _as_list(by) -> list[str]:
    return [by] if isinstance(by, str) else list(by)


# ---- quality and effort per group ---------------------------------------------------------------
def group_summary(
    episodes: pd.DataFrame,
    by: str | Sequence[str] = "annotator",
    n_boot: int = 2000,
    seed: int = 0,
    cluster: str = "case_id",
) -> pd.DataFrame:
    """One row per group: episodes, Dice (mean, 95 % CI, median), IoU, HD95 (median; NaN count),
    NSD, seconds (mean, CI, median), prompts, share accepted / given up.

    Columns: ``n, cases, dice, dice_lo, dice_hi, dice_median, iou, hd95_median, hd95_undefined,
    nsd, seconds, seconds_lo, seconds_hi, seconds_median, prompts, accepted, gave_up``.
    """
    by = _as_list(by)
    rows = []
    for key, g in episodes.groupby(by, sort=False, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        d, dlo, dhi = bootstrap_ci(g["final_dice"], g[cluster], n_boot, seed=seed)
        s, slo, shi = bootstrap_ci(g["seconds_total"], g[cluster], n_boot, seed=seed)
        row = dict(zip(by, key))
        row.update(
            n=len(g),
            cases=g[cluster].nunique(),
            dice=d,
            dice_lo=dlo,
            dice_hi=dhi,
            dice_median=float(g["final_dice"].median()),
            iou=float(g["final_iou"].mean()) if "final_iou" in g else float("nan"),
            hd95_median=float(g["hd95"].median()) if "hd95" in g else float("nan"),
            hd95_undefined=int(g["hd95"].isna().sum()) if "hd95" in g else 0,
            nsd=float(g["nsd"].mean()) if "nsd" in g else float("nan"),
            seconds=s,
            seconds_lo=slo,
            seconds_hi=shi,
            seconds_median=float(g["seconds_total"].median()),
            prompts=float(g["n_prompts"].mean()),
            accepted=float(g["accepted"].mean()) if "accepted" in g else float("nan"),
            gave_up=float(g["gave_up"].mean()) if "gave_up" in g else float("nan"),
        )
        rows.append(row)
    return pd.DataFrame(rows)


def strata_table(
    episodes: pd.DataFrame,
    value: str = "final_dice",
    group: str = "annotator",
    strata: str = "size_band",
    agg: str = "mean",
) -> pd.DataFrame:
    """``group`` x ``strata`` table of ``value`` (mean or median); strata in their natural order,
    plus an ``n`` row of episodes per stratum."""
    order = {"size_band": SIZE_BANDS, "texture_group": TEXTURE_GROUPS}.get(strata)
    t = episodes.pivot_table(index=group, columns=strata, values=value, aggfunc=agg, observed=True, sort=False)
    if order is not None:
        t = t.reindex(columns=[c for c in order if c in t.columns] + [c for c in t.columns if c not in order])
    t.loc["n (episodes)"] = episodes.groupby(strata, observed=True).size().reindex(t.columns).to_numpy()
    t.columns.name = strata
    return t


# ---- prompts -------------------------------------------------------------------------------------
def prompt_dice_matrix(
    actions: pd.DataFrame, episodes: pd.DataFrame, max_prompts: int = 20, metric: str = "dice"
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per episode, the Dice after k = 0 … ``max_prompts`` prompts (see the module docstring).

    Returns ``(index, M)``: ``index`` the episodes' key columns (in ``episodes`` order) and ``M``
    a ``(n_episodes, max_prompts + 1)`` float array (column k = after k prompts).
    """
    keys = _keys(episodes)
    idx = _index(episodes)
    pos = pd.MultiIndex.from_frame(idx[keys])
    M = np.zeros((len(idx), max_prompts + 1))
    final = episodes["final_dice"].to_numpy(dtype=float)
    p = actions[actions["is_prompt"].astype(bool)]
    p = p[p["prompt_index"] <= max_prompts]
    row = pos.get_indexer(pd.MultiIndex.from_frame(p[keys]))
    ok = row >= 0
    filled = np.zeros_like(M, dtype=bool)
    M[row[ok], p["prompt_index"].to_numpy()[ok]] = p["dice"].to_numpy(dtype=float)[ok]
    filled[row[ok], p["prompt_index"].to_numpy()[ok]] = True
    filled[:, 0] = True
    n_prompts = filled.sum(1) - 1
    for k in range(1, max_prompts + 1):  # after the last prompt: the final (accepted) mask
        carry = ~filled[:, k]
        M[carry, k] = np.where(k > n_prompts[carry], final[carry], M[carry, k - 1])
    if metric == "iou":
        M = M / (2.0 - M)
    elif metric != "dice":
        raise ValueError(f"metric must be 'dice' or 'iou'; got {metric!r}")
    return idx, M


def dice_after_k(
    actions: pd.DataFrame,
    episodes: pd.DataFrame,
    ks: Sequence[int] = (1, 2, 3, 5, 10),
    by: str | Sequence[str] = "annotator",
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean Dice after k prompts per group, with 95 % CIs: columns ``k, dice, lo, hi`` plus ``by``."""
    idx, M = prompt_dice_matrix(actions, episodes, max(ks))
    by = _as_list(by)
    rows = []
    for key, g in idx.groupby(by, sort=False, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        for k in ks:
            est, lo, hi = bootstrap_ci(M[g.index, k], g["case_id"], n_boot, seed=seed)
            rows.append({**dict(zip(by, key)), "k": int(k), "dice": est, "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


def noc_table(
    actions: pd.DataFrame,
    episodes: pd.DataFrame,
    thresholds: Sequence[float] = (0.80, 0.85, 0.90),
    max_prompts: int = 20,
    metric: str = "dice",
) -> pd.DataFrame:
    """Per episode: its keys and ``noc@80`` … (prompts to reach each threshold; NaN = never)."""
    idx, M = prompt_dice_matrix(actions, episodes, max_prompts, metric)
    keep = _keys(episodes) + [c for c in _GROUPING if c in idx.columns]
    out = idx[keep].copy()
    for t in thresholds:
        hit = M[:, 1:] >= t
        first = np.where(hit.any(1), hit.argmax(1) + 1, np.nan)
        out[f"noc@{round(t * 100):d}"] = first
    return out


def noc_summary(
    noc: pd.DataFrame, by: str | Sequence[str] = "annotator", max_prompts: int = 20, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Per group and threshold: ``noc_mean`` (never = ``max_prompts``, RITM), its CI,
    ``noc_mean_reached``, ``never`` (count) and ``never_share``."""
    by = _as_list(by)
    cols = [c for c in noc.columns if c.startswith("noc@")]
    rows = []
    for key, g in noc.groupby(by, sort=False, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        for c in cols:
            v = g[c].to_numpy(dtype=float)
            ritm = np.where(np.isnan(v), max_prompts, v)
            est, lo, hi = bootstrap_ci(ritm, g["case_id"], n_boot, seed=seed)
            rows.append(
                {
                    **dict(zip(by, key)),
                    "threshold": c,
                    "noc_mean": est,
                    "lo": lo,
                    "hi": hi,
                    "noc_mean_reached": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"),
                    "never": int(np.isnan(v).sum()),
                    "never_share": float(np.isnan(v).mean()),
                    "n": len(v),
                }
            )
    return pd.DataFrame(rows)


def reach_curve(
    actions: pd.DataFrame,
    episodes: pd.DataFrame,
    threshold: float = 0.85,
    max_prompts: int = 20,
    by: str | Sequence[str] = "annotator",
) -> pd.DataFrame:
    """Share of episodes whose Dice after k prompts is >= ``threshold``, k = 0 … ``max_prompts``
    (the NoC curve): columns ``k, share`` plus ``by``."""
    idx, M = prompt_dice_matrix(actions, episodes, max_prompts)
    reached = np.maximum.accumulate(M >= threshold, axis=1)
    by = _as_list(by)
    rows = []
    for key, g in idx.groupby(by, sort=False, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        share = reached[g.index].mean(0)
        rows += [{**dict(zip(by, key)), "k": k, "share": float(s)} for k, s in enumerate(share)]
    return pd.DataFrame(rows)


# ---- time ---------------------------------------------------------------------------------------
def _episode_time_series(actions: pd.DataFrame, idx: pd.DataFrame, keys: list[str]):
    """For each row ``i`` of the episode index ``idx``: ``(i, seconds_total, dice)`` of its actions in
    step order (episodes without actions are skipped)."""
    a = actions.sort_values(keys + ["step"], kind="mergesort")
    groups = {k if isinstance(k, tuple) else (k,): g for k, g in a.groupby(keys, sort=False)}
    for i, key in enumerate(idx[keys].itertuples(index=False, name=None)):
        g = groups.get(tuple(key))
        if g is not None:
            yield i, g["seconds_total"].to_numpy(dtype=float), g["dice"].to_numpy(dtype=float)


def dice_time_matrix(
    actions: pd.DataFrame, episodes: pd.DataFrame, grid: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per episode the Dice-time step function on ``grid`` (seconds): ``(index, M)`` with ``M``
    ``(n_episodes, len(grid))``."""
    keys = _keys(episodes)
    idx = _index(episodes)
    grid = np.asarray(grid, dtype=float)
    M = np.zeros((len(idx), grid.size))
    for i, t, d in _episode_time_series(actions, idx, keys):
        j = np.searchsorted(t, grid, side="right") - 1  # last action finished by time t
        M[i] = np.where(j >= 0, d[np.clip(j, 0, None)], 0.0)
    return idx, M


def dice_time_curves(
    actions: pd.DataFrame,
    episodes: pd.DataFrame,
    by: str | Sequence[str] = "annotator",
    horizon: float | None = None,
    n_grid: int = 121,
    n_boot: int = 300,
    seed: int = 0,
) -> pd.DataFrame:
    """Mean Dice against simulated seconds per group, with a 95 % band (cluster bootstrap over cases).

    Columns ``t, dice, lo, hi`` plus ``by``. ``horizon`` defaults to the longest episode, so at the
    last grid point every episode has ended and each group's curve equals its mean final Dice (an
    episode's Dice stays at its final value after it ends). A shorter horizon cuts the curves while
    some episodes are still under way: their end is then not the final Dice.
    """
    if horizon is None:
        horizon = float(np.nanmax(episodes["seconds_total"])) if len(episodes) else 1.0
    grid = np.linspace(0.0, max(horizon, 1e-6), n_grid)
    idx, M = dice_time_matrix(actions, episodes, grid)
    by = _as_list(by)
    rows = []
    for key, g in idx.groupby(by, sort=False, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        sub = M[g.index]
        mean = sub.mean(0)
        cl = pd.factorize(g["case_id"])[0]
        n_c = cl.max() + 1
        if n_c >= 2 and n_boot > 0:
            rng = np.random.default_rng(seed)
            sums = np.zeros((n_c, grid.size))
            np.add.at(sums, cl, sub)
            counts = np.bincount(cl, minlength=n_c).astype(float)
            draw = rng.integers(0, n_c, size=(n_boot, n_c))
            boot = sums[draw].sum(1) / counts[draw].sum(1)[:, None]
            lo, hi = np.quantile(boot, [0.025, 0.975], axis=0)
        else:
            lo = hi = np.full(grid.size, np.nan)
        rows.append(
            pd.DataFrame(
                {**{b: [kv] * grid.size for b, kv in zip(by, key)}, "t": grid, "dice": mean, "lo": lo, "hi": hi}
            )
        )
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def time_to_threshold(
    actions: pd.DataFrame,
    episodes: pd.DataFrame,
    thresholds: Sequence[float] = (0.80, 0.85, 0.90),
    horizon: float | None = None,
) -> pd.DataFrame:
    """Per episode: its columns, ``t@80`` … (simulated seconds until the Dice first reaches the
    threshold; NaN = never) and ``auc`` (mean Dice over ``[0, horizon]``; ``horizon`` defaults to
    the longest episode, so every group is scored over the same window)."""
    keys = _keys(episodes)
    idx = _index(episodes)
    if horizon is None:
        horizon = float(episodes["seconds_total"].max()) if len(episodes) else 1.0
    out = {f"t@{round(t * 100):d}": np.full(len(idx), np.nan) for t in thresholds}
    auc = np.zeros(len(idx))
    for i, t, d in _episode_time_series(actions, idx, keys):
        for thr in thresholds:
            hit = np.flatnonzero(d >= thr)
            if hit.size:
                out[f"t@{round(thr * 100):d}"][i] = t[hit[0]]
        # area under the step function on [0, horizon]: Dice d[j] holds from t[j] to t[j+1]
        ends = np.append(t[1:], max(horizon, t[-1]))
        seg = np.clip(np.minimum(ends, horizon) - np.minimum(t, horizon), 0, None)
        auc[i] = float((d * seg).sum() / horizon) if horizon > 0 else float("nan")
    for c, v in out.items():
        idx[c] = v
    idx["auc"] = auc
    return idx


def time_summary(
    ttt: pd.DataFrame, by: str | Sequence[str] = "annotator", n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Per group: median time to each threshold among episodes that reach it, the share that
    reach it, and the mean AUC with its CI."""
    by = _as_list(by)
    cols = [c for c in ttt.columns if c.startswith("t@")]
    rows = []
    for key, g in ttt.groupby(by, sort=False, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        for c in cols:
            v = g[c].to_numpy(dtype=float)
            row[f"{c} median s"] = float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan")
            row[f"{c} reached"] = float(np.isfinite(v).mean())
        est, lo, hi = bootstrap_ci(g["auc"], g["case_id"], n_boot, seed=seed)
        row.update(auc=est, auc_lo=lo, auc_hi=hi)
        rows.append(row)
    return pd.DataFrame(rows)


def episode_volume_errors(episodes: pd.DataFrame, cases: pd.DataFrame) -> pd.Series:
    """Relative volume error ``(V_mask - V_gt) / V_gt`` of each episode's final mask against the whole
    case's ground truth (3-D episodes: the env scores the whole case), indexed like ``episodes``;
    NaN for a case without ground truth. Voxel counts: the spacing cancels."""
    from hiseg_sim.codec import unpack_mask

    gt_vox = {r["case_id"]: int(unpack_mask(r, "gt")[0].sum()) for _, r in cases.iterrows()}
    out = []
    for _, r in episodes.iterrows():
        g = gt_vox.get(r["case_id"], 0)
        out.append((int(unpack_mask(r)[0].sum()) - g) / g if g else float("nan"))
    return pd.Series(out, index=episodes.index, dtype=float)
