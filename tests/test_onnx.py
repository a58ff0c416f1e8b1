"""The ONNX Runtime prompt path: parity with PyTorch, the export cache, fallbacks, threads.

Tests named ``*_tiny`` use :class:`TinySam`: the official ``segment_anything`` prompt encoder and
mask decoder with random weights at a small width (32 channels, the real 64² grid and 256² logits),
so exports take well under a second. The integration tests run the real LiteMedSAM.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hiseg_sim import limits
from hiseg_sim import segmenters as S
from hiseg_sim.segmenters import EmbeddingCache, Prompt, onnx_export, sam_family, threads
from hiseg_sim.segmenters.prompt_decoder import INPUT_NAMES, PromptDecoder, pack_prompt
from hiseg_sim.segmenters.sam_family import SamFamilySegmenter, reference_decode

ort = pytest.importorskip("onnxruntime")


def _tiny_net(input_size: int, seed: int = 0) -> torch.nn.Module:
    from hiseg_sim.segmenters._compat import import_segment_anything

    m = import_segment_anything().modeling
    torch.manual_seed(seed)
    net = torch.nn.Module()
    net.prompt_encoder = m.PromptEncoder(
        embed_dim=32, image_embedding_size=(64, 64), input_image_size=(input_size, input_size), mask_in_chans=16
    )
    net.mask_decoder = m.MaskDecoder(
        num_multimask_outputs=3,
        transformer_dim=32,
        iou_head_depth=3,
        iou_head_hidden_dim=32,
        transformer=m.TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=4),
    )
    net.image_encoder = torch.nn.Conv2d(3, 32, kernel_size=input_size // 64, stride=input_size // 64)
    return net.eval()


class TinySam(SamFamilySegmenter):
    """A SAM-family segmenter with random weights; ``input_size`` 256 (LiteMedSAM-like) or 1024 (SAM-like)."""

    name = "tinysam"

    def __init__(self, input_size: int = 256, cache=None, runtime: str = "auto", onnx_dir=None) -> None:
        super().__init__(cache)
        self.input_size = input_size
        self.net = _tiny_net(input_size)
        h = hashlib.sha256()
        for k, v in self.net.state_dict().items():
            h.update(k.encode() + v.numpy().tobytes())
        self.weights_sha256 = h.hexdigest()
        self._setup_decoder(runtime, onnx_dir)

    def _encode_tensor(self, unit_image, resized_hw):
        h, w = resized_hw
        x = F.pad(unit_image, (0, self.input_size - w, 0, self.input_size - h)).repeat(1, 3, 1, 1)
        return self._run_image_encoder(x)[0].numpy()


def _prompts(gt: np.ndarray, mask_logits: np.ndarray | None = None) -> dict[str, Prompt]:
    ys, xs = np.nonzero(gt)
    box = [xs.min() - 1, ys.min() - 1, xs.max() + 1, ys.max() + 1]
    cx, cy = float(xs.mean()), float(ys.mean())
    out = {
        "box": Prompt(box=box),
        "point": Prompt(points=[[cx, cy]], labels=[1]),
        "points": Prompt(points=[[cx, cy], [cx + 20, cy]], labels=[1, 0]),
        "box+points": Prompt(box=box, points=[[cx, cy], [cx + 20, cy]], labels=[1, 0]),
    }
    if mask_logits is not None:
        out.update(
            {
                "box+mask": Prompt(box=box, mask_logits=mask_logits),
                "box+points+mask": Prompt(box=box, points=[[cx, cy]], labels=[1], mask_logits=mask_logits),
                "mask": Prompt(mask_logits=mask_logits),
            }
        )
    return out


def _parity(seg: SamFamilySegmenter, img: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Max |logit difference| and fraction of identical mask pixels, ONNX vs torch, over all prompt kinds."""
    emb = seg.encode(img)
    seg.set_runtime("torch")
    first = seg.decode(emb, Prompt(box=_prompts(gt)["box"].box))
    worst, same, total = 0.0, 0, 0
    for p in _prompts(gt, first.low_res_logits).values():
        seg.set_runtime("torch")
        a = seg.decode(emb, p)
        seg.set_runtime("onnx")
        b = seg.decode(emb, p)
        worst = max(
            worst,
            float(np.abs(a.logits - b.logits).max()),
            abs(a.iou_pred - b.iou_pred),
            float(np.abs(a.low_res_logits - b.low_res_logits).max()),
        )
        same += int((a.mask == b.mask).sum())
        total += a.mask.size
    return worst, same / total


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch, request):
    monkeypatch.setattr(sam_family, "_warned", set())
    monkeypatch.delenv("HISEG_THREADS", raising=False)
    if request.node.name.split("[")[0].endswith("_tiny"):
        # tiny graphs gain nothing from a second thread, and lose a lot when another process
        # holds the other core (spin-waiting thread pools): the rule of threads.py, applied here
        old = torch.get_num_threads()
        monkeypatch.setitem(threads._state, "threads", 1)
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(old)
    else:
        yield


# ---- the shared graph ---------------------------------------------------------------------------
def test_pack_prompt_follows_the_sam_prompt_encoder_layout():
    box, pts, lab = np.array([1, 2, 30, 40], np.float32), np.array([[5, 6], [7, 8]], np.float32), np.array([1, 0])
    p = pack_prompt(pts, lab, box, None)
    assert p["point_labels"].tolist() == [[1, 0, 2, 3]] and p["point_coords"][0, 2:].tolist() == [[1, 2], [30, 40]]
    assert p["has_mask_input"].tolist() == [0.0] and p["mask_input"].shape == (1, 1, 256, 256)
    p = pack_prompt(pts, lab, None, None)  # no box: SAM's padding point (0, 0) with label -1
    assert p["point_labels"].tolist() == [[1, 0, -1]] and p["point_coords"][0, -1].tolist() == [0, 0]
    p = pack_prompt(None, None, box, np.ones((256, 256), np.float32))
    assert p["point_labels"].tolist() == [[2, 3]] and p["has_mask_input"].tolist() == [1.0]
    p = pack_prompt(None, None, None, np.ones((256, 256), np.float32))
    assert p["point_coords"].shape == (1, 0, 2)


@pytest.mark.parametrize("input_size", [256, 1024], ids=["litemedsam-like", "sam-like"])
def test_prompt_decoder_reproduces_the_original_modules_tiny(input_size):
    """PromptDecoder (both runtimes run it) against the untouched prompt_encoder + mask_decoder calls."""
    net = _tiny_net(input_size)
    pd = PromptDecoder(net.prompt_encoder, net.mask_decoder).eval()
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(1, 32, 64, 64, generator=g)
    mask = torch.randn(256, 256, generator=g).numpy() * 5
    s = input_size / 96
    box, lab = np.array([20, 30, 60, 70], np.float32) * s, np.array([1, 0])
    pts = np.array([[40, 50], [70, 20]], np.float32) * s
    cases = [
        (None, None, box, None),
        (pts, lab, None, None),
        (pts[:1], lab[:1], box, None),
        (None, None, box, mask),
        (pts, lab, box, mask),
        (None, None, None, mask),
    ]
    with torch.inference_mode():
        for c, lab, b, m in cases:
            ref, ref_iou = reference_decode(
                net,
                emb,
                None if c is None else torch.from_numpy(c)[None],
                None if lab is None else torch.from_numpy(lab)[None],
                None if b is None else torch.from_numpy(b)[None],
                None if m is None else torch.from_numpy(m)[None, None],
            )
            packed = pack_prompt(c, lab, b, m)
            low, iou = pd(emb, *(torch.from_numpy(packed[k]) for k in INPUT_NAMES[1:]))
            assert float((low - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
            assert float((iou - ref_iou).abs().max()) <= 1e-5 * float(ref_iou.abs().max())


@pytest.mark.parametrize("input_size", [256, 1024], ids=["litemedsam-like", "sam-like"])
def test_onnx_matches_torch_on_every_prompt_kind_tiny(tmp_path, disc_slice, input_size):
    seg = TinySam(input_size, runtime="onnx", onnx_dir=tmp_path)
    assert seg.runtime == "onnx" and seg.onnx_path.parent == tmp_path
    worst, same = _parity(seg, *disc_slice)
    assert worst < 1e-5 and same >= 0.999


# ---- export cache -------------------------------------------------------------------------------
def test_export_is_cached_and_reused_tiny(tmp_path):
    before = onnx_export.stats["exports"]
    a = TinySam(onnx_dir=tmp_path)
    assert onnx_export.stats["exports"] == before + 1 and a.runtime == "onnx"
    mtime = a.onnx_path.stat().st_mtime_ns
    b = TinySam(onnx_dir=tmp_path)
    assert onnx_export.stats["exports"] == before + 1  # not exported again
    assert b.onnx_path == a.onnx_path and b.onnx_path.stat().st_mtime_ns == mtime
    meta = json.loads(a.onnx_path.with_suffix(".json").read_text())
    assert meta["weights_sha256"] == a.weights_sha256 and meta["max_abs_diff_vs_torch"] < 1e-3


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped", "no-sidecar"])
def test_corrupt_cached_export_is_replaced_tiny(tmp_path, disc_slice, damage):
    a = TinySam(onnx_dir=tmp_path)
    path = a.onnx_path
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not an onnx file" * 100)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":
        path.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
    else:
        path.with_suffix(".json").unlink()
    before = onnx_export.stats["exports"]
    with pytest.warns(S.CorruptCacheWarning, match="corrupt ONNX cache file"):
        b = TinySam(onnx_dir=tmp_path)
    assert onnx_export.stats["exports"] == before + 1 and b.runtime == "onnx"
    worst, same = _parity(b, *disc_slice)
    assert worst < 1e-3 and same >= 0.999
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TinySam(onnx_dir=tmp_path)  # the replacement is good


def test_embedding_cache_is_shared_across_runtimes_tiny(tmp_path, disc_slice):
    img, _ = disc_slice
    cache = EmbeddingCache()
    t = TinySam(cache=cache, runtime="torch")
    o = TinySam(cache=cache, runtime="onnx", onnx_dir=tmp_path)
    assert t.embedding_key(img, S.LUNG_WINDOW) == o.embedding_key(img, S.LUNG_WINDOW)
    t.encode(img)
    o.encode(img)
    assert t.encoder_calls == 1 and o.encoder_calls == 0


# ---- fallbacks and selection --------------------------------------------------------------------
def test_missing_onnxruntime_falls_back_to_torch_once_tiny(tmp_path, monkeypatch, disc_slice):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.warns(S.RuntimeFallbackWarning, match="onnxruntime is not importable") as rec:
        seg = TinySam(runtime="onnx", onnx_dir=tmp_path)
    assert len(rec) == 1 and seg.runtime == "torch" and seg.requested_runtime == "onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one message per process, not per build
        assert TinySam(runtime="auto", onnx_dir=tmp_path).runtime == "torch"
    img, gt = disc_slice
    assert seg.decode(seg.encode(img), Prompt(box=[27, 37, 53, 63])).mask.shape == gt.shape
    assert not list(tmp_path.glob("*.onnx"))


def test_runtime_argument_is_checked():
    with pytest.raises(S.SegmenterError, match="unknown runtime"):
        S.build("litemedsam", runtime="tensorrt")
    with pytest.raises(S.SegmenterError, match="unknown runtime"):
        TinySam(runtime="gpu")


def test_torch_runtime_exports_nothing_tiny(tmp_path):
    seg = TinySam(runtime="torch", onnx_dir=tmp_path)
    assert seg.runtime == "torch" and not list(tmp_path.iterdir())


# ---- threads ------------------------------------------------------------------------------------
def test_threads_rule_and_ort_sessions_follow_it_tiny(tmp_path, monkeypatch):
    assert threads.threads_for(workers=4, cores=2) == 1
    assert threads.threads_for(workers=2, cores=8) == 4
    assert threads.threads_for(workers=1, cores=3) == 3
    old = torch.get_num_threads()
    monkeypatch.setitem(threads._state, "threads", None)
    try:
        n = S.set_threads(workers=threads.available_cores())  # as many workers as cores: one thread each
        assert n == 1 and torch.get_num_threads() == 1 and S.get_threads() == 1
        seg = TinySam(onnx_dir=tmp_path)
        assert seg._ort_decoder.session.get_session_options().intra_op_num_threads == 1
        assert seg._ort_decoder.session.get_session_options().inter_op_num_threads == 1
        monkeypatch.setitem(threads._state, "threads", None)
        monkeypatch.setenv("HISEG_THREADS", "2")
        threads.apply_env()
        assert torch.get_num_threads() == 2 and S.get_threads() == 2
        # a segmenter built earlier follows: its session is remade with the new count
        assert seg._ort_decoder.session.get_session_options().intra_op_num_threads == 2
        monkeypatch.setenv("HISEG_THREADS", "zero")
        with pytest.raises(ValueError, match="HISEG_THREADS"):
            S.set_threads()
    finally:
        torch.set_num_threads(old)


def _child_decode(_):
    seg, img = _FORKED
    pred = seg.decode(seg.encode(img), Prompt(box=[27, 37, 53, 63]))
    opts = seg._ort_decoder.session.get_session_options()
    return torch.get_num_threads(), opts.intra_op_num_threads, int(pred.mask.sum())


def test_pool_workers_get_one_thread_each_tiny(tmp_path, disc_slice):
    """A segmenter built before a fork follows the worker's set_threads(workers=...)."""
    import functools
    import multiprocessing as mp

    global _FORKED
    seg = TinySam(onnx_dir=tmp_path)
    img, _ = disc_slice
    expected = int(seg.decode(seg.encode(img), Prompt(box=[27, 37, 53, 63])).mask.sum())
    _FORKED = (seg, img)
    cores = threads.available_cores()
    with mp.get_context("fork").Pool(2, initializer=functools.partial(S.set_threads, workers=2 * cores)) as pool:
        results = pool.map(_child_decode, range(2), chunksize=1)
    assert results == [(1, 1, expected)] * 2


# ---- the benchmark ------------------------------------------------------------------------------
def test_decoder_bench_reports_every_figure_tiny(tmp_path):
    from hiseg_sim.segmenters import perf

    r = perf.decoder_bench(seg=TinySam(onnx_dir=tmp_path), n=4, matmul_size=128, warmup=1)
    for k in ("eager_decoder_ms", "onnx_decoder_ms", "limit_ms", "flops", "matmul_gflops", "runtime"):
        assert k in r
    assert r["runtime"] == "onnx" and r["flops"] > 0 and r["limit_ms"] > 0
    assert r["max_abs_logit_diff"] < 1e-3 and r["pct_identical_pixels"] >= 99.9
    assert abs(r["limit_ms"] - limits.limit_ms(r["flops"], r["matmul_gflops"])) < 0.01 + 0.01 * r["limit_ms"]


# ---- the real model -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite_onnx():
    """LiteMedSAM on ONNX Runtime with the default export cache (exports once per machine)."""
    return S.build("litemedsam", runtime="onnx")


@pytest.mark.integration
def test_litemedsam_onnx_matches_torch_on_every_prompt_kind(lite_onnx, disc_slice):
    assert lite_onnx.runtime == "onnx"
    worst, same = _parity(lite_onnx, *disc_slice)
    assert worst < 1e-3, worst
    assert same >= 0.999, same


@pytest.mark.integration
def test_litemedsam_both_runtimes_match_the_original_modules(lite_onnx, disc_slice):
    img, gt = disc_slice
    emb = lite_onnx.encode(img)
    feats = torch.from_numpy(emb.features)[None]
    s = lite_onnx._scale_xy(emb)
    box = torch.from_numpy(np.array([27, 37, 53, 63], np.float32).reshape(2, 2) * s).reshape(1, 4)
    pts = torch.from_numpy(np.array([[40, 50], [60, 60]], np.float32) * s)[None]
    lab = torch.tensor([[1, 0]])
    with torch.inference_mode():
        for args in [(None, None, box, None), (pts, lab, None, None), (pts, lab, box, None)]:
            ref, ref_iou = reference_decode(lite_onnx.net, feats, *args)
            for rt in ("torch", "onnx"):
                lite_onnx.set_runtime(rt)
                low, iou = lite_onnx._decode_tensor(feats, *args)
                assert float((low - ref).abs().max()) < 1e-3 and float((iou - ref_iou).abs().max()) < 1e-4
    lite_onnx.set_runtime("onnx")


@pytest.mark.integration
def test_litemedsam_export_reused_and_encoder_shared(lite_onnx, disc_slice):
    before = onnx_export.stats["exports"]
    again = S.build("litemedsam", runtime="onnx", onnx_dir=lite_onnx.onnx_dir, cache=lite_onnx.cache)
    assert onnx_export.stats["exports"] == before and again.onnx_path == lite_onnx.onnx_path
    img, _ = disc_slice
    lite_onnx.encode(img)
    again.encode(img)
    assert again.encoder_calls == 0  # same key, same embedding


@pytest.mark.integration
def test_litemedsam_without_onnxruntime_decodes_in_torch(monkeypatch, disc_slice, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.warns(S.RuntimeFallbackWarning):
        seg = S.build("litemedsam", onnx_dir=tmp_path)
    assert seg.runtime == "torch"
    img, gt = disc_slice
    from hiseg_sim import metrics

    assert metrics.dice(seg.decode(seg.encode(img), Prompt(box=[27, 37, 53, 63])).mask, gt) > 0.9


# ---- image encoder options ----------------------------------------------------------------------
def test_encoder_option_is_checked():
    with pytest.raises(S.SegmenterError, match="unknown encoder 'fp8'"):
        S.build("litemedsam", encoder="fp8")
    seg = TinySam(runtime="torch")
    with pytest.raises(S.SegmenterError, match="unknown encoder"):
        seg.set_encoder("fp8")


def test_int8_encoder_is_cached_apart_and_close_to_float32_tiny(tmp_path, disc_slice):
    img, _ = disc_slice
    cache = EmbeddingCache()
    fp32 = TinySam(onnx_dir=tmp_path, cache=cache)
    fp32.set_encoder("onnx")
    int8 = TinySam(onnx_dir=tmp_path, cache=cache)
    assert int8.set_encoder("onnx-int8") == "onnx-int8" and int8.encoder_tag == "int8"
    a, b = fp32.encode(img), int8.encode(img)
    assert a.key != b.key and int8.encoder_calls == 1  # never served the float32 embedding
    assert 0 < np.abs(a.features).max() and np.abs(a.features - b.features).max() <= 2.0
    files = sorted(p.name for p in tmp_path.glob("tinysam-encoder-int8-*.onnx"))
    assert len(files) == 1
    before = onnx_export.stats["exports"]
    again = TinySam(onnx_dir=tmp_path, cache=EmbeddingCache())
    again.set_encoder("onnx-int8")
    c = again.encode(img)
    assert onnx_export.stats["exports"] == before and np.array_equal(c.features, b.features)


def test_encoder_follows_hiseg_encoder_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("HISEG_ENCODER", "onnx-int8")
    assert TinySam(onnx_dir=tmp_path).encoder == "onnx-int8"
    monkeypatch.setenv("HISEG_ENCODER", "nope")
    with pytest.raises(S.SegmenterError, match="unknown encoder 'nope'"):
        TinySam(onnx_dir=tmp_path)


def test_openvino_encoder_matches_float32_or_says_how_to_install_tiny(tmp_path, disc_slice):
    seg = TinySam(onnx_dir=tmp_path)
    try:
        import openvino  # noqa: F401
    except ImportError:
        with pytest.raises(S.SegmenterError, match="pip install openvino"):
            seg.set_encoder("openvino")
        return
    img, _ = disc_slice
    seg.set_encoder("onnx")
    a = seg.encode(img)
    seg.set_encoder("openvino")
    b = seg.encode(img)
    assert a.key != b.key and np.abs(a.features - b.features).max() < 1e-4


def test_counters_time_the_encoder_and_the_decoder_tiny(tmp_path, disc_slice):
    img, gt = disc_slice
    seg = TinySam(onnx_dir=tmp_path)
    emb = seg.encode(img)
    seg.encode(img)  # a cache hit costs no encoder time
    after_encode = seg.counters.snapshot()
    assert after_encode["encoder_calls"] == 1 and after_encode["encoder_s"] > 0 and after_encode["decoder_s"] == 0
    seg.decode(emb, Prompt(box=[27, 37, 53, 63]))
    now = seg.counters.snapshot()
    assert now["decoder_calls"] == 1 and now["decoder_s"] > 0 and now["encoder_s"] == after_encode["encoder_s"]


@pytest.mark.integration
@pytest.mark.slow
def test_encoder_options_bench_reports_time_and_mask_agreement():
    from hiseg_sim.segmenters.perf import AGREEMENT, encoder_options_bench

    res = encoder_options_bench(options=("onnx", "onnx-int8"), n_slices=2, threads=1)
    ref, q = res["options"]["onnx"], res["options"]["onnx-int8"]
    assert res["slices"] == 2 and ref["dice_mean"] == 1.0 and ref["agrees"] and ref["vs_fp32"] == 1.0
    assert q["available"] and 0 < q["dice_min"] <= q["dice_mean"] <= 1 and q["encoder_ms"] > 0
    assert q["max_abs_feature_diff"] > 0  # int8 features are not float32's
    assert q["agrees"] == (q["dice_mean"] >= AGREEMENT["mean_dice"] and q["dice_min"] >= AGREEMENT["min_dice"])
