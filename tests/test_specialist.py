"""The SemiSAM+-style specialist annotator: case choice, proposal, prompts, rounds, weight cache.

Fast: the env runs the test-only stub segmenter on synthetic cases, and the specialist is either
a fixed intensity "net" (a module, not trained) or a tiny U-Net trained for a few steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hiseg_sim.annotators.base import Knowledge, RobotKnowledge
from hiseg_sim.annotators.harness import make_env, make_knowledge, run_episode
from hiseg_sim.annotators.registry import available_annotators, build_annotator
from hiseg_sim.downstream import specialist as sp
from hiseg_sim.downstream.pseudo import unpack_rounds
from hiseg_sim.downstream.training import TrainConfig
from hiseg_sim.env.actions import Accept, BoxAction, PointAction, Undo
from tests.env_support import EnvStubSegmenter, synthetic_cases


class BrightNet(torch.nn.Module):
    """Not a trained model: logits rise with the windowed intensity (nodule, vessel and wall are bright)."""

    base = 4

    def forward(self, x):
        return (x - 0.6) * 40.0


@pytest.fixture(scope="module")
def env():
    e = make_env("hiseg_sim/NoduleSeg2D-v0", cases=synthetic_cases(), segmenter=EnvStubSegmenter())
    yield e
    e.close()


def test_labelled_ids_nested_seeded_and_bounded():
    ids = [f"c{i}" for i in range(10)]
    eight = sp.labelled_ids(ids, 8, seed=3)
    assert sp.labelled_ids(list(reversed(ids)), 4, seed=3) == eight[:4]
    assert len(set(eight)) == 8 and set(eight) <= set(ids)
    assert sp.labelled_ids(ids, 8, seed=4) != eight
    with pytest.raises(ValueError):
        sp.labelled_ids(ids, 0)
    with pytest.raises(ValueError):
        sp.labelled_ids(ids, 11)


def test_specialist_refuses_the_holdout():
    with pytest.raises(ValueError, match="holdout"):
        sp.specialist_net(sp.SpecialistConfig(n_labelled=1, cohort="holdout"), cache_dir="/nonexistent")


def test_proposal_prefers_central_component_and_is_never_empty():
    p = np.zeros((40, 40), np.float32)
    p[18:23, 18:23] = 0.9  # small, central
    p[0:12, 0:12] = 0.6  # bigger, in the corner, less probable
    m = sp.proposal_mask(p)
    assert m[20, 20] and not m[5, 5]
    weak = np.zeros((40, 40), np.float32)
    weak[10, 30] = 0.2  # nothing passes 0.5: the peak's component at half its value
    m2 = sp.proposal_mask(weak)
    assert m2.sum() >= 1 and m2[10, 30]


def test_prompt_box_covers_the_proposal_inside_the_viewport():
    m = np.zeros((32, 32), bool)
    m[0:3, 30:32] = True
    b = sp.specialist_prompt_box(m, pad_px=2)
    assert isinstance(b, BoxAction)
    assert 0 <= b.x0 <= 30 and b.x1 <= 31 and b.y0 == 0 and b.y1 >= 2
    assert not b.zero_area


def test_registered_and_reads_no_ground_truth(env):
    assert "specialist_sam" in available_annotators()
    ann = build_annotator("specialist_sam", n_labelled=2, net=BrightNet())
    assert ann.reads_ground_truth is False
    env.reset(seed=0, options={"case_id": "synth-0"})
    k = make_knowledge(env, ann, np.random.default_rng(0))
    assert isinstance(k, Knowledge) and not isinstance(k, RobotKnowledge)


def test_episode_box_then_ritm_points_then_undo_to_best_round(env):
    ann = sp.SpecialistAnnotator(net=BrightNet(), rounds=4)
    acts = []
    orig = ann.act

    def spy(obs, info):
        a = orig(obs, info)
        acts.append(a)
        return a

    ann.act = spy
    res = run_episode(env, ann, case_id="synth-0", seed=5)
    s = res.summary
    assert isinstance(acts[0], BoxAction) and isinstance(acts[-1], Accept)
    R = s["sp_rounds"]
    assert 1 <= R <= 4
    assert all(isinstance(a, PointAction) for a in acts[1:R])
    n_undo = sum(isinstance(a, Undo) for a in acts)
    assert n_undo == R - 1 - s["sp_chosen"]
    assert s["sp_agree"][s["sp_chosen"]] == max(s["sp_agree"])
    # the mask the env scores is the chosen round's mask
    rounds = unpack_rounds(s["sp_rounds_bits"], (R, s["sp_size"], s["sp_size"]))
    assert np.array_equal(env.unwrapped.current_mask(), rounds[s["sp_chosen"]])
    assert s["final_dice"] > 0.5  # the bright central component is the nodule here


def test_same_seed_same_episode(env):
    a = run_episode(env, sp.SpecialistAnnotator(net=BrightNet()), case_id="synth-1", seed=11).summary
    b = run_episode(env, sp.SpecialistAnnotator(net=BrightNet()), case_id="synth-1", seed=11).summary
    keys = ("final_dice", "sp_rounds", "sp_chosen", "sp_agree", "sp_rounds_bits", "seconds_total")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


def test_rounds_one_is_box_only(env):
    s = run_episode(env, sp.SpecialistAnnotator(net=BrightNet(), rounds=1), case_id="synth-0", seed=2).summary
    assert s["sp_rounds"] == 1 and s["n_prompts"] == 1


def test_weights_trained_once_then_loaded_from_disk(tmp_path, monkeypatch):
    cases = list(synthetic_cases())
    cfg = sp.SpecialistConfig(
        n_labelled=2, seed=0, cohort="synthetic", neighbours=1, train=TrainConfig(steps=3, batch=2, base=4, patch_px=32)
    )
    monkeypatch.setattr(sp, "_NETS", {})
    net = sp.specialist_net(cfg, tmp_path, cases=cases)
    files = list((tmp_path / "specialist").glob("*.pt"))
    assert len(files) == 1 and files[0].stem == cfg.key()
    monkeypatch.setattr(sp, "_NETS", {})
    again = sp.specialist_net(cfg, tmp_path, cases=None)  # from disk: no cases needed
    for (k, v), (_, w) in zip(net.state_dict().items(), again.state_dict().items()):
        assert torch.equal(v, w), k
    other = sp.SpecialistConfig(n_labelled=1, seed=0, cohort="synthetic", train=cfg.train)
    assert other.key() != cfg.key()


def test_the_name_alone_gives_the_specialist_the_downstream_study_ships():
    from hiseg_sim.experiments.spec import load_spec

    spec = load_spec("downstream_2d")  # the key-slice study, which has the specialist curve
    shipped = next(a for a in spec.annotators if a.label == "specialist_n8")
    by_name = build_annotator("specialist_sam")
    assert by_name.config == sp.SpecialistAnnotator(**shipped.overrides).config
    assert by_name.config.train.prior and by_name.config.train.jitter_hu == 30.0
    # an override changes only what it names; a train table is merged key by key
    four = build_annotator("specialist_sam", n_labelled=4, train={"prior": False})
    assert four.config.n_labelled == 4 and not four.config.train.prior and four.config.train.jitter_hu == 30.0
    assert four.config.train.steps == by_name.config.train.steps
