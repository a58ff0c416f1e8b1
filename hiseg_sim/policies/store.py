"""Saved policies: ``agents/policies/<name>/`` and the annotator that plays one.

A policy directory holds ``policy.zip`` (the SB3 policy: weights and constructor arguments,
without the optimiser), ``model_card.json`` (what :func:`hiseg_sim.policies.train.train_policy`
wrote: env, cohort, steps, seeds, reward, grid, training time, evaluation) and ``model_card.md``
(the same for people). Its name is an annotator name: :func:`hiseg_sim.annotators.registry.build_annotator`
resolves it to a :class:`PolicyAnnotator`, so a study spec lists it like a profile or a robot.

>>> # build_annotator("ppo_box_2d").act(obs, info)   -> a typed action (BoxAction, Accept, ...)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["POLICY_FILE", "CARD_JSON", "PolicyAnnotator", "best_ordered_pair", "is_policy_dir", "load_policy", "policies_dir",
           "policy_dir", "policy_names"]

POLICY_FILE = "policy.zip"
CARD_JSON = "model_card.json"


def policies_dir() -> Path:
    """``agents/policies`` of the source tree (or the copy bundled in the wheel)."""
    from hiseg_sim.resources import shipped_path

    return shipped_path("agents", "policies")


def is_policy_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / POLICY_FILE).is_file() and (p / CARD_JSON).is_file()


def policy_names(directory: str | Path | None = None) -> list[str]:
    """Names of the saved policies (directories with ``policy.zip`` and ``model_card.json``)."""
    d = Path(directory) if directory is not None else policies_dir()
    return sorted(p.name for p in d.iterdir() if is_policy_dir(p)) if d.is_dir() else []


def policy_dir(name: str | Path) -> Path:
    """The directory of policy ``name`` (a saved policy's name, or a path to a policy directory)."""
    p = Path(name).expanduser()
    if is_policy_dir(p):
        return p
    cand = policies_dir() / str(name)
    if is_policy_dir(cand):
        return cand
    raise FileNotFoundError(f"no saved policy {str(name)!r}: expected {cand}/{POLICY_FILE} and {CARD_JSON} "
                            f"(saved policies: {policy_names()}); train one with `hiseg-sim train-policy`")


def load_policy(name: str | Path):
    """``(sb3_policy, card)`` of a saved policy (the policy on CPU, in evaluation mode)."""
    from stable_baselines3.common.policies import MultiInputActorCriticPolicy

    d = policy_dir(name)
    card = json.loads((d / CARD_JSON).read_text())
    cls = MultiInputActorCriticPolicy
    if card.get("network") == "spatial":
        from hiseg_sim.policies.network import SpatialActorCriticPolicy as cls
    policy = cls.load(str(d / POLICY_FILE), device="cpu")
    policy.set_training_mode(False)
    return policy, card


def best_ordered_pair(lp_lo: np.ndarray, lp_hi: np.ndarray, min_gap: int = 1) -> tuple[int, int]:
    """``argmax_{j >= i + min_gap} lp_lo[i] + lp_hi[j]``: the best pair of ordered corner cells.

    >>> best_ordered_pair(np.log([0.1, 0.2, 0.7]), np.log([0.1, 0.8, 0.1]))
    (0, 1)
    """
    lp_lo, lp_hi = np.asarray(lp_lo, float), np.asarray(lp_hi, float)
    n = len(lp_lo)
    if len(lp_hi) != n or n <= min_gap:
        raise ValueError(f"need two score vectors of one length > min_gap; got {len(lp_lo)}, {len(lp_hi)}")
    tot = lp_lo[:, None] + lp_hi[None, :]
    tot[~np.triu(np.ones((n, n), bool), k=int(min_gap))] = -np.inf
    i, j = np.unravel_index(int(np.argmax(tot)), tot.shape)
    return int(i), int(j)


class PolicyAnnotator:
    """A saved policy with the :class:`~hiseg_sim.annotators.protocol.Annotator` protocol.

    It sees only the observation (``reads_ground_truth = False``) and, when its card names a
    ``perception`` profile, the intent the harness's perception step draws for it as for a person
    of that profile (:mod:`hiseg_sim.policies.intent`); ``act`` maps the
    observation through :func:`~hiseg_sim.policies.spaces.observe`, asks the policy for a grid
    action (``deterministic``: the most likely one; else sampled with the episode's generator
    seeding torch) and returns the typed env action. The policy's weights are loaded once per
    process and shared by copies (a study's sequence design deep-copies annotators).

    A greedy policy that sees the same screen twice gives the same action twice; after a box the
    screen changes, but if the policy asks for the very same box again the env shows the very same
    mask, and it would loop until the step budget ends. With ``repeat_guard`` (default) a prompt
    identical to the previous action (same kind, same place) is therefore replaced by ``Accept``:
    the policy is asking for the mask it already has. ``guarded`` counts the replacements of the
    episode (in the summary as ``repeat_guarded``).

    Args:
        name: a saved policy's name or directory.
        deterministic: act greedily (default) or sample.
        label: the name written in traces (default the policy's name).
        repeat_guard: replace an exact repeat of the previous prompt by ``Accept``.
        box_decode: how a greedy policy turns its corner distributions into a box: ``"joint"``
            (default; :meth:`_joint_box`, corners kept in order) or ``"independent"`` (each
            corner's argmax, as evaluations before 2026-11-24 session 3 did).
        tta: with the joint decode, average the corner log-probabilities over the 8 symmetries
            of the square (flips and quarter turns of the screen, mapped back) before decoding;
            default the card's ``tta`` (off). In a study: ``overrides = {tta = true}``.
    """

    reads_ground_truth = False
    _CACHE: dict[str, Any] = {}

    def __init__(self, name: str, deterministic: bool = True, label: str | None = None, repeat_guard: bool = True,
                 box_decode: str | None = None, tta: bool | None = None):
        d = policy_dir(name)
        self.path = str(d.resolve())
        self.card = json.loads((d / CARD_JSON).read_text())
        self.name = label or d.name
        self.deterministic = bool(deterministic)
        self.repeat_guard = bool(repeat_guard)
        self._last = None
        self.guarded = 0
        self.grid = int(self.card["grid"])
        self.three_d = bool(self.card.get("three_d", False))
        self.max_steps = int(self.card.get("max_episode_steps", 20))
        self._rng: np.random.Generator | None = None
        self.perception = self.card.get("perception")  # a profile's eye (policies.intent), or None
        self._intent = None
        if self.perception:  # the harness's perception step then draws this policy's intent
            self.perception_params = self._perception_params
        self.tta = bool(self.card.get("tta", False)) if tta is None else bool(tta)
        self.box_decode = box_decode if box_decode is not None else str(self.card.get("box_decode", "joint"))
        if self.box_decode not in ("joint", "independent"):
            raise ValueError(f"box_decode must be 'joint' or 'independent'; got {self.box_decode!r}")

    def __deepcopy__(self, memo):  # the weights are shared, the per-episode state is not
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._rng = None
        return new

    @property
    def policy(self):
        pol = PolicyAnnotator._CACHE.get(self.path)
        if pol is None:
            pol = PolicyAnnotator._CACHE[self.path] = load_policy(self.path)[0]
        return pol

    def _perception_params(self):
        from hiseg_sim.policies.intent import perception_params_of

        return perception_params_of(self.perception)

    def reset(self, knowledge, rng: np.random.Generator) -> None:
        self._rng = rng
        self._intent = getattr(knowledge, "intent", None) if self.perception else None
        self._last = None
        self.guarded = 0

    def act(self, obs: dict, info: dict):
        import torch

        from hiseg_sim.env.actions import Kind, from_array
        from hiseg_sim.policies.spaces import action_to_env, observe

        if self._rng is None:
            raise RuntimeError("call reset(knowledge, rng) before act()")
        want = int(self.card.get("viewport_px", obs["image"].shape[-1]))
        if obs["image"].shape[-1] != want:
            raise ValueError(f"policy {self.name!r} was trained on a {want}-px viewport; this env shows "
                             f"{obs['image'].shape[-1]} px (give the env viewport_px={want})")
        if self.perception:
            from hiseg_sim.policies.intent import intent_channel

            obs = {**obs, "intent": intent_channel(self._intent, int(obs["image"].shape[-1]))}
        view = observe(obs, self.max_steps, self.three_d)
        if not self.deterministic:
            torch.manual_seed(int(self._rng.integers(2**31)))
        with torch.no_grad():
            a, _ = self.policy.predict(view, deterministic=self.deterministic)
            if self.deterministic and self.box_decode == "joint" and int(np.asarray(a).reshape(-1)[0]) == Kind.BOX:
                a = self._joint_box(view, a)
        size = int(obs["image"].shape[-1])
        arr = action_to_env(a, self.grid, size)
        if self.repeat_guard and self._last is not None and arr[0] <= 2 and np.array_equal(arr, self._last):
            self.guarded += 1
            arr = np.array([4, 0, 0, 0, 0], np.int64)  # Accept
        self._last = arr
        return from_array(arr)

    def _joint_box(self, view: dict, a) -> np.ndarray:
        """The most likely box with its corners in order: per axis, the pair of cells ``(lo, hi)``
        with ``hi >= lo + 1`` that maximises ``log p(lo) + log p(hi)`` under the policy's two
        (independent) corner distributions. Taking each corner's own argmax can give a box whose
        corners cross or meet when the distributions are wide; the env would then see a sliver or
        an invalid box."""
        import torch

        from hiseg_sim.policies.spaces import augment, corner_scores_back

        def corner_lps(v):
            obs_t, _ = self.policy.obs_to_tensor(v)
            dist = self.policy.get_distribution(obs_t)
            return [torch.log_softmax(d.logits[0], dim=-1).cpu().numpy() for d in dist.distribution[1:5]]

        if not self.tta:
            lps = corner_lps(view)  # x0, y0, x1, y1
        else:  # test-time augmentation: mean log-probabilities over the 8 symmetries of the square
            backs = []
            for flip in (False, True):
                for k in range(4):
                    sc = augment(view["screen"], np.zeros(5, np.int64), k, flip, self.grid)[0]
                    backs.append(corner_scores_back(corner_lps({"screen": sc, "state": view["state"]}), k, flip))
            lps = [np.mean([b[c] for b in backs], axis=0) for c in range(4)]
        out = np.asarray(a, np.int64).reshape(-1).copy()
        out[1], out[3] = best_ordered_pair(lps[0], lps[2])
        out[2], out[4] = best_ordered_pair(lps[1], lps[3])
        return out

    def episode_info(self) -> dict:
        return {"repeat_guarded": int(self.guarded)}

    def end_case(self, feedback) -> None:
        return None
