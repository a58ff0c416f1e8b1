"""Learned prompting policies: the policy's view of the env, demonstrations, behaviour cloning, a
training smoke run (stub segmenter) whose saved policy the registry and the runner use by name,
and the equal-time comparison. The real training run is outside the suite (``hiseg-sim train-policy``)."""

from __future__ import annotations

import json
import tempfile

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("stable_baselines3")

import hiseg_sim  # noqa: F401,E402
from hiseg_sim.env import Accept, BoxAction, PointAction, Undo  # noqa: E402
from hiseg_sim.env.observation import draw_prompts  # noqa: E402
from hiseg_sim.policies import store  # noqa: E402
from hiseg_sim.policies.demos import ACCEPT_SECONDS, best_prefix  # noqa: E402
from hiseg_sim.policies.spaces import (  # noqa: E402
    PolicyView,
    action_from_env,
    action_to_env,
    augment,
    grid_to_px,
    observe,
    px_to_grid,
)
from tests.env_support import EnvStubSegmenter, synthetic_cases  # noqa: E402
from tests.policy_support import one_thread, square_demos  # noqa: E402,F401

CASES = "stub_synthetic_cases"
STUB = "stub_env"


# ---- the policy's view -------------------------------------------------------------------------
@pytest.mark.parametrize("grid,size", [(48, 96), (32, 96), (16, 32), (96, 96), (7, 50)])
def test_grid_round_trip_and_bounds(grid, size):
    px = [grid_to_px(g, grid, size) for g in range(grid)]
    assert all(0 <= p < size for p in px)
    assert px == sorted(px)
    assert [px_to_grid(p, grid, size) for p in px] == list(range(grid))
    assert {px_to_grid(x, grid, size) for x in range(size)} == set(range(grid))


def test_actions_map_both_ways():
    box = BoxAction(70, 60, 20, 10)  # a reversed drag: normalised on the way to the grid
    g = action_from_env(box, 48, 96)
    assert g.tolist() == [2, 10, 5, 35, 30]
    assert action_to_env(g, 48, 96).tolist() == [2, 21, 11, 71, 61]
    click = action_from_env(PointAction(95, 0, positive=False), 48, 96)
    assert click.tolist() == [1, 47, 0, 0, 0]
    assert action_to_env([1, 47, 0, 30, 30], 48, 96).tolist() == [1, 95, 1, 0, 0]  # x2, y2 unused: zeroed
    assert action_from_env(Accept(), 48, 96).tolist() == [4, 0, 0, 0, 0]
    assert action_to_env([3, 5, 5, 5, 5], 48, 96).tolist() == [3, 0, 0, 0, 0]


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flip", [False, True])
def test_augment_moves_the_action_with_the_screen(k, flip):
    grid, size = 48, 96
    a = np.array([2, 5, 11, 20, 40])
    box_px = [grid_to_px(v, grid, size) for v in a[1:]]
    screen = np.zeros((5, size, size), np.uint8)
    screen[2:] = draw_prompts(size, ((grid_to_px(30, grid, size), grid_to_px(3, grid, size), 1),), tuple(box_px))
    s2, a2 = augment(screen, a, k, flip, grid)
    ys, xs = np.nonzero(s2[4])  # the box outline, moved by the symmetry
    got = [px_to_grid(v, grid, size) for v in (xs.min(), ys.min(), xs.max(), ys.max())]
    assert got == a2[1:].tolist()
    # the click moves the same way: its transformed grid action is where the dot now is
    p = np.array([0, 30, 3, 0, 0])
    _, p2 = augment(screen, p, k, flip, grid)
    ys, xs = np.nonzero(s2[2])
    assert [px_to_grid(xs.mean(), grid, size), px_to_grid(ys.mean(), grid, size)] == p2[1:3].tolist()


def _env(**kw):
    return gym.make("hiseg_sim/NoduleSeg2D-v0", cases=synthetic_cases(), segmenter=EnvStubSegmenter(), **kw)


SMALL = {"viewport_px": 48}  # the smoke runs train on a 48-px viewport (quicker)


def test_policy_view_spaces_and_box_placement():
    env = PolicyView(_env(), grid=48)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert env.action_space.nvec.tolist() == [5, 48, 48, 48, 48]
    assert obs["screen"][1].max() == 0 and obs["state"][3] == 0.0  # no mask yet
    obs, r, term, trunc, info = env.step(np.array([2, 10, 12, 30, 33]))
    assert env.observation_space.contains(obs)
    assert env.unwrapped.last_prompt["box"] == [21.0, 25.0, 61.0, 67.0]
    assert obs["state"][3] == float(obs["screen"][1].any())
    assert obs["state"][4] == pytest.approx(np.count_nonzero(obs["screen"][1]) / 96**2)
    *_, term, _, _ = env.step(np.array([4, 0, 0, 0, 0]))
    assert term


def test_observe_3d_state():
    env = gym.make("hiseg_sim/NoduleSeg3D-v0", cases=synthetic_cases(), segmenter=EnvStubSegmenter())
    obs, _ = env.reset(seed=0)
    v = observe(obs, 200, three_d=True)
    assert v["state"].shape == (8,) and v["screen"].shape == (5, 96, 96)
    n = int(obs["slice_in_slab"].sum())
    assert v["state"][5] == pytest.approx(int(obs["slice"]) / (n - 1))


def test_what_the_policy_acts_on_never_names_the_ground_truth():
    import ast
    import inspect

    from hiseg_sim.policies import network, spaces

    forbidden = {
        "gt",
        "_gt_crop",
        "_gt_full",
        "_gt_total",
        "case",
        "cases",
        "reader_masks",
        "volume_hu",
        "unwrapped",
        "_inter",
        "_stacks",
        "key_slice",
        "gt_slices",
        "RobotKnowledge",
        "ground_truth",
    }
    for obj in (spaces.observe, spaces.action_to_env, store.PolicyAnnotator, network.ScreenCNN):
        for node in ast.walk(ast.parse(inspect.getsource(obj))):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            assert name not in forbidden, f"{obj.__name__} names {name}"
    assert store.PolicyAnnotator.reads_ground_truth is False


# ---- demonstrations ----------------------------------------------------------------------------
def _o(i):
    return {"tag": i}


def test_best_prefix_cuts_at_the_best_mask_and_accepts():
    steps = [
        (_o(0), BoxAction(1, 1, 9, 9), 0.80, 4.0),
        (_o(1), PointAction(5, 5), 0.70, 3.0),
        (_o(2), Undo(), 0.80, 1.9),
        (_o(3), PointAction(6, 6), 0.90, 3.0),
        (_o(4), PointAction(2, 2), 0.85, 3.0),
        (_o(5), Accept(), 0.85, 1.55),
    ]
    pairs, best, secs = best_prefix(steps, _o(6))
    assert best == 0.90
    assert [p[0]["tag"] for p in pairs] == [0, 1, 2, 3, 4]  # the accept sees the mask the best step left
    assert isinstance(pairs[-1][1], Accept)
    assert secs == pytest.approx(4.0 + 3.0 + 1.9 + 3.0 + ACCEPT_SECONDS)
    # a person who accepted at their best is kept as is
    pairs, best, secs = best_prefix(steps[:1] + [(_o(1), Accept(), 0.80, 1.55)], _o(2))
    assert [type(a).__name__ for _, a in pairs] == ["BoxAction", "Accept"] and secs == pytest.approx(5.55)
    # the first of equal maxima; the last step's obs after it is the final observation
    pairs, _, _ = best_prefix([(_o(0), BoxAction(1, 1, 9, 9), 0.5, 4.0)], _o(9))
    assert pairs[-1][0]["tag"] == 9


def test_behaviour_cloning_fits_demonstrations(one_thread):
    import torch
    from stable_baselines3.common.policies import MultiInputActorCriticPolicy

    from hiseg_sim.policies.bc import action_mask, behaviour_clone
    from hiseg_sim.policies.network import ScreenCNN

    demos = square_demos(n=40)
    space = gym.spaces.Dict(
        {"screen": gym.spaces.Box(0, 255, (5, 32, 32), np.uint8), "state": gym.spaces.Box(0.0, 1.0, (5,), np.float32)}
    )
    acts = gym.spaces.MultiDiscrete([5, 16, 16, 16, 16])
    torch.manual_seed(0)
    pol = MultiInputActorCriticPolicy(
        space,
        acts,
        lambda _: 3e-4,
        net_arch=dict(pi=[64], vf=[64]),
        features_extractor_class=ScreenCNN,
        features_extractor_kwargs=dict(features_dim=32, channels=8),
    )
    assert action_mask(demos.action)[:2].tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    with torch.no_grad():
        before, _ = pol.predict({"screen": demos.screen, "state": demos.state}, deterministic=True)
    curve = behaviour_clone(pol, demos, 16, epochs=40, batch_size=8, lr=1e-3, seed=0)
    assert curve[-1]["nll"] < 0.8 * curve[0]["nll"]
    assert curve[-1]["val_kind_acc"] >= 0.75  # box on an empty mask, accept on a shown one
    with torch.no_grad():
        after, _ = pol.predict({"screen": demos.screen, "state": demos.state}, deterministic=True)
    acc = lambda a: float((a[:, 0] == demos.action[:, 0]).mean())  # noqa: E731
    assert acc(after) >= 0.75 and acc(after) > acc(before)


# ---- training smoke run, saved policy, registry and runner ------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from hiseg_sim.policies.train import TrainConfig, train_policy

    root = tmp_path_factory.mktemp("policies")
    cfg = TrainConfig(
        name="smoke2d",
        cohort=CASES,
        segmenter=STUB,
        bc_episodes=6,
        bc_epochs=2,
        steps=256,
        n_envs=2,
        vec="subproc",
        n_steps=64,
        batch_size=64,
        n_epochs=2,
        out_root=str(root),
        cache_dir=str(root / "emb"),
        features_dim=32,
        grid=24,
        env_kwargs={"viewport_px": 48},
    )
    tmp = root / "tmp"  # the temporary directory while training
    tmp.mkdir()
    saved_tempdir, tempfile.tempdir = tempfile.tempdir, str(tmp)
    try:
        card = train_policy(cfg, log=lambda *_: None)
    finally:
        tempfile.tempdir = saved_tempdir
    return root, card


def test_training_leaves_no_log_folder_in_the_temporary_directory(trained):
    """SB3's default logger makes a folder per run there; the curve is the callback's."""
    root, _ = trained
    assert [p.name for p in (root / "tmp").iterdir() if p.name.startswith("SB3-")] == []


def test_training_saves_policy_card_and_curve(trained):
    root, card = trained
    d = root / "smoke2d"
    assert sorted(f.name for f in d.iterdir()) == [
        "model_card.json",
        "model_card.md",
        "policy.pt",
        "training_curve.csv",
        "training_curve.png",
    ]
    assert sorted(f.name for f in (root / "smoke2d_bc").iterdir()) == ["model_card.json", "model_card.md", "policy.pt"]
    saved = json.loads((d / "model_card.json").read_text())
    assert saved["steps"] >= 256 and saved["cohort"] == CASES and saved["seeds"]["train"] == 0
    assert saved["demonstrations"]["episodes"] == 6 and saved["demonstrations"]["samples"] > 0
    assert "0.005 x simulated seconds" in saved["reward"]
    # the card says how to rebuild the network; the weights file is the one it names
    assert saved["architecture"]["features_extractor"] == "ScreenCNN"
    assert saved["architecture"]["features_extractor_kwargs"] == {"features_dim": 32, "channels": 32}
    assert saved["architecture"]["action_space"]["nvec"] == [5, 24, 24, 24, 24]
    assert saved["weights"]["file"] == "policy.pt" and len(saved["weights"]["sha256"]) == 64
    curve = pd.read_csv(d / "training_curve.csv")
    assert set(curve["phase"]) == {"bc", "ppo"} and curve["timesteps"].max() >= 256
    assert (d / "policy.pt").stat().st_size < 5_000_000


def test_saved_policy_is_an_annotator_by_name(trained, monkeypatch, one_thread):
    from hiseg_sim.annotators.harness import evaluate
    from hiseg_sim.annotators.registry import available_annotators, build_annotator

    root, _ = trained
    monkeypatch.setattr(store, "policies_dir", lambda: root)
    assert {"smoke2d", "smoke2d_bc"} <= set(available_annotators())
    a = build_annotator("smoke2d")
    assert isinstance(a, store.PolicyAnnotator) and not a.reads_ground_truth
    res = evaluate(
        a,
        "hiseg_sim/NoduleSeg2D-v0",
        synthetic_cases(),
        seeds=(0,),
        env_kwargs=dict(segmenter=EnvStubSegmenter(), **SMALL),
    )
    again = evaluate(
        a,
        "hiseg_sim/NoduleSeg2D-v0",
        synthetic_cases(),
        seeds=(0,),
        env_kwargs=dict(segmenter=EnvStubSegmenter(), **SMALL),
    )
    for r, r2 in zip(res, again):
        assert r.summary["n_actions"] >= 1 and (r.summary["accepted"] or r.summary["truncated"])
        assert [t["action"] for t in r.trace] == [t["action"] for t in r2.trace]  # greedy: deterministic
    # the annotator acts as the loaded SB3 policy predicts
    pol, card = store.load_policy("smoke2d")
    env = _env(**SMALL)
    obs, info = env.reset(seed=1)
    a.begin_case(type("K", (), {"image_hu": np.zeros((48, 48))})(), np.random.default_rng(0))
    want, _ = pol.predict(observe(obs, 20), deterministic=True)
    got = action_from_env(a.act(obs, info), card["grid"], 48)
    kind = int(want[0])
    used = 5 if kind == 2 else 3 if kind < 2 else 1
    assert got[:used].tolist() == np.asarray(want)[:used].tolist()
    with pytest.raises(ValueError, match="48-px viewport"):
        a.act(_env().reset(seed=1)[0], info)


def test_repeat_guard_turns_an_identical_prompt_into_accept(trained, monkeypatch):
    root, _ = trained

    class SameBox:  # stands in for the loaded SB3 policy
        def predict(self, obs, deterministic=True):
            return np.array([2, 4, 4, 15, 15]), None

    knowledge = type("K", (), {"image_hu": np.zeros((48, 48))})()
    env = _env(**SMALL)
    obs, info = env.reset(seed=0)
    for guard, second in ((True, Accept()), (False, BoxAction(9, 9, 31, 31))):
        a = store.PolicyAnnotator(str(root / "smoke2d"), repeat_guard=guard, box_decode="independent")
        monkeypatch.setitem(store.PolicyAnnotator._CACHE, a.path, SameBox())
        a.begin_case(knowledge, np.random.default_rng(0))
        first = a.act(obs, info)
        assert first == BoxAction(9, 9, 31, 31)
        assert a.act(obs, info) == second
        assert a.episode_info()["repeat_guarded"] == int(guard)
        a.begin_case(knowledge, np.random.default_rng(0))  # a new episode forgets the last action
        assert a.act(obs, info) == first


def test_runner_runs_a_saved_policy_by_name(trained, monkeypatch, tmp_path, one_thread):
    from hiseg_sim.experiments import run_study
    from hiseg_sim.experiments.spec import spec_from_dict

    root, _ = trained
    monkeypatch.setattr(store, "policies_dir", lambda: root)
    spec = spec_from_dict(
        {
            "study": {"name": "policy_smoke", "seed": 1, "env_kwargs": SMALL},
            "cases": {"source": "stub_study_cases", "kwargs": {"n": 2}},
            "segmenters": {"names": [STUB]},
            "annotators": [{"name": "smoke2d"}, {"name": "stub_box", "label": "stub"}],
            "run": {"replicates": 1, "executor": "serial"},
        }
    )
    data = run_study(spec, tmp_path / "run", progress=False)
    ep = data.episodes
    assert set(ep["annotator"]) == {"smoke2d", "stub"} and len(ep) == 4
    assert (data.actions[data.actions["annotator"] == "smoke2d"].groupby("case_id").size() >= 1).all()


def test_train_policy_cli_3d(tmp_path):
    from typer.testing import CliRunner

    from hiseg_sim.cli import app

    res = CliRunner().invoke(
        app,
        [
            "train-policy",
            "smoke3d",
            "--env",
            "3d",
            "--cohort",
            CASES,
            "--segmenter",
            STUB,
            "--steps",
            "64",
            "--n-envs",
            "1",
            "--vec",
            "dummy",
            "--bc-episodes",
            "0",
            "--n-steps",
            "32",
            "--viewport-px",
            "48",
            "--grid",
            "24",
            "--out-root",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "smoke3d" / "model_card.json").read_text())
    assert card["three_d"] and card["env_id"] == "hiseg_sim/NoduleSeg3D-v0" and card["steps"] >= 64
    a = store.PolicyAnnotator(str(tmp_path / "smoke3d"))
    env = gym.make("hiseg_sim/NoduleSeg3D-v0", cases=synthetic_cases(), segmenter=EnvStubSegmenter(), **SMALL)
    obs, info = env.reset(seed=0)
    a.begin_case(type("K", (), {"image_hu": np.zeros((48, 48, 48))})(), np.random.default_rng(0))
    act = a.act(obs, info)
    env.step(act)  # a legal 3-D action (kinds 0-8)


# ---- the equal-time comparison -----------------------------------------------------------------
def _fake_run():
    """Two arms on three cases x two replicates: 'pol' reaches 0.8 at 5 s and stops; 'slow' has
    0.5 at 5 s and 0.9 at 20 s."""
    eps, acts = [], []
    for c in ("a", "b", "c"):
        for r in (0, 1):
            for arm, steps in (("pol", [(5.0, 0.8), (6.5, 0.8)]), ("slow", [(5.0, 0.5), (20.0, 0.9), (21.5, 0.9)])):
                key = {"segmenter": "s", "annotator": arm, "case_id": c, "replicate": r, "position": 0}
                eps.append(
                    {
                        **key,
                        "final_dice": steps[-1][1],
                        "final_iou": 0.7,
                        "seconds_total": steps[-1][0],
                        "n_prompts": len(steps) - 1,
                    }
                )
                acts += [{**key, "step": i + 1, "seconds_total": t, "dice": d} for i, (t, d) in enumerate(steps)]
    return type(
        "Run",
        (),
        {
            "episodes": pd.DataFrame(eps),
            "actions": pd.DataFrame(acts),
            "spec": {"name": "fake", "cases": {"cohort": "holdout"}},
        },
    )()


def test_compare_at_equal_time(tmp_path):
    from hiseg_sim.policies.evaluation import compare_at_equal_time, plot_comparison

    data = _fake_run()
    res = compare_at_equal_time(data, "pol", n_boot=200)
    assert res["t_star"] == 6.5 and res["cohort"] == "holdout"
    paired = {p["measure"]: p for p in res["paired"] if p["b"] == "slow"}
    assert paired["dice@t*"]["diff"] == pytest.approx(0.3) and paired["dice@t*"]["n_pairs"] == 6
    assert paired["final_dice"]["diff"] == pytest.approx(-0.1)
    assert paired["seconds_total"]["diff"] == pytest.approx(-15.0)
    arms = {r["annotator"]: r for r in res["arms"]}
    assert arms["slow"]["dice_at_t_star"] == pytest.approx(0.5)
    png = plot_comparison(data, res, tmp_path / "p.png")
    assert png.stat().st_size > 10_000
    with pytest.raises(ValueError, match="no arm"):
        compare_at_equal_time(data, "nobody")


def test_a_card_keeps_one_evaluation_per_study(tmp_path):
    from hiseg_sim.policies.card import add_evaluation, read_card, write_card

    def ev(study, dice):
        arm = {"annotator": "pol", "n": 4, "dice": dice, "dice_lo": dice - 0.1, "dice_hi": dice + 0.1}
        arm |= {"seconds": 5.0, "seconds_lo": 4.0, "seconds_hi": 6.0}
        return {"study": study, "cohort": "holdout", "episodes": 4, "t_star": 5.0, "arms": [arm], "paired": []}

    card = {"name": "pol", "kind": "ppo", "env_id": "NoduleSeg2D-v0", "grid": 48, "max_episode_steps": 8}
    card |= {"cohort": "default", "segmenter": "litemedsam", "reward": "dDice", "steps": 0, "seeds": {}}
    card["evaluation"] = ev("narrow", 0.5)  # a card from before there could be more than one
    write_card(tmp_path, card)
    add_evaluation(tmp_path, ev("wide", 0.7))
    add_evaluation(tmp_path, ev("narrow", 0.6))  # run again: replaces its own result only
    saved = read_card(tmp_path)
    assert {k: v["arms"][0]["dice"] for k, v in saved["evaluations"].items()} == {"narrow": 0.6, "wide": 0.7}
    assert saved["evaluation"]["study"] == "narrow" and saved["evaluation"]["evaluated"]
    md = (tmp_path / "model_card.md").read_text()
    assert md.index("### `narrow`") < md.index("### `wide`")
    assert "| pol | 4 | 0.600 |" in md and "| pol | 4 | 0.700 |" in md and "| pol | 4 | 0.500 |" not in md
