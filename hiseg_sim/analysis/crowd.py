"""Crowd fusion: k workers per nodule, their masks fused by majority vote or STAPLE, against cost.

A crowd study runs a pool of W independent workers (replicates of one arm) on every nodule and
stores each final mask (:func:`hiseg_sim.codec.pack_mask`). For each k = 1 … W, :func:`crowd_draws`
draws subsets of k workers per nodule (without replacement, seeded), fuses their masks and scores
the fusion against the reference as the env scored each mask (:func:`case_masks`):

- 2-D episodes (every slab one slice, the key slice): on that slice;
- 3-D episodes: in 3-D, voxel by voxel over the union of the workers' slabs (a worker labels
  nothing outside their own slab), against the whole case's ground truth (ground truth outside
  every slab counts as missed, as in the env); besides Dice, NSD and the relative volume error of
  the fused mask (voxel spacing from the case row).

- majority vote (:func:`fuse_majority`): a pixel is in when *more than half* of the k masks
  have it (ties — possible for even k — go to background);
- STAPLE (:func:`fuse_staple`; Warfield et al. 2004, SimpleITK's ``STAPLEImageFilter``): each
  worker's sensitivity and specificity are estimated by EM and the fused mask is the pixels
  whose posterior probability of foreground is >= 0.5. With k = 1 both return the one mask.

The cost of a fused mask is the sum of the k workers' simulated seconds. :func:`workers_needed`
answers "how many workers for Dice >= X" and :func:`saturation_k` "where does adding workers
stop paying".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from hiseg_sim.analysis.stats import bootstrap_ci
from hiseg_sim.codec import unpack_mask
from hiseg_sim.metrics import dice as _dice
from hiseg_sim.metrics import nsd, volume_error

__all__ = [
    "fuse_majority",
    "fuse_staple",
    "FUSERS",
    "is_three_d",
    "case_masks",
    "case_spacing",
    "volume_scores",
    "crowd_draws",
    "crowd_curve",
    "workers_needed",
    "saturation_k",
    "single_arm_reference",
]


def fuse_majority(masks: np.ndarray) -> np.ndarray:
    """Strict majority of ``k`` ``bool`` masks stacked on axis 0: ``sum > k / 2``.

    >>> m = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], bool)
    >>> fuse_majority(m).astype(int).tolist()
    [1, 1, 0]
    """
    m = np.asarray(masks, bool)
    return m.sum(0) * 2 > m.shape[0]


#: STAPLE's EM iterations at most (see :func:`fuse_staple`).
STAPLE_MAX_ITERATIONS = 1000


def fuse_staple(masks: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """STAPLE of ``k`` ``bool`` masks (axis 0) with SimpleITK; pixels with posterior >= ``threshold``.

    Degenerate inputs are handled without calling the filter: one mask is returned as is, and
    all-empty or all-identical masks are their own consensus.
    """
    import SimpleITK as sitk

    m = np.asarray(masks, bool)
    k = m.shape[0]
    if k == 1 or not m.any() or (m == m[0]).all():
        return m[0].copy()
    spatial = m.shape[1:]
    if len(spatial) == 3 and spatial[0] == 1:
        arrs, squeeze = [x[0] for x in m], True
    else:
        arrs, squeeze = list(m), False
    images = [sitk.GetImageFromArray(a.astype(np.uint8)) for a in arrs]
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1.0)
    # EM's default is no iteration limit: with a rater of a few voxels it crawls on for tens of
    # thousands of iterations (30 s per fusion) with the thresholded mask the same after 1,000
    f.SetMaximumIterations(STAPLE_MAX_ITERATIONS)
    prob = sitk.GetArrayFromImage(f.Execute(images))
    if not np.isfinite(prob).all():  # EM fell over (e.g. a worker with no foreground at all): fall back
        return fuse_majority(m)
    out = prob >= threshold
    return out[None] if squeeze else out


FUSERS = {"majority": fuse_majority, "staple": fuse_staple}


def is_three_d(episodes: pd.DataFrame) -> bool:
    """Whether ``episodes`` were scored in 3-D: some slab holds more than one slice (a 2-D env
    scores one slice, the key slice; a 3-D env's slab is the slices the person could scroll)."""
    return bool((pd.to_numeric(episodes["score_nz"]) > 1).any())


def case_masks(episodes: pd.DataFrame, case_row) -> tuple[np.ndarray, np.ndarray]:
    """The masks of ``episodes`` (one case) and the reference, in one frame.

    Returns ``(masks (n, dz, dy, dx) bool, ref (dz, dy, dx) bool)`` on the union of the masks' and
    the reference's bounding boxes. The reference is what the env scored against: in 2-D
    (:func:`is_three_d` false) the ground truth on the one scored slice, which every episode must
    share; in 3-D the whole case's ground truth, the frame spanning the union of the episodes' slabs
    and the ground truth's extent (voxels of the frame outside a worker's slab are background for
    that worker: nothing was labelled there).
    """
    crops = [unpack_mask(r) for _, r in episodes.iterrows()]
    gt_crop, gt_org = unpack_mask(case_row, "gt")
    if is_three_d(episodes):
        z0s = pd.to_numeric(episodes["score_z0"]).to_numpy(int)
        z1s = z0s + pd.to_numeric(episodes["score_nz"]).to_numpy(int)
        ref_crop, ref_org = gt_crop, tuple(int(v) for v in gt_org)
        z_lo, z_hi = int(z0s.min()), int(z1s.max())
        if ref_crop.size:  # ground truth outside every slab: in the frame, missed by every worker
            z_lo, z_hi = min(z_lo, ref_org[0]), max(z_hi, ref_org[0] + ref_crop.shape[0])
    else:
        z0, nz = int(episodes["score_z0"].iloc[0]), int(episodes["score_nz"].iloc[0])
        if not ((episodes["score_z0"] == z0).all() and (episodes["score_nz"] == nz).all()):
            raise ValueError(
                f"case {case_row['case_id']}: episodes scored on different slabs; fuse 2-D episodes of one env"
            )
        z_lo, z_hi = z0, z0 + nz
        # the reference on the scored slab
        gz = np.arange(gt_org[0], gt_org[0] + gt_crop.shape[0])
        keep = (gz >= z0) & (gz < z0 + nz)
        ref_crop = gt_crop[keep]
        ref_org = (int(gz[keep][0]) if keep.any() else z0, gt_org[1], gt_org[2])
    boxes = [(org, c.shape) for c, org in crops if c.size] + [(ref_org, ref_crop.shape)]
    lo = np.min([[z_lo, *o[1:]] for o, _ in boxes], axis=0)
    hi = np.max([[z_hi, o[1] + s[1], o[2] + s[2]] for o, s in boxes], axis=0)
    shape = tuple(int(v) for v in hi - lo)
    frame = np.zeros((len(crops),) + shape, bool)
    for i, (c, org) in enumerate(crops):
        if c.size:
            a = np.asarray(org) - lo
            frame[i, a[0] : a[0] + c.shape[0], a[1] : a[1] + c.shape[1], a[2] : a[2] + c.shape[2]] = c
    ref = np.zeros(shape, bool)
    if ref_crop.size:
        a = np.asarray(ref_org) - lo
        ref[a[0] : a[0] + ref_crop.shape[0], a[1] : a[1] + ref_crop.shape[1], a[2] : a[2] + ref_crop.shape[2]] = (
            ref_crop
        )
    return frame, ref


def case_spacing(case_row) -> tuple[float, float, float]:
    """Voxel spacing ``(z, y, x)`` mm of a case row (1 mm where the row has none)."""
    return tuple(float(case_row.get(f"spacing_{a}", 1.0) or 1.0) for a in "zyx")


def volume_scores(fused: np.ndarray, ref: np.ndarray, spacing) -> dict:
    """NSD at :data:`~hiseg_sim.experiments.episode.NSD_TOLERANCE_MM` and the relative volume error
    ``(V_fused - V_ref) / V_ref`` of a fused 3-D mask (NaN for an empty reference)."""
    from hiseg_sim.experiments.episode import NSD_TOLERANCE_MM

    return {
        "nsd": nsd(fused, ref, NSD_TOLERANCE_MM, spacing),
        "volume_error": volume_error(fused, ref, spacing)["rel"],
    }


def _fuse_case(job: tuple) -> list[dict]:
    """The rows of one case, ``job = (case_id, pool, case_row, picks, methods, three_d)``: each
    ``(k, draw, pick)`` of ``picks`` fused by every method and scored."""
    cid, pool, case_row, picks, methods, three_d = job
    masks, ref = case_masks(pool, case_row)
    spacing = case_spacing(case_row)
    secs = pool["seconds_total"].to_numpy(dtype=float)
    meta = {c: pool[c].iloc[0] for c in ("size_band", "texture_group") if c in pool}
    rows = []
    for k, d, pick in picks:
        for m in methods:
            fused = FUSERS[m](masks[pick])
            row = {
                "case_id": cid,
                "k": int(k),
                "draw": d,
                "method": m,
                "dice": _dice(fused, ref),
                "seconds": float(secs[pick].sum()),
                **meta,
            }
            if three_d:
                row.update(volume_scores(fused, ref, spacing))
            rows.append(row)
    return rows


def crowd_draws(
    episodes: pd.DataFrame,
    cases: pd.DataFrame,
    worker: str,
    ks: Sequence[int] = range(1, 10),
    methods: Sequence[str] = ("majority", "staple"),
    draws: int = 30,
    seed: int = 0,
    arm_col: str = "annotator",
    progress: bool = False,
    workers: int = 1,
) -> pd.DataFrame:
    """Every fused draw: columns ``case_id, k, draw, method, dice, seconds`` (plus size band / texture),
    and for 3-D episodes (:func:`is_three_d`) ``nsd`` and ``volume_error`` (:func:`volume_scores`).

    For each case the pool is that case's episodes of arm ``worker``; for each ``k`` up to the
    pool size, ``draws`` subsets of k workers (all of them once when k equals the pool).
    ``progress``: a bar over nodules on stderr (STAPLE on every draw takes minutes on a large pool).
    ``workers``: processes fusing nodules side by side (0: all cores; the subsets are drawn first,
    in order, so the rows are the same for any number of workers).
    """
    for m in methods:
        if m not in FUSERS:
            raise ValueError(f"unknown fusion method {m!r}; one of {sorted(FUSERS)}")
    pool_all = episodes[episodes[arm_col] == worker]
    if pool_all.empty:
        raise ValueError(f"no episodes of arm {worker!r}; arms: {sorted(episodes[arm_col].unique())}")
    case_rows = cases.set_index("case_id")
    rng = np.random.default_rng(seed)
    three_d = is_three_d(pool_all)
    jobs = []
    for cid, pool in pool_all.groupby("case_id", sort=True):
        W = len(pool)
        picks = [
            (k, d, np.sort(rng.choice(W, size=k, replace=False)))
            for k in ks
            if k <= W
            for d in range(1 if k == W else draws)
        ]
        row = {**case_rows.loc[cid].to_dict(), "case_id": cid}
        jobs.append((cid, pool.sort_values("replicate"), row, picks, tuple(methods), three_d))
    from hiseg_sim.experiments.executors import map_ordered
    from hiseg_sim.progress import progress_iter

    rows: list[dict] = []
    for case_rows_out in progress_iter(
        map_ordered(_fuse_case, jobs, workers),
        desc=f"fusing {worker} masks",
        total=len(jobs),
        enabled=progress,
        unit="nodule",
    ):
        rows += case_rows_out
    return pd.DataFrame(rows)


def crowd_curve(draws: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Expected Dice and cost against k per method: ``method, k, dice, lo, hi, seconds, cases``; with
    3-D draws also the mean ``nsd``, signed ``volume_error`` and ``abs_volume_error`` (relative).

    Each case contributes the mean over its draws (so cases weigh equally); the interval is a
    bootstrap over cases.
    """
    extra = [c for c in ("nsd", "volume_error") if c in draws]
    d = draws.assign(abs_volume_error=draws["volume_error"].abs()) if extra else draws
    if extra:
        extra.append("abs_volume_error")
    per_case = d.groupby(["method", "k", "case_id"], as_index=False)[["dice", "seconds", *extra]].mean()
    rows = []
    for (m, k), g in per_case.groupby(["method", "k"], sort=True):
        est, lo, hi = bootstrap_ci(g["dice"], g["case_id"], n_boot, seed=seed)
        rows.append(
            {
                "method": m,
                "k": int(k),
                "dice": est,
                "lo": lo,
                "hi": hi,
                "seconds": float(g["seconds"].mean()),
                "cases": int(g["case_id"].nunique()),
                **{c: float(g[c].mean()) for c in extra},
            }
        )
    return pd.DataFrame(rows)


def workers_needed(
    curve: pd.DataFrame, target: float, method: str = "staple", conservative: bool = False
) -> int | None:
    """The smallest k whose expected Dice (or, ``conservative``, its lower 95 % bound) is >= ``target``;
    ``None`` if no k in the curve gets there."""
    c = curve[curve["method"] == method].sort_values("k")
    col = "lo" if conservative else "dice"
    hit = c[c[col] >= target]
    return None if hit.empty else int(hit["k"].iloc[0])


def saturation_k(curve: pd.DataFrame, method: str = "staple", share: float = 0.9, min_gain: float = 0.005) -> dict:
    """Where fusion saturates, two ways:

    - ``k_share``: the smallest k that reaches ``share`` of the whole gain from k = 1 to the
      largest k;
    - ``k_marginal``: the smallest k after which one more worker adds less than ``min_gain`` Dice
      (every later step included).

    Returns ``{"k_share", "k_marginal", "gain_total", "dice_k1", "dice_kmax", "k_max"}``.
    """
    c = curve[curve["method"] == method].sort_values("k")
    ks, d = c["k"].to_numpy(), c["dice"].to_numpy()
    if len(ks) == 0:
        return {
            "k_share": None,
            "k_marginal": None,
            "gain_total": float("nan"),
            "dice_k1": float("nan"),
            "dice_kmax": float("nan"),
            "k_max": None,
        }
    gain = d[-1] - d[0]
    k_share = int(ks[np.argmax(d - d[0] >= share * gain)]) if gain > 0 else int(ks[0])
    steps = np.diff(d) / np.maximum(np.diff(ks), 1)
    k_marg = int(ks[-1])
    for i in range(len(steps)):
        if (steps[i:] < min_gain).all():
            k_marg = int(ks[i])
            break
    return {
        "k_share": k_share,
        "k_marginal": k_marg,
        "gain_total": float(gain),
        "dice_k1": float(d[0]),
        "dice_kmax": float(d[-1]),
        "k_max": int(ks[-1]),
    }


def single_arm_reference(
    episodes: pd.DataFrame, arm: str, n_boot: int = 1000, seed: int = 0, arm_col: str = "annotator"
) -> dict:
    """Mean Dice (95 % CI over cases) and mean seconds of one arm (e.g. one expert per nodule)."""
    g = episodes[episodes[arm_col] == arm]
    if g.empty:
        raise ValueError(f"no episodes of arm {arm!r}")
    per_case = g.groupby("case_id", as_index=False)[["final_dice", "seconds_total"]].mean()
    est, lo, hi = bootstrap_ci(per_case["final_dice"], per_case["case_id"], n_boot, seed=seed)
    return {
        "arm": arm,
        "dice": est,
        "lo": lo,
        "hi": hi,
        "seconds": float(per_case["seconds_total"].mean()),
        "cases": int(len(per_case)),
    }
