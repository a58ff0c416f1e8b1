"""The downstream study's extra training cases and the net's centre prior."""

from __future__ import annotations

import json

import numpy as np
import torch

from hiseg_sim.data.cohort import read_manifest
from hiseg_sim.downstream.pool import POOL_COHORT, POOL_PATH
from hiseg_sim.downstream.unet import TinyUNet, centre_prior, predict_prob


def test_pool_is_calibration_split_and_disjoint_from_the_shipped_cohorts():
    pool = json.loads(POOL_PATH.read_text())["cohorts"][POOL_COHORT]
    ids = [c["nodule_id"] for c in pool["cases"]]
    assert pool["split"] == "calibration" and len(ids) == len(set(ids)) >= 160
    patients = [int(i.split("/")[0].rsplit("-", 1)[1]) for i in ids]
    assert max(patients) <= 800 and min(patients) >= 1  # LIDC-IDRI-0001 .. 0800 only: never the holdout
    shipped = {c["nodule_id"] for coh in read_manifest()["cohorts"].values() for c in coh["cases"]}
    assert not shipped & set(ids)
    # a prefix is still spread over the strata (the pool is stored in a shuffled order)
    first = pool["cases"][:60]
    assert len({(c["size_band"], c["texture_group"]) for c in first}) >= 8
    read_manifest(POOL_PATH)  # the shipped manifest format


def test_centre_prior_peaks_in_the_middle_and_adds_a_channel():
    p = centre_prior(16, 16, sd_px=2.0)
    assert p.shape == (16, 16) and torch.isclose(p.max(), p[7:9, 7:9].max())
    assert float(p[0, 0]) < 0.01
    net = TinyUNet(base=4, prior=True)
    assert net.enc1[0].in_channels == 2
    assert predict_prob(net, np.full((3, 16, 16), -800.0, np.float32)).shape == (3, 16, 16)
