"""RGB frames of the viewport for people watching an episode (``render_mode="rgb_array"``).

Pure numpy; called only from ``env.render()``, never from ``step``. What is drawn:

- the viewport in the lung window, enlarged ``scale`` times (nearest neighbour);
- the model's mask as a translucent orange fill with a solid orange outline;
- positive clicks as green discs, negative clicks as red discs, both ringed in black;
- the box prompt as a yellow rectangle;
- optionally (``render_gt``, for humans only) the ground-truth outline in cyan;
- in 3-D, a bar under the image with one cell per slice of the slab: dark grey = no mask,
  orange = holds a mask, cyan tick = holds ground truth (only with ``render_gt``), white frame =
  the slice in view.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import disk

__all__ = ["record_episode_png", "render_frame", "save_frames_png"]

_ORANGE = np.array([255, 140, 0], np.float32)
_CYAN = np.array([0, 230, 255], np.uint8)
_YELLOW = np.array([255, 230, 0], np.uint8)
_GREEN = np.array([40, 220, 60], np.uint8)
_RED = np.array([235, 40, 40], np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _up(a: np.ndarray, s: int) -> np.ndarray:
    return np.repeat(np.repeat(a, s, axis=0), s, axis=1)


def render_frame(
    image_u8: np.ndarray,
    mask: np.ndarray | None,
    points,
    box,
    gt: np.ndarray | None = None,
    scale: int = 4,
    slices: dict | None = None,
) -> np.ndarray:
    """One RGB frame, ``uint8`` ``(H*scale [+ bar], W*scale, 3)``.

    Args:
        image_u8: ``uint8`` ``(H, W)`` windowed viewport.
        mask: ``bool`` ``(H, W)`` model mask or ``None``.
        points: ``(x, y, label)`` clicks in viewport pixels.
        box: ``(x0, y0, x1, y1)`` or ``None``.
        gt: ``bool`` ``(H, W)`` ground truth to outline, or ``None``.
        scale: enlargement factor (>= 1).
        slices: 3-D bar: ``{"current": int, "has_mask": bool (n,), "has_gt": bool (n,) or None}``.
    """
    s = max(1, int(scale))
    h, w = image_u8.shape
    rgb = np.repeat(_up(image_u8, s)[..., None], 3, axis=2).astype(np.float32)
    if mask is not None and mask.any():
        m = _up(mask, s)
        rgb[m] = 0.6 * rgb[m] + 0.4 * _ORANGE
        rgb[_outline(m)] = _ORANGE
    frame = np.clip(rgb, 0, 255).astype(np.uint8)
    if gt is not None and gt.any():
        g = _outline(_up(gt, s))
        frame[g] = _CYAN
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        X0, Y0 = x0 * s, y0 * s
        X1, Y1 = min((x1 + 1) * s - 1, w * s - 1), min((y1 + 1) * s - 1, h * s - 1)
        t = max(1, s // 2)
        frame[Y0 : Y0 + t, X0 : X1 + 1] = _YELLOW
        frame[Y1 - t + 1 : Y1 + 1, X0 : X1 + 1] = _YELLOW
        frame[Y0 : Y1 + 1, X0 : X0 + t] = _YELLOW
        frame[Y0 : Y1 + 1, X1 - t + 1 : X1 + 1] = _YELLOW
    r = max(2.5, 1.5 * s)
    for x, y, lab in points:
        c = ((y + 0.5) * s, (x + 0.5) * s)
        rr, cc = disk(c, r + 1.2, shape=frame.shape[:2])
        frame[rr, cc] = 0
        rr, cc = disk(c, r, shape=frame.shape[:2])
        frame[rr, cc] = _GREEN if lab == 1 else _RED
    if slices is not None:
        frame = np.concatenate([frame, _slice_bar(w * s, slices)], axis=0)
    return frame


def _slice_bar(width: int, slices: dict) -> np.ndarray:
    has_mask = np.asarray(slices["has_mask"], bool)
    has_gt = slices.get("has_gt")
    n = max(1, has_mask.shape[0])
    bar_h = 14
    bar = np.full((bar_h, width, 3), 30, np.uint8)
    edges = np.linspace(0, width, n + 1).astype(int)
    for i in range(n):
        a, b = edges[i], max(edges[i] + 1, edges[i + 1] - 1)
        bar[2 : bar_h - 2, a:b] = _ORANGE.astype(np.uint8) if has_mask[i] else 70
        if has_gt is not None and has_gt[i]:
            bar[bar_h - 3 : bar_h, a:b] = _CYAN
        if i == slices["current"]:
            bar[0:2, a:b] = 255
            bar[:, a : a + 1] = 255
            bar[:, b - 1 : b] = 255
    return bar


def save_frames_png(frames: list[np.ndarray], titles: list[str], path, ncols: int = 4, dpi: int = 100) -> None:
    """Save RGB frames side by side, each with a title, as one PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(frames)
    if n == 0:
        raise ValueError("no frames to save")
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    h, w = frames[0].shape[:2]
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * w / dpi, nrows * (h / dpi + 0.45)), dpi=dpi, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, frame, title in zip(axes.ravel(), frames, titles):
        ax.imshow(frame, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def record_episode_png(
    env, actions, path, *, seed: int | None = None, options: dict | None = None, ncols: int = 4
) -> list[dict]:
    """Step ``env`` (made with ``render_mode="rgb_array"``) through ``actions`` and save every frame to one PNG.

    The first frame is the reset; each title gives the step, the action and the Dice after it.
    Stops early if the episode ends. Returns the infos.
    """
    from hiseg_sim.env.actions import action_to_dict, coerce_action

    _, info = env.reset(seed=seed, options=options)
    frames, titles, infos = [env.render()], [f"reset: {info['case_id']}"], [info]
    for t, a in enumerate(actions, 1):
        typed = coerce_action(a, env.unwrapped.action_space)
        _, _, term, trunc, info = env.step(a)
        d = action_to_dict(typed)
        what = d.pop("kind") + ("" if not d else " " + ",".join(_fmt(v) for v in d.values()))
        extra = f" z={info['slice']}" if "slice" in info else ""
        flag = f" [{info['invalid_action']}]" if info["invalid_action"] else ""
        titles.append(
            f"{t}: {what}{flag}\nDice {info['dice']:.3f}  IoU_pred {info['iou_pred']:.2f}  "
            f"{info['seconds_total']:.1f} s{extra}"
        )
        frames.append(env.render())
        infos.append(info)
        if term or trunc:
            break
    save_frames_png(frames, titles, path, ncols=ncols)
    return infos


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "+" if v else "-"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"
