"""A person's eye for a policy (hiseg_sim.policies.intent) and the ordered box decode of a greedy
policy (store.best_ordered_pair). Stub segmenter throughout: these test wiring, not Dice."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

import hiseg_sim  # noqa: F401,E402
from hiseg_sim.annotators.harness import make_knowledge, run_episode  # noqa: E402
from hiseg_sim.annotators.registry import build_annotator  # noqa: E402
from hiseg_sim.policies import store  # noqa: E402
from hiseg_sim.policies.intent import PerceivedIntent, intent_channel  # noqa: E402
from hiseg_sim.policies.spaces import PolicyView, observe  # noqa: E402
from hiseg_sim.seeding import episode_streams as seed_streams  # noqa: E402
from tests.env_support import EnvStubSegmenter, synthetic_cases  # noqa: E402
from tests.policy_support import one_thread  # noqa: E402,F401

SMALL = {"viewport_px": 48}
CASES = "stub_synthetic_cases"
STUB = "stub_env"


def _env(**kw):
    return gym.make("hiseg_sim/NoduleSeg2D-v0", cases=synthetic_cases(), segmenter=EnvStubSegmenter(), **kw)


# ---- ordered box decode ------------------------------------------------------------------------
def test_best_ordered_pair_is_the_best_ordered_pair():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = rng.normal(size=12), rng.normal(size=12)
        i, j = store.best_ordered_pair(a, b)
        brute = max((a[p] + b[q], p, q) for p in range(12) for q in range(p + 1, 12))
        assert j >= i + 1 and a[i] + b[j] == pytest.approx(brute[0])
    # corners whose own argmaxes cross (lo at 7, hi at 3) come out ordered, not as a sliver
    lo, hi = np.full(10, -5.0), np.full(10, -5.0)
    lo[7], lo[2], hi[3], hi[8] = 0.0, -0.5, 0.0, -0.4
    assert store.best_ordered_pair(lo, hi) in {(2, 3), (7, 8)}
    with pytest.raises(ValueError):
        store.best_ordered_pair(np.zeros(3), np.zeros(4))


# ---- the intent channel ------------------------------------------------------------------------
def test_perceived_intent_is_the_harness_perception_of_the_profile():
    env = PerceivedIntent(_env(**SMALL), "junior_medical_student")
    assert env.observation_space["intent"].shape == (1, 48, 48)
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        case = env.unwrapped.case.case_id
        want = make_knowledge(env.env, build_annotator("junior_medical_student"), seed_streams(seed, case)[0]).intent
        assert np.array_equal(obs["intent"][0] > 0, want) and obs["intent"].max() == 255
        nxt, *_ = env.step(env.action_space.sample())
        assert np.array_equal(nxt["intent"], obs["intent"])  # it stays for the episode
    view = PolicyView(env, grid=24)
    assert view.observation_space["screen"].shape == (6, 48, 48)
    o, _ = view.reset(seed=0)
    assert o["screen"].shape == (6, 48, 48) and o["screen"][5].any()
    with pytest.raises(ValueError, match="perception"):
        PerceivedIntent(_env(**SMALL), "robot_ritm")
    with pytest.raises(ValueError, match="shape"):
        intent_channel(np.ones((4, 4), bool), 48)


def test_policy_with_an_eye_gets_its_intent_from_the_harness(tmp_path, monkeypatch):
    """A policy whose card names a perception profile is perceived for like a person of it: the
    screen it is given holds, as its sixth channel, the intent the harness drew."""
    d = tmp_path / "eye"
    d.mkdir()
    (d / "policy.pt").write_bytes(b"")  # never loaded: a stand-in policy is cached below
    (d / "model_card.json").write_text(
        json.dumps(
            {"name": "eye", "grid": 24, "perception": "junior_medical_student", "network": "spatial", "viewport_px": 48}
        )
    )
    seen = []

    class Recorder:  # stands in for the loaded SB3 policy
        def predict(self, obs, deterministic=True):
            seen.append(obs["screen"].copy())
            return np.array([4, 0, 0, 0, 0]), None

    a = store.PolicyAnnotator(str(d))
    monkeypatch.setitem(store.PolicyAnnotator._CACHE, a.path, Recorder())
    assert a.perception_params() is not None
    env = _env(**SMALL)
    res = run_episode(env, a, case_id=synthetic_cases()[0].case_id, seed=3)
    assert res.summary["intent_dice"] is not None  # the harness perceived for it
    rng = seed_streams(3, synthetic_cases()[0].case_id)[0]
    want = make_knowledge(env, build_annotator("junior_medical_student"), rng).intent
    assert seen[0].shape == (6, 48, 48) and np.array_equal(seen[0][5] > 0, want)
    # without a perception profile the policy has no eye: five channels, no intent drawn
    (d / "model_card.json").write_text(json.dumps({"name": "eye", "grid": 24, "network": "spatial", "viewport_px": 48}))
    b = store.PolicyAnnotator(str(d))
    monkeypatch.setitem(store.PolicyAnnotator._CACHE, b.path, Recorder())
    assert b.perception_params() is None
    res = run_episode(env, b, case_id=synthetic_cases()[0].case_id, seed=3)
    assert seen[-1].shape == (5, 48, 48) and res.summary["intent_dice"] is None


def test_training_with_an_eye_saves_it_in_the_card(tmp_path, one_thread):
    from hiseg_sim.policies.train import TrainConfig, train_policy

    cfg = TrainConfig(
        name="eye2d",
        cohort=CASES,
        segmenter=STUB,
        perception="junior_medical_student",
        bc_annotator="robot_medsam_box",
        bc_episodes=4,
        bc_epochs=1,
        bc_min_dice=0.0,
        steps=0,
        n_envs=1,
        vec="dummy",
        out_root=str(tmp_path),
        cache_dir=str(tmp_path / "emb"),
        grid=24,
        network="spatial",
        save_bc=False,
        env_kwargs=SMALL,
    )
    card = train_policy(cfg, log=lambda *_: None)
    assert card["perception"] == "junior_medical_student"
    pol, saved = store.load_policy(tmp_path / "eye2d")
    assert saved["perception"] == "junior_medical_student"
    assert pol.observation_space["screen"].shape[0] == 6
    assert "intent of a `junior_medical_student`" in (tmp_path / "eye2d" / "model_card.md").read_text()
    a = store.PolicyAnnotator(str(tmp_path / "eye2d"))
    res = run_episode(_env(**SMALL), a, case_id=synthetic_cases()[1].case_id, seed=0)
    assert res.summary["n_actions"] >= 1
    env = _env(**SMALL)
    obs, _ = env.reset(seed=0)
    assert observe(obs, 20)["screen"].shape[0] == 5  # the env itself has no intent: the annotator adds it


# ---- test-time augmentation --------------------------------------------------------------------
def test_corner_scores_map_back_from_every_symmetry():
    from hiseg_sim.policies.spaces import augment, corner_scores_back

    rng = np.random.default_rng(0)
    g = 16
    for _ in range(100):
        x0, x1 = sorted(rng.choice(g, 2, replace=False))
        y0, y1 = sorted(rng.choice(g, 2, replace=False))
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        _, moved = augment(np.zeros((1, g, g)), np.array([2, x0, y0, x1, y1]), k, flip, g)
        back = corner_scores_back([np.eye(g)[v] for v in moved[1:5]], k, flip)
        assert [int(np.argmax(b)) for b in back] == [x0, y0, x1, y1], (k, flip)


def test_tta_box_of_an_equivariant_reader_is_the_square(tmp_path, monkeypatch):
    """A stand-in policy that reads the box off a bright square (so it is exactly equivariant):
    averaged over the 8 symmetries and mapped back, the scores still peak at the square's box."""
    from types import SimpleNamespace

    import torch

    from hiseg_sim.policies.spaces import px_to_grid

    size, g = 32, 16

    class SquareReader:
        def obs_to_tensor(self, view):
            return view, None

        def get_distribution(self, v):
            img = np.asarray(v["screen"])[0] > 0
            xs, ys = np.flatnonzero(img.any(0)), np.flatnonzero(img.any(1))

            def one(px):
                logits = torch.full((1, g), -10.0)
                logits[0, px_to_grid(px, g, size)] = 0.0
                return torch.distributions.Categorical(logits=logits)

            kind = torch.distributions.Categorical(logits=torch.zeros(1, 5))
            return SimpleNamespace(distribution=[kind, one(xs[0]), one(ys[0]), one(xs[-1]), one(ys[-1])])

    d = tmp_path / "sq"
    d.mkdir()
    (d / "policy.pt").write_bytes(b"")  # never loaded: a stand-in policy is cached below
    (d / "model_card.json").write_text(json.dumps({"name": "sq", "grid": g, "viewport_px": size}))
    a = store.PolicyAnnotator(str(d), tta=True)
    monkeypatch.setitem(store.PolicyAnnotator._CACHE, a.path, SquareReader())
    screen = np.zeros((5, size, size), np.uint8)
    screen[0, 5:12, 18:29] = 255  # x 18..28, y 5..11: off centre, not square
    view = {"screen": screen, "state": np.zeros(5, np.float32)}
    got = a._joint_box(view, np.array([2, 9, 9, 3, 3]))  # the greedy corners crossed: re-decoded
    want = [px_to_grid(v, g, size) for v in (18, 5, 28, 11)]
    assert got[0] == 2 and got[1:].tolist() == want
    assert store.PolicyAnnotator(str(d), tta=False)._joint_box(view, np.array([2, 9, 9, 3, 3]))[1:].tolist() == want
