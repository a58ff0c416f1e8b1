"""The demo job: box-prompted LiteMedSAM on every nodule of a cohort, a Dice table and an overlay.

For each case the key slice (largest ground-truth area, :attr:`Case.key_slice`) is encoded once
and prompted with the tight box of the ground truth on that slice, grown by ``pad_px`` pixels on
each side (MedSAM's own inference boxes are grown the same way). The mask is scored against the
consensus slice. This is the upper reference of box prompting: a person's box is noisier.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hiseg_sim import metrics
from hiseg_sim.data.case import Case

__all__ = [
    "DemoRow",
    "demo_config",
    "load_demo",
    "tight_box",
    "segment_key_slice",
    "volume_box_bound",
    "run_demo",
    "plot_overlays",
]


@dataclass
class DemoRow:
    case_id: str
    diameter_mm: float
    texture: int | None
    key_slice: int
    dice: float
    iou: float
    hd95_mm: float
    iou_pred: float
    seconds: float


def tight_box(mask2d: np.ndarray, pad_px: float = 2.0) -> np.ndarray:
    """``(x0, y0, x1, y1)`` of a 2-D mask's bounding box grown by ``pad_px``, clipped to the image."""
    ys, xs = np.nonzero(mask2d)
    if ys.size == 0:
        raise ValueError("tight_box of an empty mask")
    h, w = mask2d.shape
    return np.array(
        [
            max(xs.min() - pad_px, 0),
            max(ys.min() - pad_px, 0),
            min(xs.max() + pad_px, w - 1),
            min(ys.max() + pad_px, h - 1),
        ],
        dtype=np.float32,
    )


def segment_key_slice(case: Case, segmenter, pad_px: float = 2.0):
    """Encode ``case``'s key slice, prompt it with the padded tight box; return ``(row, prediction, box)``."""
    from hiseg_sim.segmenters import Prompt

    z = case.key_slice
    t0 = time.perf_counter()
    emb = segmenter.encode(case.volume_hu[z])
    box = tight_box(case.gt[z], pad_px)
    pred = segmenter.decode(emb, Prompt(box=box))
    dt = time.perf_counter() - t0
    gt = case.gt[z]
    row = DemoRow(
        case_id=case.case_id,
        diameter_mm=round(float(case.diameter_mm), 2),
        texture=case.meta.get("texture"),
        key_slice=int(z),
        dice=metrics.dice(pred.mask, gt),
        iou=metrics.iou(pred.mask, gt),
        hd95_mm=metrics.hd95(pred.mask, gt, case.spacing_zyx[1:]),
        iou_pred=pred.iou_pred,
        seconds=round(dt, 3),
    )
    return row, pred, box


def volume_box_bound(env, case: Case, source: str = "reference", pad_px: float = 2.0) -> float:
    """What the env's segmenter reaches on a whole nodule with perfect boxes: a tight box (grown by
    ``pad_px``) on every slice of a mask, scored in 3-D against the env's reference.

    ``source="reference"``: the reference's own boxes on its own slices (a person who sees the
    answer). ``source="readers"``: each LIDC reader's boxes on the slices that reader outlined,
    the mean over the readers (a person who sees the nodule as a radiologist did). The second is
    the bound a simulated expert can be held to where the model cannot reach the readers'
    agreement (docs/volumes.md). ``env`` is a 3-D env (``NoduleSeg3D-v0``) holding ``case``.
    """
    from hiseg_sim.env.actions import BoxAction, NextSlice, PrevSlice
    from hiseg_sim.env.viewport import crop2d

    if source not in ("reference", "readers"):
        raise ValueError(f"volume_box_bound: source must be 'reference' or 'readers'; got {source!r}")
    masks = [case.gt] if source == "reference" else list(case.reader_masks)
    if not masks:
        raise ValueError(f"volume_box_bound: {case.case_id} has no readers' masks (source='readers' needs LIDC cases)")
    scores = []
    for mask in masks:
        env.reset(seed=0, options={"case_id": case.case_id})
        u = env.unwrapped
        vp, size = u.viewport, u.size
        slab = np.stack(
            [crop2d(m, vp.y0, vp.x0, size, fill=False) for m in np.asarray(mask, bool)[vp.z0 : vp.z0 + vp.n_slices]]
        )
        z = u.current_slice
        for t in np.flatnonzero(slab.reshape(len(slab), -1).any(axis=1)):
            while z < t:
                env.step(NextSlice())
                z += 1
            while z > t:
                env.step(PrevSlice())
                z -= 1
            env.step(BoxAction(*(float(v) for v in tight_box(slab[t], pad_px))))
        scores.append(metrics.dice(u.slab_masks(), u.scoring_reference()))
    return float(np.mean(scores))


def plot_overlays(
    items: Sequence[tuple[Case, DemoRow, np.ndarray, np.ndarray]],
    path: str | Path,
    crop_mm: float = 40.0,
    ncols: int = 6,
    segmenter: str = "LiteMedSAM",
) -> Path:
    """Save a grid: each nodule's key slice (lung window) with the ground-truth contour (green),
    the segmenter's mask contour (red) and the box prompt (yellow dashed), cropped to ``crop_mm`` or
    1.6 nodule diameters, whichever is larger."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from hiseg_sim.data.cohort import texture_group

    n = len(items)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.8 * nrows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (case, row, mask, box) in zip(axes.flat, items):
        z = row.key_slice
        img = case.volume_hu[z]
        ys, xs = np.nonzero(case.gt[z])
        cy, cx = ys.mean(), xs.mean()
        half = max(crop_mm, 1.6 * row.diameter_mm) / 2 / case.spacing_zyx[1]
        y0, y1 = int(max(cy - half, 0)), int(min(cy + half, img.shape[0]))
        x0, x1 = int(max(cx - half, 0)), int(min(cx + half, img.shape[1]))
        ax.imshow(img[y0:y1, x0:x1], cmap="gray", vmin=-1350, vmax=150, interpolation="nearest")
        ax.contour(case.gt[z, y0:y1, x0:x1], levels=[0.5], colors="lime", linewidths=1.0)
        if mask[y0:y1, x0:x1].any():
            ax.contour(mask[y0:y1, x0:x1], levels=[0.5], colors="red", linewidths=1.0)
        bx0, by0, bx1, by1 = box
        ax.plot(
            [bx0 - x0, bx1 - x0, bx1 - x0, bx0 - x0, bx0 - x0],
            [by0 - y0, by0 - y0, by1 - y0, by1 - y0, by0 - y0],
            color="yellow",
            lw=0.8,
            ls="--",
        )
        tex = f" {texture_group(row.texture)}" if row.texture is not None else ""
        ax.set_title(
            f"{row.case_id.split('/')[0][-4:]}/{row.case_id.split('/')[-1]}{tex} "
            f"{row.diameter_mm:.0f}mm\nDice {row.dice:.2f}",
            fontsize=8,
        )
    handles = [
        Line2D([], [], color="lime", label="ground truth (reader consensus)"),
        Line2D([], [], color="red", label=f"{segmenter} mask"),
        Line2D([], [], color="yellow", ls="--", label="box prompt"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(f"Box-prompted {segmenter} on the key slice of each nodule (lung window W1500 L-600)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summarise(rows: Iterable[DemoRow]) -> dict:
    d = np.array([r.dice for r in rows])
    return {
        "n": int(d.size),
        "dice_median": float(np.median(d)),
        "dice_mean": float(d.mean()),
        "dice_min": float(d.min()),
        "dice_max": float(d.max()),
    }


def demo_config(
    cohort: str = "default",
    limit: int | None = None,
    segmenter: str = "litemedsam",
    checkpoint: str | os.PathLike | None = None,
    pad_px: float = 2.0,
    sample: dict | None = None,
) -> dict:
    """What a :func:`run_demo` result depends on (stored in ``summary.json`` as ``config``);
    ``sample``: the arguments of the :func:`~hiseg_sim.data.cohort.sample_manifest` the cohort
    came from, if it did."""
    config = {
        "cohort": cohort,
        "limit": limit,
        "segmenter": segmenter,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "pad_px": float(pad_px),
    }
    if sample is not None:
        config["sample"] = dict(sample)
    return config


def load_demo(out_dir: str | Path, config: dict) -> tuple[list[DemoRow], dict, Path] | None:
    """The finished :func:`run_demo` result in ``out_dir`` if it was made with ``config``, else ``None``."""
    out = Path(out_dir)
    try:
        summary = json.loads((out / "summary.json").read_text())
        lines = (out / "dice.csv").read_text().strip().splitlines()
    except (OSError, ValueError):
        return None
    overlay = out / "overlay.png"
    if summary.get("config") != config or not overlay.is_file() or len(lines) - 1 != summary.get("n"):
        return None
    fields = DemoRow.__dataclass_fields__
    rows = []
    for line in lines[1:]:
        vals = dict(zip(fields, line.split(",")))
        rows.append(
            DemoRow(
                case_id=vals["case_id"],
                diameter_mm=float(vals["diameter_mm"]),
                texture=None if vals["texture"] in ("None", "") else int(vals["texture"]),
                key_slice=int(vals["key_slice"]),
                **{k: float(vals[k]) for k in ("dice", "iou", "hd95_mm", "iou_pred", "seconds")},
            )
        )
    return rows, summary, overlay


def run_demo(
    out_dir: str | Path = "runs/boxes",
    cohort: str = "default",
    limit: int | None = None,
    segmenter="litemedsam",
    checkpoint: str | None = None,
    cache_dir: str | None = None,
    pad_px: float = 2.0,
    progress: bool = True,
    config: dict | None = None,
    manifest: dict | None = None,
) -> tuple[list[DemoRow], dict, Path]:
    """Segment every case of ``cohort`` and write ``dice.csv``, ``summary.json`` and ``overlay.png``
    to ``out_dir``; returns ``(rows, summary, overlay_path)``. Rows are written as they come, so an
    interrupted run keeps what it had.

    ``segmenter``: a registry name (built here with ``checkpoint`` and the on-disk embedding cache
    ``cache_dir``, default :func:`hiseg_sim.segmenters.default_cache_dir`) or a built segmenter.
    ``config``: what to record as the run's configuration (default :func:`demo_config` of the arguments).
    ``manifest``: where ``cohort`` is listed (default the shipped one), e.g. a
    :func:`~hiseg_sim.data.cohort.sample_manifest`.
    """
    from hiseg_sim import segmenters
    from hiseg_sim.data.cohort import iter_cohort
    from hiseg_sim.progress import progress_iter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(segmenter, str):
        name = segmenter
        seg = segmenters.build(
            segmenter,
            checkpoint=checkpoint,
            cache_dir=cache_dir if cache_dir is not None else segmenters.default_cache_dir(),
        )
    else:
        seg, name = segmenter, getattr(segmenter, "name", type(segmenter).__name__)
    if config is None:
        config = demo_config(cohort, limit, name, checkpoint, pad_px)
    (out / "summary.json").unlink(missing_ok=True)  # written again only when every case is done
    rows, items = [], []
    csv = out / "dice.csv"
    with csv.open("w") as fh:
        fh.write(",".join(DemoRow.__dataclass_fields__) + "\n")
        for case in progress_iter(
            iter_cohort(cohort, manifest=manifest, limit=limit, progress=progress),
            desc=f"{name} on {cohort}",
            enabled=progress,
            total=limit if limit is not None or manifest is None else manifest["cohorts"][cohort]["n"],
        ):
            row, pred, box = segment_key_slice(case, seg, pad_px)
            rows.append(row)
            items.append((case, row, pred.mask, box))
            fh.write(",".join(str(v) for v in asdict(row).values()) + "\n")
            fh.flush()
    if not rows:
        raise RuntimeError(f"cohort {cohort!r} yielded no cases")
    overlay = plot_overlays(items, out / "overlay.png", segmenter=name)
    summary = summarise(rows) | {
        "segmenter": name,
        "cohort": cohort,
        "pad_px": pad_px,
        "encoder_calls": seg.encoder_calls,
        "config": config,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return rows, summary, overlay
