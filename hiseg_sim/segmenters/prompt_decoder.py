"""The prompt encoder and mask decoder of a SAM-family model as one traceable module.

:class:`PromptDecoder` is what both runtimes run: ``runtime="torch"`` calls it in PyTorch,
``runtime="onnx"`` runs its ONNX export (:mod:`hiseg_sim.segmenters.onnx_decoder`) in ONNX Runtime.
So the two agree by construction, up to float rounding.

Every prompt travels as one list of points, the way ``segment_anything/utils/onnx.py`` feeds its
exported decoder (:func:`pack_prompt` builds it):

- clicks with labels 1 (positive) and 0 (negative), in the order given;
- a box as its two corners, labels 2 (top-left) and 3 (bottom-right), after the clicks;
- without a box, one padding point ``(0, 0)`` with label -1 after the clicks, as
  ``PromptEncoder.forward`` adds one when ``boxes is None``; a mask-only prompt has no points;
- a mask prompt as ``mask_input`` with ``has_mask_input = 1``; otherwise zeros and 0, which selects
  the ``no_mask_embed`` exactly as the prompt encoder does when ``masks is None``.

Only the first (single-mask) output is computed, as ``multimask_output=False`` returns. The
arithmetic is regrouped, not changed (checked against the original modules in the tests):

- the two stride-2 transposed convolutions of the upscaling run as matrix products on the
  ``(h*w, C)`` token layout, with a last-axis LayerNorm, and the hypernetwork dot product is taken
  before the pixels are put back in raster order;
- the attentions between the few prompt tokens (T, about 7) and the 4096 image tokens are
  re-associated so the image side meets ``H*T`` columns instead of the 128-wide projections
  (``q_h·(W_k x)ᵀ = (q_h W_k,h)·xᵀ``; the key bias is constant along the softmax and drops out; the
  value projection is applied after averaging, since each softmax row sums to one). For T ≤ 16 this
  halves the work of those layers; above it costs a little more.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PromptDecoder", "pack_prompt", "INPUT_NAMES", "OUTPUT_NAMES"]

INPUT_NAMES = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
OUTPUT_NAMES = ("low_res_logits", "iou_predictions")


def pack_prompt(
    coords: np.ndarray | None,
    labels: np.ndarray | None,
    box: np.ndarray | None,
    mask_in: np.ndarray | None,
    mask_size: int = 256,
) -> dict[str, np.ndarray]:
    """Model-grid prompts → the four prompt inputs of :class:`PromptDecoder` (numpy, float32).

    Args:
        coords: ``(N, 2)`` ``(x, y)`` in the model's input grid, or ``None``.
        labels: ``(N,)`` 1 positive / 0 negative, with ``coords``.
        box: ``(4,)`` ``(x0, y0, x1, y1)`` in the model's input grid, or ``None``.
        mask_in: ``(256, 256)`` low-resolution logits, or ``None``.

    Returns:
        ``point_coords (1, M, 2)``, ``point_labels (1, M)``, ``mask_input (1, 1, 256, 256)`` and
        ``has_mask_input (1,)``; ``M`` = clicks + 2 with a box, clicks + 1 without, 0 for a mask alone.
    """
    pts = [] if coords is None else [np.asarray(coords, np.float32).reshape(-1, 2)]
    lab = [] if coords is None else [np.asarray(labels, np.float32).reshape(-1)]
    if box is not None:
        pts.append(np.asarray(box, np.float32).reshape(2, 2))
        lab.append(np.array([2.0, 3.0], np.float32))
    elif coords is not None:
        pts.append(np.zeros((1, 2), np.float32))
        lab.append(np.array([-1.0], np.float32))
    pc = np.concatenate(pts)[None] if pts else np.zeros((1, 0, 2), np.float32)
    pl = np.concatenate(lab)[None] if lab else np.zeros((1, 0), np.float32)
    if mask_in is None:
        mi, has = np.zeros((1, 1, mask_size, mask_size), np.float32), np.zeros(1, np.float32)
    else:
        mi, has = np.asarray(mask_in, np.float32).reshape(1, 1, mask_size, mask_size), np.ones(1, np.float32)
    return {
        "point_coords": np.ascontiguousarray(pc),
        "point_labels": np.ascontiguousarray(pl),
        "mask_input": np.ascontiguousarray(mi),
        "has_mask_input": has,
    }


def _convT_as_matmul(conv: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A kernel-2 stride-2 transposed conv as ``(C_in, 4*C_out)`` weights ordered ``(dy, dx, c_out)``."""
    assert conv.kernel_size == (2, 2) and conv.stride == (2, 2) and conv.padding == (0, 0)
    w = conv.weight.detach()  # (C_in, C_out, 2, 2)
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous(), conv.bias.detach().repeat(4)


class PromptDecoder(nn.Module):
    """``PromptEncoder`` + ``MaskDecoder`` (single-mask output) of one SAM-family network.

    Args:
        prompt_encoder, mask_decoder: the modules of the loaded network (weights are shared, not
            copied, except for a few re-laid-out constants).

    ``forward(image_embeddings (1, 256, 64, 64), point_coords (1, M, 2), point_labels (1, M),
    mask_input (1, 1, 256, 256), has_mask_input (1,))`` → ``(low_res_logits (1, 1, 256, 256),
    iou_predictions (1, 1))``. Coordinates ``(x, y)`` are in the model's input grid (256 for
    LiteMedSAM, 1024 for SAM), before the half-pixel shift the encoder applies.
    """

    # re-laid-out constants, registered as buffers in __init__
    coord_div: torch.Tensor
    image_pe: torch.Tensor
    up_w1: torch.Tensor
    up_b1: torch.Tensor
    up_w2: torch.Tensor
    up_b2: torch.Tensor
    mask_w2: torch.Tensor

    def __init__(self, prompt_encoder: Any, mask_decoder: Any) -> None:
        super().__init__()
        # segment-anything's modules, read by attribute (torch types every attribute ``Tensor | Module``)
        self.prompt_encoder: Any = prompt_encoder
        self.mask_decoder: Any = mask_decoder
        pe, md = prompt_encoder, mask_decoder
        h, w = pe.input_image_size
        with torch.no_grad():
            consts = {
                "coord_div": torch.tensor([float(w), float(h)]),
                "image_pe": pe.get_dense_pe().flatten(2).transpose(1, 2).contiguous(),  # (1, h*w, C)
            }
            consts["up_w1"], consts["up_b1"] = _convT_as_matmul(md.output_upscaling[0])
            consts["up_w2"], consts["up_b2"] = _convT_as_matmul(md.output_upscaling[3])
            conv2 = pe.mask_downscaling[3]  # (c2, c1, 2, 2) → ((a, c, c1), c2)
            consts["mask_w2"] = conv2.weight.detach().permute(2, 3, 1, 0).reshape(-1, conv2.out_channels).contiguous()
        for k, v in consts.items():  # re-laid-out copies of weights; not saved in state dicts
            self.register_buffer(k, v, persistent=False)
        self.emb_hw: tuple[int, int] = (int(pe.image_embedding_size[0]), int(pe.image_embedding_size[1]))
        self.mask_size = int(pe.mask_input_size[0])

    # ---- prompt encoder ---------------------------------------------------------------------
    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        emb = pe.pe_layer._pe_encoding((coords + 0.5) / self.coord_div)
        lab = labels.unsqueeze(-1)
        emb = emb * (lab != -1) + pe.not_a_point_embed.weight * (lab == -1)
        for i in range(pe.num_point_embeddings):
            emb = emb + pe.point_embeddings[i].weight * (lab == i)
        return emb

    def embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """Dense prompt embedding in token layout ``(1, h*w, C)``.

        ``mask_downscaling`` (conv 2×2/2, LayerNorm2d, GELU, conv 2×2/2, LayerNorm2d, GELU, conv 1×1)
        runs as matrix products on 2×2 patches; ``has_mask_input`` scales the last layer's input
        and picks its bias, so without a mask the result is exactly ``no_mask_embed``.
        """
        pe = self.prompt_encoder
        ds = pe.mask_downscaling
        c1, c2 = ds[0].out_channels, ds[3].out_channels
        h, w = self.emb_hw
        # (4h, 4w) → (h, w, a, c, b, d) with y = 4Y + 2a + b, x = 4X + 2c + d
        m = mask_input.reshape(h, 2, 2, w, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(h * w, 4, 4)
        x = torch.matmul(m, ds[0].weight.reshape(c1, 4).t()) + ds[0].bias  # (hw, (a,c), c1)
        x = ds[2](F.layer_norm(x, (c1,), ds[1].weight, ds[1].bias, ds[1].eps))
        x = torch.matmul(x.reshape(h * w, 4 * c1), self.mask_w2) + ds[3].bias  # (hw, c2)
        x = ds[5](F.layer_norm(x, (c2,), ds[4].weight, ds[4].bias, ds[4].eps))
        bias = has_mask_input * ds[6].bias + (1 - has_mask_input) * pe.no_mask_embed.weight[0]
        return (torch.matmul(x * has_mask_input, ds[6].weight.reshape(-1, c2).t()) + bias).unsqueeze(0)

    # ---- attention, re-associated -----------------------------------------------------------
    @staticmethod
    def _tokens_to_image(attn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Few queries ``q (1, T, C)`` attend to many keys ``k, v (1, N, C)``."""
        nh = attn.num_heads
        dh = attn.internal_dim // nh
        c = k.shape[2]
        qh = attn.q_proj(q).reshape(-1, nh, dh).transpose(0, 1)  # (H, T, dh)
        g = torch.matmul(qh, attn.k_proj.weight.reshape(nh, dh, c)) / math.sqrt(dh)  # (H, T, C)
        s = torch.matmul(g.reshape(1, -1, c), k.transpose(1, 2))  # (1, H*T, N)
        av = torch.matmul(torch.softmax(s, dim=-1), v).reshape(nh, -1, c)  # (H, T, C)
        wv = attn.v_proj.weight.reshape(nh, dh, c).transpose(1, 2)  # (H, C, dh)
        o = torch.matmul(av, wv) + attn.v_proj.bias.reshape(nh, 1, dh)  # (H, T, dh)
        return attn.out_proj(o.transpose(0, 1).reshape(1, -1, nh * dh))

    @staticmethod
    def _image_to_tokens(attn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Many queries ``q (1, N, C)`` attend to few keys ``k, v (1, T, C)``."""
        nh = attn.num_heads
        dh = attn.internal_dim // nh
        n, c = q.shape[1], q.shape[2]
        kh = attn.k_proj(k).reshape(-1, nh, dh).transpose(0, 1)  # (H, T, dh)
        wq = attn.q_proj.weight.reshape(nh, dh, c)  # (H, dh, C)
        m = torch.matmul(wq.transpose(1, 2), kh.transpose(1, 2)) / math.sqrt(dh)  # (H, C, T)
        bias = torch.matmul(kh, attn.q_proj.bias.reshape(nh, dh, 1)) / math.sqrt(dh)  # (H, T, 1)
        s = torch.matmul(q, m.transpose(0, 1).reshape(c, -1)) + bias.reshape(1, 1, -1)
        a = torch.softmax(s.reshape(1, n, nh, -1), dim=-1).reshape(1, n, -1)
        vh = attn.v_proj(v).reshape(-1, nh, dh).transpose(0, 1)  # (H, T, dh)
        wo = attn.out_proj.weight.reshape(c, nh, dh).permute(1, 2, 0)  # (H, dh, C)
        vo = torch.matmul(vh, wo).reshape(1, -1, c)  # (1, H*T, C)
        return torch.matmul(a, vo) + attn.out_proj.bias

    # ---- mask decoder -----------------------------------------------------------------------
    def _transformer(self, keys: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tr = self.mask_decoder.transformer
        queries, query_pe, key_pe = tokens, tokens, self.image_pe
        for layer in tr.layers:
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(q=queries, k=queries, v=queries)
            else:
                q = queries + query_pe
                queries = queries + layer.self_attn(q=q, k=q, v=queries)
            queries = layer.norm1(queries)
            k = keys + key_pe
            queries = layer.norm2(
                queries + self._tokens_to_image(layer.cross_attn_token_to_image, queries + query_pe, k, keys)
            )
            queries = layer.norm3(queries + layer.mlp(queries))
            keys = layer.norm4(
                keys + self._image_to_tokens(layer.cross_attn_image_to_token, k, queries + query_pe, queries)
            )
        queries = tr.norm_final_attn(
            queries + self._tokens_to_image(tr.final_attn_token_to_image, queries + query_pe, keys + key_pe, keys)
        )
        return queries, keys

    def _upscale_and_mask(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """Image tokens ``(1, h*w, C)`` and one hypernetwork vector ``(1, C/8)`` → logits ``(1, 1, 4h, 4w)``."""
        up = self.mask_decoder.output_upscaling
        ln, act1, act2 = up[1], up[2], up[4]
        c1 = self.up_w1.shape[1] // 4
        x = torch.matmul(keys, self.up_w1) + self.up_b1  # (1, hw, 4*C1): (dy, dx, c)
        x = act1(F.layer_norm(x.reshape(1, -1, c1), (c1,), ln.weight, ln.bias, ln.eps))
        x = act2(torch.matmul(x, self.up_w2) + self.up_b2)  # (1, 4hw, 4*C2)
        c2 = self.up_w2.shape[1] // 4
        m = torch.matmul(x.reshape(1, -1, c2), hyper.reshape(1, c2, 1))  # (1, 16hw, 1)
        h, w = self.emb_hw
        m = m.reshape(h, w, 2, 2, 2, 2).permute(0, 2, 4, 1, 3, 5)  # (h, dy, dy2, w, dx, dx2)
        return m.reshape(1, 1, 4 * h, 4 * w)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        md = self.mask_decoder
        sparse = self.embed_points(point_coords, point_labels)
        dense = self.embed_mask(mask_input, has_mask_input)
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0).unsqueeze(0)
        tokens = torch.cat([out_tokens, sparse], dim=1)
        keys = image_embeddings.flatten(2).transpose(1, 2) + dense  # (1, hw, C)
        hs, keys = self._transformer(keys, tokens)
        hyper = md.output_hypernetworks_mlps[0](hs[:, 1, :])
        iou = md.iou_prediction_head(hs[:, 0, :])[:, :1]
        return self._upscale_and_mask(keys, hyper), iou
