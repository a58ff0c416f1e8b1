"""The readers' bar for a box-prompted segmenter: leave-one-out agreement and the boxes JSON."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from hiseg_sim.data.reader_keyslice import boxes_json, key_slice_of, leave_one_out_dice, new_reader_dice


def _disc(shape, c, r):
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((a - b) ** 2 for a, b in zip(g, c)) <= r * r


def test_leave_one_out_scores_each_reader_against_the_others():
    shape = (3, 20, 20)
    a = _disc(shape, (1, 10, 10), 5)
    odd = _disc(shape, (1, 4, 4), 3)
    d = leave_one_out_dice([a, a, a, odd], z=1)
    assert d[:3] == [1.0, 1.0, 1.0]  # the others' consensus (2 of 3) is the agreeing shape
    assert d[3] < 0.3
    assert leave_one_out_dice([a, a, odd]) == pytest.approx(
        [2 * a.sum() / (a.sum() + (a | odd).sum())] * 2 + [leave_one_out_dice([a, a, odd])[2]]
    )
    with pytest.raises(ValueError, match=">= 3"):
        leave_one_out_dice([a, a])


def test_new_reader_is_scored_against_the_consensus_it_did_not_make():
    """Identical readers: a held-out reader matches the rest exactly (no gap). Nested discs of
    radii 4..7: each held-out reader is scored against the 3 others' majority (2 of 3), the bar
    within the 3 against the union of 2 (more generous than a majority), so the new reader
    comes out ahead by a margin worked out by hand; 3 or 5 readers are refused."""
    shape = (3, 30, 30)
    a = _disc(shape, (1, 15, 15), 6)
    assert new_reader_dice([a, a, a, a]) == (1.0, 1.0)
    discs = [_disc(shape, (1, 15, 15), r) for r in (4, 5, 6, 7)]
    area = [d[1].sum() for d in discs]

    def d2(i, j):  # Dice of two nested discs
        return 2 * area[min(i, j)] / (area[i] + area[j])

    new, bar = [], []
    for j in range(4):
        panel = [i for i in range(4) if i != j]
        new.append(d2(j, panel[1]))  # majority of 3 nested discs = the middle one
        # within the panel, each reader against the union (= the larger) of the other two
        bar.append(np.mean([d2(i, max(p for p in panel if p != i)) for i in panel]))
    got = new_reader_dice(discs)
    assert got == pytest.approx((np.mean(new), np.mean(bar)))
    assert got[0] > got[1]
    with pytest.raises(ValueError, match="exactly 4"):
        new_reader_dice(discs[:3])


def test_key_slice_is_the_largest_slice():
    m = np.zeros((5, 10, 10), bool)
    m[1, 2:5, 2:5] = True
    m[3, 1:8, 1:8] = True
    assert key_slice_of(m) == 3


def test_boxes_json_puts_the_box_beside_the_readers_per_band():
    rows = [
        SimpleNamespace(case_id="a", diameter_mm=9.5, dice=0.8),
        SimpleNamespace(case_id="b", diameter_mm=25.0, dice=0.9),
        SimpleNamespace(case_id="c", diameter_mm=24.0, dice=0.7),
    ]
    table = {b: {"key_slice": 0.85, "3d": 0.8, "n": 10} for b in ("<6", "6-10", "10-20", ">=20")}
    readers = {"lidc": table, "consensus": {**table, "6-10": {"key_slice": 0.9, "3d": 0.8, "n": 5}}}
    out = boxes_json(rows, lidc_diameters={"a": 10.5, "b": 26.0, "c": 23.0}, readers=readers)
    bands = out["bands"]
    assert list(bands) == ["<6", "6-10", "10-20", ">=20"]
    assert bands["10-20"] == {"box": 0.8, "readers": 0.85, "n": 1, "n_readers": 10, "readers_3d": 0.8}
    assert bands[">=20"]["box"] == pytest.approx(0.8) and bands[">=20"]["n"] == 2
    assert bands["<6"]["box"] is None and bands["<6"]["n"] == 0
    cons = out["bands_consensus_diameter"]["6-10"]
    assert cons["n"] == 1 and cons["readers"] == 0.9  # 9.5 mm by the consensus diameter, its own bar
    json.dumps(out, allow_nan=False)
    # with the new-reader gaps, the LIDC bands also say what a reader new to the consensus scores
    gaps = {b: {"new": 0.9, "bar": 0.88, "gap": 0.02, "n": 7} for b in ("<6", "6-10", "10-20", ">=20")}
    out = boxes_json(rows, lidc_diameters={"a": 10.5, "b": 26.0, "c": 23.0}, readers={**readers, "new_reader": gaps})
    assert out["bands"][">=20"]["new_reader"] == pytest.approx(0.87)
    assert "new_reader" not in out["bands_consensus_diameter"][">=20"]


def test_groups_are_put_beside_the_readers_bar_by_both_bandings():
    """The groups report's readers' bar: a group's mean per band, the readers' 3-D agreement in a
    3-D run (key slice in 2-D), banded by the LIDC diameter read from the database and by the
    consensus diameter of the episodes."""
    import pandas as pd

    from hiseg_sim.data.lidc import LidcDatabase
    from hiseg_sim.studies.groups import readers_bar

    db = LidcDatabase()
    ids = ["LIDC-IDRI-0001/n1", "LIDC-IDRI-0003/n1"]
    lidc_d = [db.get_nodule(i).lidc_diameter_mm for i in ids]
    table = {b: {"key_slice": 0.8, "3d": 0.7, "n": 4} for b in ("<6", "6-10", "10-20", ">=20")}
    e = pd.DataFrame(
        {
            "case_id": ids * 2,
            "group": ["expert", "expert", "crowd", "crowd"],
            "final_dice": [0.9, 0.7, 0.5, 0.3],
            "diameter_mm": [3.0, 3.0, 3.0, 3.0],  # consensus diameters all in the smallest band
        }
    )
    bar = readers_bar(e, True, readers={"lidc": table, "consensus": table})
    assert bar["env"] == "3d"
    assert bar["consensus"]["<6"] == {"readers": 0.7, "n_readers": 4, "n": 2, "crowd": 0.4, "expert": 0.8}
    from hiseg_sim.data.lidc_agreement import size_band

    for d in lidc_d:
        row = bar["lidc"][size_band(d)]
        assert row["n"] == sum(size_band(x) == size_band(d) for x in lidc_d) and row["readers"] == 0.7
    assert readers_bar(e, False, readers={"lidc": table, "consensus": table})["consensus"]["<6"]["readers"] == 0.8
    assert readers_bar(e.assign(case_id=["mine-1", "mine-2"] * 2), True) is None  # a user's scans: no readers
