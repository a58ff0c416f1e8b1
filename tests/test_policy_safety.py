"""Saved policies load without unpickling anything: the weights through
``torch.load(weights_only=True)``, the network rebuilt from the card's JSON; an old-format
``policy.zip``, a planted pickle or any unexpected file is refused with a one-line error."""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

import torch  # noqa: E402
from stable_baselines3.common.policies import BaseModel, MultiInputActorCriticPolicy  # noqa: E402

from hiseg_sim.policies import store  # noqa: E402
from hiseg_sim.policies.network import (  # noqa: E402
    ArchitectureError,
    ScreenCNN,
    SpatialActorCriticPolicy,
    SpatialScreenNet,
    build_policy,
    describe_policy,
)

CARD = {
    "name": "toy",
    "kind": "behaviour cloning only",
    "env_id": "hiseg_sim/NoduleSeg2D-v0",
    "grid": 8,
    "max_episode_steps": 20,
    "viewport_px": 16,
    "cohort": "toy",
    "segmenter": "stub",
    "reward": "-",
    "steps": 0,
    "seeds": {"train": 0},
    "training": {},
}


def _spaces(channels=5, size=16, grid=8):
    obs = gym.spaces.Dict(
        {
            "screen": gym.spaces.Box(0, 255, (channels, size, size), np.uint8),
            "state": gym.spaces.Box(0.0, 1.0, (5,), np.float32),
        }
    )
    return obs, gym.spaces.MultiDiscrete([5, grid, grid, grid, grid])


def _spatial(grid=8):
    torch.manual_seed(0)
    return SpatialActorCriticPolicy(
        *_spaces(grid=grid),
        lambda _: 1e-3,
        net_arch=dict(pi=[], vf=[16]),
        features_extractor_class=SpatialScreenNet,
        features_extractor_kwargs=dict(grid=grid, channels=4, position_bias=True),
    )


def _cnn():
    torch.manual_seed(0)
    return MultiInputActorCriticPolicy(
        *_spaces(channels=6),
        lambda _: 1e-3,
        net_arch=dict(pi=[16], vf=[16]),
        features_extractor_class=ScreenCNN,
        features_extractor_kwargs=dict(features_dim=16, channels=4),
    )


def _obs(policy, n=8):
    rng = np.random.default_rng(1)
    c, s, _ = policy.observation_space["screen"].shape
    return {
        "screen": rng.integers(0, 256, (n, c, s, s)).astype(np.uint8),
        "state": rng.random((n, 5)).astype(np.float32),
    }


def _outputs(policy, obs):
    """Every action logit and the value: what the network computes."""
    with torch.no_grad():
        t, _ = policy.obs_to_tensor(obs)
        logits = torch.cat([d.logits for d in policy.get_distribution(t).distribution], dim=1)
        return torch.cat([logits, policy.predict_values(t)], dim=1)


def _saved(tmp_path, policy=None, name="toy") -> Path:
    d = tmp_path / name
    store.save_policy(policy if policy is not None else _spatial(), d, CARD)
    return d


def _set_sha(d: Path) -> None:
    """Make the card's sha256 match whatever policy.pt now holds (as someone who can write the
    directory can), so the load gets as far as reading the file."""
    card = json.loads((d / "model_card.json").read_text())
    card["weights"]["sha256"] = store._sha256(d / "policy.pt")
    (d / "model_card.json").write_text(json.dumps(card))


@pytest.fixture
def loads_only_weights(monkeypatch):
    """Fail on stable-baselines3's ``load``; record every ``torch.load`` and its ``weights_only``."""
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    def no_sb3_load(*args, **kwargs):
        raise AssertionError("stable-baselines3's load was called")

    monkeypatch.setattr(torch, "load", spy)
    monkeypatch.setattr(BaseModel, "load", classmethod(no_sb3_load))
    return calls


class _Payload:
    """Unpickling this makes the directory ``marker``: evidence that a pickle ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# ---- round trip --------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [_spatial, _cnn], ids=["spatial", "cnn"])
def test_round_trip_gives_identical_outputs(make, tmp_path, loads_only_weights):
    pol = make()
    with torch.no_grad():  # weights away from their initial values, so a fresh network would differ
        for p in pol.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    pol.set_training_mode(False)
    d = _saved(tmp_path, pol)
    assert sorted(f.name for f in d.iterdir()) == ["model_card.json", "model_card.md", "policy.pt"]
    loaded, card = store.load_policy(d)
    assert loads_only_weights == [True]
    assert type(loaded) is type(pol) and loaded.observation_space == pol.observation_space
    assert loaded.action_space == pol.action_space
    obs = _obs(pol)
    assert torch.equal(_outputs(loaded, obs), _outputs(pol, obs))
    assert card["architecture"] == describe_policy(pol) and card["weights"]["sha256"] == store._sha256(d / "policy.pt")
    assert "- weights: `policy.pt`" in (d / "model_card.md").read_text()


def test_annotator_acts_from_the_weights_file(tmp_path, loads_only_weights):
    d = _saved(tmp_path)
    a = store.PolicyAnnotator(str(d))
    assert loads_only_weights == []  # made without reading the weights
    assert isinstance(a.policy, SpatialActorCriticPolicy) and loads_only_weights == [True]


def test_a_sampled_action_does_not_depend_on_whether_the_weights_were_cached(tmp_path, monkeypatch):
    d = _saved(tmp_path)
    rng = np.random.default_rng(0)
    obs = {
        "image": rng.integers(0, 256, (1, 16, 16)).astype(np.uint8),
        "mask": np.zeros((1, 16, 16), np.uint8),
        "prompts": np.zeros((3, 16, 16), np.uint8),
        "iou_pred": np.zeros(1, np.float32),
        "step": np.zeros(1, np.int64),
        "seconds": np.zeros(1, np.float32),
    }
    runs = []
    for preload in (False, True):
        monkeypatch.setattr(store.PolicyAnnotator, "_CACHE", {})
        a = store.PolicyAnnotator(str(d), deterministic=False, repeat_guard=False)
        if preload:
            _ = a.policy
        a.begin_case(None, np.random.default_rng(5))
        runs.append([a.act(obs, {}) for _ in range(4)])
    assert runs[0] == runs[1]
    before = torch.get_rng_state()
    store.load_policy(d)  # building the network draws initial weights, on a generator of its own
    assert torch.equal(torch.get_rng_state(), before)


# ---- what is refused ---------------------------------------------------------------------------
def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the raw pickle's protocol
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_planted_pickle_is_refused_without_running(how, tmp_path, loads_only_weights):
    d = _saved(tmp_path)
    payload = tmp_path / "payload.bin"
    if how == "pickle":
        payload.write_bytes(pickle.dumps(_Payload(tmp_path / "ran")))
    else:  # torch's own zip format, with the payload in its data.pkl
        torch.save({"head.weight": _Payload(tmp_path / "ran")}, payload)
    # the payload is live: an ordinary unpickling of the same bytes (torch's data.pkl) runs it
    probe = tmp_path / "probe"
    if how == "pickle":
        pickle.loads(pickle.dumps(_Payload(probe)))
    else:
        torch.save({"w": _Payload(probe)}, tmp_path / "probe.pt")
        with zipfile.ZipFile(tmp_path / "probe.pt") as z:
            pickle.loads(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
    assert probe.is_dir()
    # planted as the weights, with the card's sha256 updated to match: refused, and nothing ran
    (d / "policy.pt").write_bytes(payload.read_bytes())
    _set_sha(d)
    with pytest.raises(store.PolicyFileError) as exc:
        store.load_policy(d)
    msg = _one_line(exc)
    assert str(d / "policy.pt") in msg and "refused without running it" in msg
    assert loads_only_weights == [True]
    a = store.PolicyAnnotator(str(d))
    with pytest.raises(store.PolicyFileError, match="refused without running it"):
        _ = a.policy
    assert not (tmp_path / "ran").exists()


def test_weights_that_are_not_the_cards_are_refused(tmp_path, loads_only_weights):
    d = _saved(tmp_path)
    other = _spatial()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(2.0)
    torch.save(dict(other.state_dict()), d / "policy.pt")  # valid weights, but not the ones the card names
    with pytest.raises(store.PolicyFileError) as exc:
        store.load_policy(d)
    assert re.search(r"policy\.pt: sha256 \w+\.\.\. is not the card's", _one_line(exc))
    assert loads_only_weights == []  # refused before the file is read


def test_a_dict_that_is_not_tensors_is_refused(tmp_path):
    d = _saved(tmp_path)
    torch.save({"head.weight": [1, 2, 3]}, d / "policy.pt")
    _set_sha(d)
    with pytest.raises(store.PolicyFileError, match=r"not a \{name: tensor\} dict"):
        store.load_policy(d)


def test_old_format_is_refused_with_how_to_convert(tmp_path, loads_only_weights):
    d = tmp_path / "old"
    d.mkdir()
    (d / "model_card.json").write_text(json.dumps({**CARD, "network": "spatial"}))
    (d / "policy.zip").write_bytes(b"PK\x03\x04 never opened")
    assert store.is_policy_dir(d)  # found by name, so the refusal can say what to do
    for load in (lambda: store.PolicyAnnotator(str(d)), lambda: store.load_policy(d)):
        with pytest.raises(store.PolicyFileError) as exc:
            load()
        msg = _one_line(exc)
        assert msg.startswith(str(d / "policy.zip")) and "old-format" in msg
        assert "convert_legacy_policy" in msg and "--trust-pickle" in msg
    # saving new weights beside the old file is refused too: the directory would still not load
    with pytest.raises(store.PolicyFileError, match="policy.zip"):
        store.save_policy(_spatial(), d, CARD)
    assert not (d / "policy.pt").exists() and loads_only_weights == []


@pytest.mark.parametrize("stray", ["extra.pkl", "policy.pth", "sub/"])
def test_unexpected_files_are_refused(stray, tmp_path):
    d = _saved(tmp_path)
    (d / "training_curve.csv").write_text("phase\n")
    (d / "evaluation_holdout.png").write_bytes(b"\x89PNG")
    store.PolicyAnnotator(str(d))  # the documented extras are fine
    if stray.endswith("/"):
        (d / stray).mkdir()
    else:
        (d / stray).write_bytes(b"x")
    with pytest.raises(store.PolicyFileError) as exc:
        store.PolicyAnnotator(str(d))
    msg = _one_line(exc)
    assert msg.startswith(str(d / stray.rstrip("/"))) and "remove it" in msg


@pytest.mark.parametrize(
    "field,value",
    [
        ("policy_class", "os.system"),
        ("features_extractor", "builtins.eval"),
        ("activation_fn", "Sigmoid"),
        ("format", 2),
        ("features_extractor_kwargs", {"grid": "8"}),
        ("features_extractor_kwargs", {"hook": "x"}),
        ("net_arch", {"pi": [], "vf": [-1]}),
        ("module", "os"),
    ],
)
def test_a_card_can_name_only_known_classes_and_fields(field, value, tmp_path):
    pol = _spatial()
    arch = {**describe_policy(pol), field: value}
    with pytest.raises(ArchitectureError):
        build_policy(arch)
    d = _saved(tmp_path, pol)
    card = json.loads((d / "model_card.json").read_text())
    card["architecture"] = arch
    (d / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(store.PolicyFileError) as exc:
        store.load_policy(d)
    assert _one_line(exc).startswith(str(d / "model_card.json"))


def test_a_policy_outside_the_tables_is_not_saved(tmp_path):
    pol = MultiInputActorCriticPolicy(*_spaces(size=64), lambda _: 1e-3)  # SB3's default CombinedExtractor
    with pytest.raises(ArchitectureError, match="features extractor"):
        store.save_policy(pol, tmp_path / "p", CARD)
    assert not (tmp_path / "p" / "policy.pt").exists()


# ---- converting the old format (explicit opt-in) -----------------------------------------------
def test_convert_legacy_policy(tmp_path, capsys):
    pol = _spatial()
    d = tmp_path / "old"
    d.mkdir()
    (d / "model_card.json").write_text(json.dumps({**CARD, "network": "spatial"}))
    (d / "training_curve.csv").write_text("phase\n")
    pol.save(str(d / "policy.zip"))  # stable-baselines3's own format
    with pytest.raises(store.PolicyFileError, match="trust_pickle=True"):
        store.convert_legacy_policy(d)
    assert store._main(["convert", str(d)]) == 1 and "--trust-pickle" in capsys.readouterr().err
    assert sorted(f.name for f in d.iterdir()) == ["model_card.json", "policy.zip", "training_curve.csv"]
    with pytest.warns(UserWarning, match="runs any code"):
        res = store.convert_legacy_policy(d, trust_pickle=True)
    assert res["max_abs_diff"] == 0.0 and res["removed"] and res["tensors"] == len(pol.state_dict())
    assert sorted(f.name for f in d.iterdir()) == [
        "model_card.json",
        "model_card.md",
        "policy.pt",
        "training_curve.csv",
    ]
    loaded, card = store.load_policy(d)
    obs = _obs(pol)
    assert torch.equal(_outputs(loaded, obs), _outputs(pol, obs))
    assert card["grid"] == 8 and card["weights"]["converted_from"].startswith("policy.zip")


def test_a_conversion_that_fails_its_check_changes_nothing(tmp_path, monkeypatch):
    d = tmp_path / "old"
    d.mkdir()
    (d / "model_card.json").write_text(json.dumps({**CARD, "network": "spatial"}))
    _spatial().save(str(d / "policy.zip"))
    (d / "policy.pt").write_bytes(b"an earlier attempt")
    before = {f.name: f.read_bytes() for f in d.iterdir()}
    real = store._outputs
    calls = []

    def drifting(policy, obs):  # the rebuilt network (second call) computes something else
        calls.append(1)
        return real(policy, obs) + (len(calls) > 1)

    monkeypatch.setattr(store, "_outputs", drifting)
    with pytest.warns(UserWarning), pytest.raises(store.PolicyFileError, match="outputs differ .* not converted"):
        store.convert_legacy_policy(d, trust_pickle=True)
    assert {f.name: f.read_bytes() for f in d.iterdir()} == before


def test_convert_cli(tmp_path, capsys):
    d = tmp_path / "old"
    d.mkdir()
    (d / "model_card.json").write_text(json.dumps(CARD))
    _cnn().save(str(d / "policy.zip"))
    with pytest.warns(UserWarning):
        assert store._main(["convert", str(d), "--trust-pickle", "--keep-legacy"]) == 0
    assert "max abs diff 0" in capsys.readouterr().out and (d / "policy.zip").is_file()
    with pytest.raises(store.PolicyFileError, match="policy.zip"):  # kept, so still refused until moved out
        store.load_policy(d)


# ---- fine-tuning starts from the weights, not from a pickle ------------------------------------
def test_init_policy_copies_weights_into_a_fresh_model(tmp_path, loads_only_weights):
    from types import SimpleNamespace

    from hiseg_sim.policies.train import TrainConfig, _init_weights

    saved = _spatial()
    with torch.no_grad():
        for p in saved.parameters():
            p.add_(1.0)
    d = _saved(tmp_path, saved)
    model = SimpleNamespace(policy=_spatial())
    card = _init_weights(TrainConfig(name="ft", init_policy=str(d)), model, log=lambda *_: None)
    assert card["name"] == "toy" and loads_only_weights == [True]
    for k, v in saved.state_dict().items():
        assert torch.equal(model.policy.state_dict()[k], v)
    with pytest.raises(ValueError, match="differs in .*action_space"):
        _init_weights(TrainConfig(name="ft", init_policy=str(d)), SimpleNamespace(policy=_spatial(grid=4)), print)


def test_training_refuses_an_old_format_output_directory_before_starting(tmp_path):
    from hiseg_sim.policies.train import TrainConfig, train_policy

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "policy.zip").write_bytes(b"")
    with pytest.raises(store.PolicyFileError, match="policy.zip"):
        train_policy(TrainConfig(name="p", out_root=str(tmp_path), cohort="no such cohort"), log=lambda *_: None)


# ---- the shipped policies and the package's source ---------------------------------------------
def test_shipped_policies_are_weights_and_cards(loads_only_weights):
    names = store.policy_names()
    assert "spatial_junior_eye96_litemedsam_2d" in names
    for name in names:
        d = store.policy_dir(name)
        assert not (d / "policy.zip").exists()
        pol, card = store.load_policy(name)
        assert type(pol).__name__ == card["architecture"]["policy_class"]
        assert pol.action_space.nvec[1] == card["grid"]
        assert pol.observation_space["screen"].shape[0] == (6 if card.get("perception") else 5)
    assert loads_only_weights == [True] * len(names)


def test_the_policies_package_never_unpickles_from_disk():
    src = Path(store.__file__).parent
    for f in sorted(src.glob("*.py")):
        text = f.read_text()
        for bad in ("pickle.load", "weights_only=False", "cloudpickle", "allow_pickle=True"):
            assert bad not in text, f"{f.name} mentions {bad}"
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{f.name}: {call}"
