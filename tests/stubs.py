"""Stand-ins for fast unit tests. Named as stubs: they are not models.

``StubSegmenter`` runs the real :class:`~hiseg_sim.segmenters.base.Segmenter` machinery (window,
resize, cache, prompt checks, upsampling) around a trivial core: its "embedding" is the resized
image and its "decoder" marks pixels brighter than mid-window inside the box (or, without a box, in
a disc around the first positive point). Cheap and deterministic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hiseg_sim.segmenters.base import LOW_RES, Segmenter


class StubSegmenter(Segmenter):
    name = "stub"
    input_size = 256
    weights_sha256 = "0" * 64

    def _encode_tensor(self, unit_image, resized_hw):
        h, w = resized_hw
        x = F.pad(unit_image, (0, self.input_size - w, 0, self.input_size - h))
        return x[0].numpy()  # (1, 256, 256)

    def _decode_tensor(self, features, coords, labels, box, mask_in):
        img = features[0, 0]
        yy, xx = torch.meshgrid(torch.arange(LOW_RES), torch.arange(LOW_RES), indexing="ij")
        region = torch.zeros(LOW_RES, LOW_RES, dtype=torch.bool)
        if box is not None:
            x0, y0, x1, y1 = box[0].tolist()
            region = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
        elif coords is not None and (labels == 1).any():
            cx, cy = coords[0][labels[0] == 1][0].tolist()
            region = (xx - cx) ** 2 + (yy - cy) ** 2 <= 10**2
        logits = torch.where(region & (img > 0.5), 5.0, -5.0)
        if coords is not None:
            for (cx, cy), lab in zip(coords[0].tolist(), labels[0].tolist()):
                if lab == 0:
                    logits[(xx - cx) ** 2 + (yy - cy) ** 2 <= 4] = -5.0
        return logits[None, None], torch.tensor([[0.9]])
