"""Decoder and encoder timings on both runtimes, against this machine's limit, in one run.

:func:`decoder_bench` is what ``hiseg-sim bench --json`` merges in: with the embedding of one slice
cached, it times :meth:`Segmenter.decode` (prompt decoder + upsampling to the viewport) on the same
prompts with ``runtime="torch"`` and ``runtime="onnx"``, alternating the two call by call so that
load from other processes hits both alike; it counts the FLOPs of one decode of the network's own
prompt encoder + mask decoder (:func:`hiseg_sim.limits.count_flops`, box prompt) and measures the
2048² float32 matmul rate between the decodes, so ``limit_ms = flops / rate`` comes from the same
run and the same conditions.

:func:`encoder_bench` does the same for the image encoder on one 256² (LiteMedSAM) slice;
:func:`hiseg_sim.bench.cohort_parity` checks ONNX against PyTorch on every prompt of a default-cohort sweep.
:func:`encoder_options_bench` times each image encoder option (:data:`~hiseg_sim.segmenters.ENCODERS`)
against float32 ONNX Runtime on real phantom slices and compares their final masks
(:data:`AGREEMENT` is what a new default must meet).

Measured on 2 AMD EPYC cores shared with other jobs (load average in brackets):

- decoder, 2 threads [~3]: PyTorch 59-82 ms, ONNX Runtime 34-36 ms, the network's own modules
  103-109 ms; matmul 151-169 GFLOP/s, 3.62 GFLOP → limit 21-24 ms; ONNX / limit 1.43-1.67.
  In a quiet moment: ONNX Runtime 24.8 ms, env step 26.4 ms (limit ~20 ms).
- decoder, 1 thread [~3]: PyTorch 70 ms, ONNX Runtime 39 ms, limit 39 ms (92 GFLOP/s): 0.99.
- encoder (TinyViT, one slice): ONNX Runtime about half of PyTorch in every run, e.g. 609 vs
  1172 ms (2 threads [2.5]), 1134 vs 2274 ms (1 thread [2.7]).
- encoder options, LiteMedSAM, one thread, alternated slice by slice (load average 11-13): OpenVINO
  0.80-0.89 x the float32 ONNX Runtime time with the same masks (features within 4e-6, mask Dice
  1.0); dynamic int8 (MatMuls) 0.67-0.75 x, but mask Dice against float32 0.91-0.95 on average
  and 0.78 at worst, short of :data:`AGREEMENT`: int8 stays opt-in.
- parity, 40 cases x 8 prompts: max |logit difference| 4.4e-5, 100 % identical mask pixels
  (ONNX encoder + decoder against PyTorch encoder + decoder: 4.3e-5, 100 %).

The shared graph does 2.07 GFLOP per decode against the network's 3.62 (see
:mod:`~hiseg_sim.segmenters.prompt_decoder`); ``limit_ms`` is taken from the network's count.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from hiseg_sim import limits
from hiseg_sim.segmenters.base import Prompt
from hiseg_sim.segmenters.sam_family import SamFamilySegmenter

__all__ = [
    "AGREEMENT",
    "bench_prompts",
    "bench_slice",
    "decoder_bench",
    "encoder_bench",
    "encoder_options_bench",
    "phantom_slices",
]


def bench_slice(size: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A ``(size, size)`` lung-window slice in HU with a solid disc (a nodule) and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c, r = size * 0.45, size / 8
    gt = (yy - size * 0.52) ** 2 + (xx - c) ** 2 < r**2
    img = np.full((size, size), -850.0, np.float32) + rng.normal(0, 30, (size, size)).astype(np.float32)
    img[gt] = 20.0
    return img, gt


def bench_prompts(gt: np.ndarray, mask_logits: np.ndarray | None = None) -> list[Prompt]:
    """The prompt kinds an episode uses: box; box + clicks; clicks alone; with a mask prompt, also
    box + five clicks (a late step of a corrective episode)."""
    ys, xs = np.nonzero(gt)
    box = np.array([xs.min() - 2, ys.min() - 2, xs.max() + 2, ys.max() + 2], np.float32)
    cx, cy = float(xs.mean()), float(ys.mean())
    inside = np.array([[cx, cy]], np.float32)
    both = np.array([[cx, cy], [min(gt.shape[1] - 1, xs.max() + 4.0), cy]], np.float32)
    one, two = np.array([1]), np.array([1, 0])
    out = [
        Prompt(box=box),
        Prompt(box=box, points=inside, labels=one),
        Prompt(box=box, points=both, labels=two),
        Prompt(points=inside, labels=one),
        Prompt(points=both, labels=two),
    ]
    if mask_logits is not None:
        h, w = gt.shape
        clicks = np.array(
            [[cx, cy], [min(w - 1.0, cx + 3), cy], [cx, min(h - 1.0, cy + 3)], both[1], [cx, max(0.0, ys.min() - 4.0)]],
            np.float32,
        )
        m = mask_logits
        out += [
            Prompt(box=box, mask_logits=m),
            Prompt(box=box, points=inside, labels=one, mask_logits=m),
            Prompt(points=inside, labels=one, mask_logits=m),
            Prompt(box=box, points=clicks, labels=np.array([1, 1, 1, 0, 0]), mask_logits=m),
        ]
    return out


def _max_diff(a, b) -> float:
    """Max |difference| of two :class:`Prediction`'s viewport and low-resolution logits."""
    return max(float(np.abs(a.logits - b.logits).max()), float(np.abs(a.low_res_logits - b.low_res_logits).max()))


def _median_ms(xs: list[float]) -> float:
    return float(np.median(xs) * 1e3)


def decoder_bench(
    segmenter_name: str = "litemedsam",
    n: int = 40,
    *,
    seg: SamFamilySegmenter | None = None,
    checkpoint=None,
    onnx_dir=None,
    slice_size: int = 96,
    matmul_size: int = 2048,
    warmup: int = 3,
) -> dict:
    """Time the prompt decoder on both runtimes and compare it with this machine's limit.

    Args:
        segmenter_name: a SAM-family name of :func:`hiseg_sim.segmenters.available`.
        n: decodes per runtime (cycling over :func:`bench_prompts`).
        seg: an already built segmenter to use instead (its runtime is restored afterwards).
        checkpoint, onnx_dir: passed to :func:`hiseg_sim.segmenters.build`.
        slice_size: side of the synthetic viewport (:func:`bench_slice`).
        matmul_size: side of the square matmul that sets the rate.

    Returns:
        ``eager_decoder_ms`` / ``onnx_decoder_ms``: median :meth:`Segmenter.decode` time per runtime;
        ``reference_decoder_ms``: the network's own prompt encoder + mask decoder calls (the
        decode path before the shared PromptDecoder), core only; ``flops``: counted FLOPs of that
        reference decode (box prompt); ``graph_flops``: counted FLOPs of PromptDecoder;
        ``matmul_gflops``: median rate of the matmuls timed between the decodes;
        ``limit_ms = flops / matmul rate``; ``onnx_vs_limit``, ``onnx_vs_eager``: ratios;
        ``runtime``: what ``runtime="auto"`` picks; ``threads``; ``max_abs_logit_diff`` and
        ``pct_identical_pixels`` of ONNX vs torch over all prompts; ``n``, ``prompts``.
    """
    from hiseg_sim import segmenters
    from hiseg_sim.segmenters.sam_family import reference_decode

    if seg is None:
        built = segmenters.build(segmenter_name, checkpoint=checkpoint, onnx_dir=onnx_dir, runtime="auto")
        if not isinstance(built, SamFamilySegmenter):
            raise TypeError(
                f"decoder_bench needs a SAM-family segmenter (two decoder runtimes); {segmenter_name!r} is not"
            )
        seg = built
    auto_runtime, before = seg.runtime, seg.runtime
    img, gt = bench_slice(slice_size)
    emb = seg.encode(img)
    seg.set_runtime("torch")
    first = seg.decode(emb, Prompt(box=bench_prompts(gt)[0].box))
    prompts = bench_prompts(gt, first.low_res_logits)
    if seg.set_runtime("onnx") != "onnx":
        seg.set_runtime(before)
        raise RuntimeError("decoder_bench needs onnxruntime (pip install 'hiseg-sim[onnx]')")

    # parity over all prompts
    worst, same, total = 0.0, 0, 0
    for p in prompts:
        seg.set_runtime("torch")
        a = seg.decode(emb, p)
        seg.set_runtime("onnx")
        b = seg.decode(emb, p)
        worst = max(worst, _max_diff(a, b))
        same += int((a.mask == b.mask).sum())
        total += a.mask.size

    # FLOPs of one decode: the network's own modules (the limit) and the shared graph
    s = seg._scale_xy(emb)
    first_box = prompts[0].box
    assert first_box is not None  # bench_prompts opens with a box
    box = torch.from_numpy(first_box.reshape(2, 2) * s).reshape(1, 4)
    feats = torch.from_numpy(emb.features)[None]
    flops = limits.count_flops(reference_decode, seg.net, feats, None, None, box, None)
    seg.set_runtime("torch")
    graph_flops = limits.count_flops(seg._decode_tensor, feats, None, None, box, None)

    # timings, interleaved: torch decode, onnx decode, reference core, and a matmul every third round
    times: dict[str, list[float]] = {"torch": [], "onnx": [], "reference": []}
    rates: list[float] = []
    with torch.inference_mode():
        for i in range(warmup + n):
            p = prompts[i % len(prompts)]
            order = ("torch", "onnx") if i % 2 == 0 else ("onnx", "torch")
            for rt in order:
                seg.set_runtime(rt)
                t0 = time.perf_counter()
                seg.decode(emb, p)
                if i >= warmup:
                    times[rt].append(time.perf_counter() - t0)
            if i % 2 == 0:
                t0 = time.perf_counter()
                reference_decode(seg.net, feats, None, None, box, None)
                if i >= warmup:
                    times["reference"].append(time.perf_counter() - t0)
            if i % 3 == 0:
                rates.append(limits.matmul_sample(matmul_size))
    rates.append(limits.matmul_sample(matmul_size))
    seg.set_runtime(before)
    gflops = float(np.median(rates[1:] if len(rates) > 2 else rates))
    eager, onnx = _median_ms(times["torch"]), _median_ms(times["onnx"])
    lim = limits.limit_ms(flops, gflops)
    from hiseg_sim.segmenters.threads import get_threads

    return {
        "eager_decoder_ms": round(eager, 2),
        "onnx_decoder_ms": round(onnx, 2),
        "limit_ms": round(lim, 2),
        "flops": flops,
        "matmul_gflops": round(gflops, 1),
        "runtime": auto_runtime,
        "onnx_vs_limit": round(onnx / lim, 3),
        "onnx_vs_eager": round(onnx / eager, 3),
        "reference_decoder_ms": round(_median_ms(times["reference"]), 2),
        "graph_flops": graph_flops,
        "threads": get_threads(),
        "max_abs_logit_diff": float(f"{worst:.3g}"),
        "pct_identical_pixels": round(100.0 * same / total, 4),
        "n": n,
        "prompts": len(prompts),
        "segmenter": seg.name,
    }


def encoder_bench(segmenter_name: str = "litemedsam", n: int = 5, *, checkpoint=None, onnx_dir=None) -> dict:
    """Image encoder on one padded slice: PyTorch vs its ONNX export in ONNX Runtime, alternated.

    Returns ``{"eager_encoder_ms", "onnx_encoder_ms", "max_abs_feature_diff", "n"}`` (medians).
    """
    from hiseg_sim import segmenters
    from hiseg_sim.segmenters import onnx_decoder

    seg: Any = segmenters.build(segmenter_name, checkpoint=checkpoint, onnx_dir=onnx_dir, runtime="torch")
    path = onnx_decoder.encoder_onnx(seg.net.image_encoder, seg.input_size, seg.name, seg.weights_sha256, onnx_dir)
    ort_enc = onnx_decoder.OrtImageEncoder(path)
    x = torch.rand(1, 3, seg.input_size, seg.input_size, generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {"torch": [], "onnx": []}
    with torch.inference_mode():
        ref = seg.net.image_encoder(x)
        diff = float((ort_enc(x) - ref).abs().max())
        for i in range(n):
            for rt in ("torch", "onnx") if i % 2 == 0 else ("onnx", "torch"):
                t0 = time.perf_counter()
                seg.net.image_encoder(x) if rt == "torch" else ort_enc(x)
                times[rt].append(time.perf_counter() - t0)
    return {
        "eager_encoder_ms": round(_median_ms(times["torch"]), 1),
        "onnx_encoder_ms": round(_median_ms(times["onnx"]), 1),
        "max_abs_feature_diff": float(f"{diff:.3g}"),
        "n": n,
        "segmenter": seg.name,
    }


#: When an encoder option may replace float32 ONNX Runtime as the default: over the phantom slices
#: of :func:`encoder_options_bench`, the final masks' mean Dice against float32's at least
#: ``mean_dice`` and no prompt's below ``min_dice``.
AGREEMENT = {"mean_dice": 0.99, "min_dice": 0.95}


def phantom_slices(n: int = 24, cohort: str = "default") -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` real slices ``(HU (H, W), ground truth (H, W))`` of the cohort's phantoms: each case's
    first, key and last nodule slice in turn, spread over the cohort (small, large and edge slices)."""
    from hiseg_sim.data.cohort import load_cohort

    out = []
    for c in load_cohort(cohort):
        zs = [int(z) for z in c.gt_slices]
        for z in sorted({zs[0], int(c.key_slice), zs[-1]}):
            out.append((np.asarray(c.volume_hu[z], np.float32), np.asarray(c.gt[z], bool)))
    step = max(1, len(out) // max(1, n))
    return out[::step][:n]


def _agreement_prompts(seg, emb, gt: np.ndarray) -> list:
    """The final masks of the two prompt kinds episodes end on: a tight box, and box + a click
    inside + the box's mask fed back."""
    ys, xs = np.nonzero(gt)
    box = np.array([xs.min() - 2, ys.min() - 2, xs.max() + 2, ys.max() + 2], np.float32)
    first = seg.decode(emb, Prompt(box=box))
    centre = np.array([[xs.mean(), ys.mean()]], np.float32)
    second = seg.decode(emb, Prompt(box=box, points=centre, labels=np.array([1]), mask_logits=first.low_res_logits))
    return [first.mask, second.mask]


def _dice_iou(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    inter, sa, sb = float((a & b).sum()), float(a.sum()), float(b.sum())
    if sa + sb == 0:
        return 1.0, 1.0
    return 2 * inter / (sa + sb), inter / (sa + sb - inter)


def encoder_options_bench(
    options=("onnx", "openvino", "onnx-int8"),
    n_slices: int = 12,
    threads: int = 1,
    segmenter_name: str = "litemedsam",
) -> dict:
    """Each image encoder option against float32 ONNX Runtime on real phantom slices.

    Every slice is encoded once by each option, the options in alternating order slice by slice
    (so load from other processes hits all alike), on ``threads`` intra-op threads; each option's
    embedding is then decoded by the same float32 decoder with a box and with box + click + mask
    (:func:`_agreement_prompts`), and its masks compared with float32's.

    Returns ``{"threads", "slices", "loadavg", "criterion", "options": {option: {"available",
    "encoder_ms" (median), "vs_fp32" (time ratio), "dice_mean", "dice_min", "iou_mean",
    "max_abs_feature_diff", "agrees"}}}``; an option that cannot run has ``"available": False``
    and ``"reason"``.
    """
    import os

    from hiseg_sim import segmenters
    from hiseg_sim.segmenters.threads import restored_threads, set_threads

    slices = phantom_slices(n_slices)
    ref_name = "onnx"
    names = [ref_name] + [o for o in options if o != ref_name]
    result: dict[str, Any] = {
        "threads": threads,
        "slices": len(slices),
        "loadavg_before": [round(v, 2) for v in os.getloadavg()],
        "criterion": dict(AGREEMENT),
        "options": {},
    }
    with restored_threads():
        set_threads(threads)
        segs: dict[str, Any] = {}
        for o in names:
            try:
                seg = segmenters.build(
                    segmenter_name, runtime="onnx", encoder=o, cache=segmenters.EmbeddingCache(max_items=1)
                )
                seg.encode(slices[0][0])  # export / compile / session outside the timing
                segs[o] = seg
            except Exception as exc:  # noqa: BLE001 - an option that cannot run is reported, not fatal
                result["options"][o] = {"available": False, "reason": f"{type(exc).__name__}: {str(exc)[:200]}"}
        if ref_name not in segs:
            raise RuntimeError(f"the float32 ONNX Runtime encoder is not available: {result['options'][ref_name]}")
        times: dict[str, list[float]] = {o: [] for o in segs}
        embs: dict[str, list] = {o: [] for o in segs}
        order = list(segs)
        for i, (img, _) in enumerate(slices):
            # each option's cache is emptied first, so every call runs its encoder
            for o in order if i % 2 == 0 else order[::-1]:
                segs[o].cache.clear_memory()
                t0 = time.perf_counter()
                embs[o].append(segs[o].encode(img))
                times[o].append(time.perf_counter() - t0)
        ref_masks = [
            m for (img, gt), e in zip(slices, embs[ref_name]) for m in _agreement_prompts(segs[ref_name], e, gt)
        ]
        ref_ms = _median_ms(times[ref_name])
        for o, seg in segs.items():
            masks = [m for (img, gt), e in zip(slices, embs[o]) for m in _agreement_prompts(seg, e, gt)]
            di = [_dice_iou(a, b) for a, b in zip(masks, ref_masks)]
            dice = [d for d, _ in di]
            feat = max(float(np.abs(a.features - b.features).max()) for a, b in zip(embs[o], embs[ref_name]))
            ms = _median_ms(times[o])
            result["options"][o] = {
                "available": True,
                "encoder_ms": round(ms, 1),
                "vs_fp32": round(ms / ref_ms, 3),
                "dice_mean": round(float(np.mean(dice)), 5),
                "dice_min": round(float(np.min(dice)), 5),
                "iou_mean": round(float(np.mean([j for _, j in di])), 5),
                "max_abs_feature_diff": float(f"{feat:.3g}"),
                "agrees": bool(np.mean(dice) >= AGREEMENT["mean_dice"] and np.min(dice) >= AGREEMENT["min_dice"]),
            }
    result["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    return result
