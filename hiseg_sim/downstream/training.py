"""Train the small U-Net on (image, label, weight) slices; score it against ground truth.

Pure arithmetic apart from :func:`train_unet`, which owns a seeded torch generator and a seeded
``numpy.random.Generator`` for augmentation, so one seed gives the same weights bit for bit
(single-threaded CPU; ``threads`` sets ``torch.set_num_threads`` for the call and restores it).

Loss: pixel-weighted binary cross-entropy + (1 - weighted soft Dice). Weights are 1 for hard
labels; a pseudo-label's weights come from its uncertainty
(:func:`hiseg_sim.downstream.pseudo.confidence_weights`), so doubtful pixels count less
(SemiSAM+, arXiv 2502.20749: the variance across prompt rounds down-weights the loss).

Augmentation: the eight flips/rotations of the square, and a shift of up to ``shift_px`` pixels
with air (−1000 HU) coming in at the edge — the same thing a viewport placed off-centre shows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hiseg_sim.downstream.unet import TinyUNet, predict_prob, to_input
from hiseg_sim.seeding import keyed_rng

__all__ = ["TrainConfig", "augment_batch", "train_unet", "dice_scores", "volume_scores", "predict_volume", "shift2d"]

AIR_HU = -1000.0


@dataclass(frozen=True)
class TrainConfig:
    """What a training run depends on (hashable: it keys the weight cache).

    Attributes:
        steps: optimiser steps (fixed, not epochs: the cost does not grow with the number of slices).
        batch: slices per step (drawn with replacement).
        lr: AdamW learning rate (cosine decay to 5 % of it).
        base: U-Net width (channels of the first level).
        shift_px: largest augmentation shift in pixels.
        patch_px: side of the training patch cut from the middle of each augmented slice (the net
            is fully convolutional: it predicts on any side divisible by 4, e.g. the 96-px viewport).
        threads: torch intra-op threads during training.
        prior: give the net the centre-prior channel (:class:`~hiseg_sim.downstream.unet.TinyUNet`).
        jitter_hu: intensity augmentation: each slice's HU scaled by ``1 + N(0, jitter_hu / 1000)``
            and offset by ``N(0, jitter_hu)`` (0: none).
    """

    steps: int = 250
    batch: int = 8
    lr: float = 5e-3
    base: int = 8
    shift_px: int = 12
    patch_px: int = 64
    threads: int = 1
    prior: bool = False
    jitter_hu: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def shift2d(a: np.ndarray, dy: int, dx: int, fill: float) -> np.ndarray:
    """``a`` ``(H, W)`` moved by ``(dy, dx)`` pixels, ``fill`` where nothing comes in.

    >>> shift2d(np.arange(4.0).reshape(2, 2), 0, 1, -1.0).tolist()
    [[-1.0, 0.0], [-1.0, 2.0]]
    """
    H, W = a.shape
    out = np.full_like(a, fill)
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    out[yd, xd] = a[ys, xs]
    return out


def augment_batch(
    images: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    idx: np.ndarray,
    rng: np.random.Generator,
    shift_px: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slices ``idx`` of ``(N, H, W)`` images (HU), labels (``[0, 1]``) and weights, each with a random
    dihedral transform and shift; returns three ``(B, H, W)`` float32 arrays (images still in HU)."""
    xb, yb, wb = [], [], []
    for i in idx:
        x, y, w = images[i], labels[i], weights[i]
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        x, y, w = (np.rot90(a, k) for a in (x, y, w))
        if flip:
            x, y, w = (a[:, ::-1] for a in (x, y, w))
        if shift_px > 0:
            dy, dx = (int(v) for v in rng.integers(-shift_px, shift_px + 1, size=2))
            x, y, w = (
                shift2d(np.ascontiguousarray(x), dy, dx, AIR_HU),
                shift2d(np.ascontiguousarray(y), dy, dx, 0.0),
                shift2d(np.ascontiguousarray(w), dy, dx, 1.0),
            )
        xb.append(x), yb.append(y), wb.append(w)
    return (np.stack(xb).astype(np.float32), np.stack(yb).astype(np.float32), np.stack(wb).astype(np.float32))


def _centre(a: np.ndarray, side: int) -> np.ndarray:
    """The central ``side``² patch of ``(B, H, W)`` (all of it if ``side`` is not smaller)."""
    H, W = a.shape[-2:]
    if side <= 0 or side >= min(H, W):
        return a
    y0, x0 = (H - side) // 2, (W - side) // 2
    return np.ascontiguousarray(a[:, y0 : y0 + side, x0 : x0 + side])


def _loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum") / weight.sum().clamp_min(
        1.0
    )
    p = torch.sigmoid(logits)
    inter = (weight * p * target).sum()
    denom = (weight * (p + target)).sum()
    return bce + 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)


def train_unet(
    images_hu: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    cfg: TrainConfig = TrainConfig(),
    seed: int = 0,
    progress: str | None = None,
) -> TinyUNet:
    """Train a :class:`TinyUNet` from scratch.

    Args:
        images_hu: ``(N, H, W)`` float HU slices.
        labels: ``(N, H, W)`` targets in ``[0, 1]`` (bool masks or soft pseudo-labels).
        weights: ``(N, H, W)`` non-negative pixel weights, or ``None`` (all 1).
        cfg: the schedule and width.
        seed: seeds the initialisation, the batch draws and the augmentation.
        progress: if given, a bar over the steps on stderr with this description.

    Returns:
        The trained net in eval mode.
    """
    x = np.asarray(images_hu, np.float32)
    y = np.asarray(labels, np.float32)
    w = np.ones_like(y) if weights is None else np.asarray(weights, np.float32)
    if x.ndim != 3 or x.shape != y.shape or x.shape != w.shape or len(x) == 0:
        raise ValueError(
            f"images, labels and weights must be the same non-empty (N, H, W); got {x.shape}, {y.shape}, {w.shape}"
        )
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cfg.threads)))
    try:
        torch.manual_seed(int(seed))
        rng = keyed_rng(seed, 0x5E6)
        net = TinyUNet(cfg.base, cfg.prior)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr * 0.05)
        net.train()
        from hiseg_sim.progress import progress_iter

        for _ in progress_iter(range(int(cfg.steps)), desc=progress or "", enabled=progress is not None, unit="step"):
            idx = rng.integers(0, len(x), size=int(cfg.batch))
            xb, yb, wb = (_centre(a, int(cfg.patch_px)) for a in augment_batch(x, y, w, idx, rng, int(cfg.shift_px)))
            if cfg.jitter_hu > 0:
                j = float(cfg.jitter_hu)
                xb = (
                    xb * (1.0 + rng.normal(0.0, j / 1000.0, (len(xb), 1, 1))) + rng.normal(0.0, j, (len(xb), 1, 1))
                ).astype(np.float32)
            xt = torch.from_numpy(to_input(xb))[:, None]
            loss = _loss(net(xt), torch.from_numpy(yb)[:, None], torch.from_numpy(wb)[:, None])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
    finally:
        torch.set_num_threads(old_threads)
    return net


def dice_scores(net: TinyUNet, images_hu: np.ndarray, gts: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Dice of ``net``'s mask (probability > ``threshold``) against each ground truth; ``(N,)``.

    Both empty counts as 1 (the policy of :func:`hiseg_sim.metrics.dice`).
    """
    prob = predict_prob(net, np.asarray(images_hu, np.float32))
    pred = prob.reshape(np.shape(gts)) > threshold
    g = np.asarray(gts, bool)
    inter = (pred & g).sum((1, 2))
    s = pred.sum((1, 2)) + g.sum((1, 2))
    return np.where(s == 0, 1.0, 2.0 * inter / np.maximum(s, 1)).astype(np.float64)


def predict_volume(
    net: TinyUNet, images_hu: np.ndarray, origin_yx: tuple[int, int], shape_zyx, threshold: float = 0.5
) -> np.ndarray:
    """The net's 3-D mask of a case: each slice of ``images_hu`` ``(Z, S, S)`` (the in-plane crop at
    ``origin_yx`` of every slice) predicted on its own and the slice masks stacked, pasted into a
    ``(Z, Y, X)`` volume (nothing outside the crop: the net never saw it)."""
    prob = predict_prob(net, np.asarray(images_hu, np.float32))
    Z, Y, X = (int(v) for v in shape_zyx)
    S = prob.shape[-1]
    y0, x0 = (int(v) for v in origin_yx)
    out = np.zeros((Z, Y, X), bool)
    ys, ye, xs, xe = max(y0, 0), min(y0 + S, Y), max(x0, 0), min(x0 + S, X)
    out[:, ys:ye, xs:xe] = prob[:Z, ys - y0 : ye - y0, xs - x0 : xe - x0] > threshold
    return out


def volume_scores(net: TinyUNet, volumes, tolerance_mm: float = 1.0) -> list[dict]:
    """3-D scores of ``net`` on test volumes: for each ``(images (Z, S, S), origin_yx, gt (Z, Y, X),
    spacing_zyx)`` the stacked slice predictions (:func:`predict_volume`) against the whole
    ground truth: ``{"dice", "nsd", "volume_error"}`` (NSD at ``tolerance_mm``; volume error
    relative, ``(V_pred - V_gt) / V_gt``)."""
    from hiseg_sim import metrics

    out = []
    for images, origin, gt, spacing in volumes:
        pred = predict_volume(net, images, origin, np.shape(gt))
        out.append(
            {
                "dice": metrics.dice(pred, gt),
                "nsd": metrics.nsd(pred, gt, tolerance_mm, spacing),
                "volume_error": metrics.volume_error(pred, gt, spacing)["rel"],
            }
        )
    return out
