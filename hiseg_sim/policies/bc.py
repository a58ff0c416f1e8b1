"""Behaviour cloning on an SB3 actor-critic policy: the warm start before PPO.

The loss is the negative log-likelihood of the demonstrated grid action under the policy's own
``MultiDiscrete`` distribution, counting only the entries the action uses (the kind always; x, y
for clicks and boxes; x2, y2 for boxes), plus ``value_coef`` times the squared error of the
critic against the demonstration's return-to-go (so PPO starts with a critic that is not noise).
Every batch is turned by a random symmetry of the square (:func:`~hiseg_sim.policies.spaces.augment`).
A tenth of the episodes (at least one) is held out; the curve records the held-out kind accuracy
and the mean box-corner error in grid cells.
"""

from __future__ import annotations

import numpy as np
import torch

from hiseg_sim.env.actions import Kind
from hiseg_sim.policies.demos import Demos
from hiseg_sim.policies.spaces import augment

__all__ = ["behaviour_clone", "action_mask"]


def action_mask(actions: np.ndarray) -> np.ndarray:
    """``(N, 5)`` float mask of the entries each grid action uses."""
    a = np.asarray(actions)
    m = np.zeros(a.shape, np.float32)
    m[:, 0] = 1.0
    uses_xy = np.isin(a[:, 0], [Kind.POSITIVE, Kind.NEGATIVE, Kind.BOX])
    m[uses_xy, 1:3] = 1.0
    m[a[:, 0] == Kind.BOX, 3:5] = 1.0
    return m


def _forward(policy, screen: np.ndarray, state: np.ndarray):
    device = policy.device
    obs = {"screen": torch.as_tensor(np.ascontiguousarray(screen), device=device).float(),
           "state": torch.as_tensor(state, device=device)}
    features = policy.extract_features(obs)  # SB3's preprocessing divides the uint8 screen by 255
    latent_pi, latent_vf = policy.mlp_extractor(features)
    return policy._get_action_dist_from_latent(latent_pi), policy.value_net(latent_vf).flatten()


def _split(demos: Demos, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    eps = np.unique(demos.episode)
    n_val = max(1, len(eps) // 10) if len(eps) > 1 else 0
    val_eps = rng.choice(eps, n_val, replace=False) if n_val else np.array([], np.int64)
    val = np.isin(demos.episode, val_eps)
    return np.flatnonzero(~val), np.flatnonzero(val)


def behaviour_clone(policy, demos: Demos, grid: int, epochs: int = 30, batch_size: int = 64, lr: float = 3e-4,
                    value_coef: float = 0.5, seed: int = 0, log=None) -> list[dict]:
    """Fit ``policy`` (an SB3 ``ActorCriticPolicy`` over a :class:`~hiseg_sim.policies.spaces.PolicyView`
    env) to ``demos``; returns one dict per epoch (``epoch, loss, nll, value_mse, val_kind_acc,
    val_box_err_cells``). ``log`` is called with each dict."""
    if len(demos) == 0:
        raise ValueError("no demonstrations to clone (were all episodes under min_dice?)")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    tr, va = _split(demos, rng)
    mask_all = action_mask(demos.action)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    curve = []
    for epoch in range(int(epochs)):
        policy.set_training_mode(True)
        order = rng.permutation(tr)
        tot = tot_nll = tot_v = 0.0
        nb = 0
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            screens, acts = [], []
            for i in idx:
                sc, a = augment(demos.screen[i], demos.action[i], int(rng.integers(4)), bool(rng.integers(2)), grid)
                screens.append(sc)
                acts.append(a)
            dist, values = _forward(policy, np.stack(screens), demos.state[idx])
            a_t = torch.as_tensor(np.stack(acts), device=policy.device)
            lp = torch.stack([d.log_prob(a_t[:, j]) for j, d in enumerate(dist.distribution)], dim=1)
            m = torch.as_tensor(mask_all[idx], device=policy.device)
            nll = -(lp * m).sum(1).mean()
            v_loss = torch.mean((values - torch.as_tensor(demos.ret[idx], device=policy.device)) ** 2)
            loss = nll + value_coef * v_loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
            opt.step()
            tot += loss.item()
            tot_nll += nll.item()
            tot_v += v_loss.item()
            nb += 1
        row = {"epoch": epoch + 1, "loss": tot / nb, "nll": tot_nll / nb, "value_mse": tot_v / nb}
        row.update(_validate(policy, demos, va))
        curve.append(row)
        if log is not None:
            log(row)
    policy.set_training_mode(False)
    return curve


@torch.no_grad()
def _validate(policy, demos: Demos, idx: np.ndarray) -> dict:
    if len(idx) == 0:
        return {"val_kind_acc": float("nan"), "val_box_err_cells": float("nan")}
    policy.set_training_mode(False)
    dist, _ = _forward(policy, demos.screen[idx], demos.state[idx])
    pred = torch.stack([d.probs.argmax(1) for d in dist.distribution], dim=1).cpu().numpy()
    true = demos.action[idx]
    acc = float((pred[:, 0] == true[:, 0]).mean())
    box = true[:, 0] == Kind.BOX
    err = float(np.abs(pred[box, 1:5] - true[box, 1:5]).mean()) if box.any() else float("nan")
    return {"val_kind_acc": acc, "val_box_err_cells": err}
