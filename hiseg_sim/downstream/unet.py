"""A small 2-D U-Net, CPU-sized: the specialist of the SemiSAM+ annotator and the downstream model.

Input is one windowed CT slice (HU through the lung window to ``[0, 1]``, the same window the
segmenters use), output one logit map of the same size. Three resolution levels with
``base``, ``2·base``, ``4·base`` channels (``base = 8``: about 30 k parameters); the side of the
input must be divisible by 4 (the 96-px slices and viewports of the phantom cohorts are). With
``prior=True`` the net appends a fixed Gaussian around the input's centre as a second channel
(:func:`centre_prior`): crops and viewports are centred on a noisy detection, and a fully
convolutional net cannot otherwise tell the nodule in the middle from a vessel at the edge.

:func:`predict_prob` is the numpy front end over a ``@torch.no_grad()`` core, as
``SamPredictor.predict`` over ``predict_torch``.

>>> net = TinyUNet(base=4)
>>> predict_prob(net, np.full((32, 32), -800.0, np.float32)).shape
(32, 32)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hiseg_sim.segmenters.base import LUNG_WINDOW, window_to_unit

__all__ = ["TinyUNet", "predict_prob", "to_input", "centre_prior", "PRIOR_SD_PX"]

#: width of the centre prior in pixels (the detection's error, ~3 mm per axis, is ~4 px; nodules
#: reach 30 px across): wide enough not to cut a large nodule, narrow enough to mark "the middle"
PRIOR_SD_PX = 16.0


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def centre_prior(h: int, w: int, sd_px: float = PRIOR_SD_PX) -> torch.Tensor:
    """``(H, W)`` Gaussian bump ``exp(-r² / 2 sd²)`` around the centre of an ``H x W`` input."""
    yy = torch.arange(h, dtype=torch.float32)[:, None] - (h - 1) / 2
    xx = torch.arange(w, dtype=torch.float32)[None, :] - (w - 1) / 2
    return torch.exp(-(yy**2 + xx**2) / (2.0 * float(sd_px) ** 2))


class TinyUNet(nn.Module):
    """U-Net with three levels: ``(B, 1, H, W)`` windowed slice → ``(B, 1, H, W)`` logits.

    ``prior=True`` appends :func:`centre_prior` as a second input channel inside :meth:`forward`:
    every crop and viewport is centred on a (noisy) detection of the nodule, so "the object near the
    middle" is information every annotator has; the fixed channel lets a fully convolutional net
    use it (callers still pass one channel)."""

    def __init__(self, base: int = 8, prior: bool = False) -> None:
        super().__init__()
        b = int(base)
        self.base = b
        self.prior = bool(prior)
        self.enc1, self.enc2, self.enc3 = _block(2 if self.prior else 1, b), _block(b, 2 * b), _block(2 * b, 4 * b)
        self.pool = nn.MaxPool2d(2)
        self.up2 = nn.ConvTranspose2d(4 * b, 2 * b, 2, stride=2)
        self.dec2 = _block(4 * b, 2 * b)
        self.up1 = nn.ConvTranspose2d(2 * b, b, 2, stride=2)
        self.dec1 = _block(2 * b, b)
        self.head = nn.Conv2d(b, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"TinyUNet needs H and W divisible by 4; got {tuple(x.shape[-2:])}")
        if self.prior:
            pr = centre_prior(*x.shape[-2:]).to(x.dtype)
            x = torch.cat([x, pr.expand(x.shape[0], 1, *pr.shape)], 1)
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(e3), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


def to_input(image_hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """HU ``(..., H, W)`` → float32 ``[0, 1]`` through ``window`` (level, width), same shape."""
    return window_to_unit(np.asarray(image_hu, np.float32), window)


@torch.no_grad()
def _predict_torch(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    net.eval()
    return torch.sigmoid(net(x))


def predict_prob(net: nn.Module, image_hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """Foreground probability of each pixel: ``(H, W)`` HU → ``(H, W)`` float32 (or ``(N, H, W)`` → ``(N, H, W)``)."""
    img = np.asarray(image_hu, np.float32)
    if img.ndim not in (2, 3):
        raise ValueError(f"predict_prob takes an (H, W) slice or an (N, H, W) stack in HU; got shape {img.shape}")
    x = torch.from_numpy(to_input(img, window)).reshape(-1, 1, *img.shape[-2:])
    out = _predict_torch(net, x)[:, 0].numpy().astype(np.float32)
    return out[0] if img.ndim == 2 else out
