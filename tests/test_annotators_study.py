"""The study functions (group table, learning curves, RITM NoC) on the stub segmenter."""

from __future__ import annotations

import numpy as np
import pytest

from hiseg_sim.annotators.study import format_table, group_table, latin_orders, learning_curves, plot_learning_curves, ritm_noc
from tests.env_support import EnvStubSegmenter, synthetic_cases

pytestmark = pytest.mark.filterwarnings("ignore:agents/calibration/expert_perception.json is missing")


def test_latin_orders_balance_positions():
    ids = [f"c{i}" for i in range(10)]
    orders = latin_orders(ids, 8, 4)
    assert all(len(o) == 4 and len(set(o)) == 4 for o in orders)
    for pos in range(4):  # 8 persons, 4 cases: each case twice at each position
        col = [o[pos] for o in orders]
        assert sorted(col.count(c) for c in set(col)) == [2, 2, 2, 2]
    with pytest.raises(ValueError):
        latin_orders(ids, 2, 11)


def test_group_table_rows():
    cases = synthetic_cases()
    res: dict = {}
    rows = group_table(cases, ["expert_radiologist", "robot_medsam_box"], seeds=(0, 1),
                       segmenter=EnvStubSegmenter(), results=res)
    assert [r["annotator"] for r in rows] == ["expert_radiologist", "robot_medsam_box"]
    for r in rows:
        assert r["n"] == 6 and 0 <= r["dice_mean"] <= 1 and r["seconds_mean"] > 0
    assert rows[1]["prompts_mean"] == 1.0 and rows[1]["intent_dice_mean"] is None
    assert len(res["expert_radiologist"]) == 6
    assert "expert_radiologist" in format_table(rows)


def test_learning_curves_and_plot(tmp_path):
    cases = synthetic_cases()
    out = learning_curves(["non_medical", "expert_radiologist"], cases, n_cases=3, seeds=(0, 1, 2),
                          segmenter=EnvStubSegmenter())
    rec = out["profiles"]["non_medical"]
    assert np.array(rec["dice"]).shape == (3, 3) and out["design"] == "latin"
    assert out["orders"][0][1:] == out["orders"][1][:2]
    path = plot_learning_curves(out, tmp_path / "lc.png")
    assert (tmp_path / "lc.png").stat().st_size > 10_000 and path.endswith("lc.png")


def test_ritm_noc_runs_the_protocol():
    out = ritm_noc(synthetic_cases(), seeds=(0,), segmenter=EnvStubSegmenter())
    assert out["n"] == 3
    for thr in (0.85, 0.9):
        assert 1 <= out["noc"][thr]["noc"] <= 20
    assert all(1 <= len(p["ious"]) <= 20 for p in out["per_case"])
    boxed = ritm_noc(synthetic_cases(), seeds=(0,), segmenter=EnvStubSegmenter(), initial_box=True)
    assert all(p["box_iou"] is not None for p in boxed["per_case"])
