"""Annotators: behaviour models of people, and the literature's click robots beside them.

Robots read the ground truth — that is what they are (see :mod:`hiseg_sim.annotators.robots`).
"""

from .robots import (
    Click,
    clicks_to_sam,
    deepgrow_click,
    gt_box,
    medsam_box,
    medsegfm_click,
    microsam_clicks,
    noc,
    noc_metric,
    ritm_click,
    run_click_protocol,
    sam_noisy_box,
    sammed3d_click,
)

__all__ = [
    "Click",
    "clicks_to_sam",
    "deepgrow_click",
    "gt_box",
    "medsam_box",
    "medsegfm_click",
    "microsam_clicks",
    "noc",
    "noc_metric",
    "ritm_click",
    "run_click_protocol",
    "sam_noisy_box",
    "sammed3d_click",
]
