"""Behaviour cloning on an SB3 actor-critic policy: the warm start before PPO.

The loss is the negative log-likelihood of the demonstrated grid action under the policy's own
``MultiDiscrete`` distribution, counting only the entries the action uses (the kind always; x, y
for clicks and boxes; x2, y2 for boxes), plus ``value_coef`` times the squared error of the
critic against the demonstration's return-to-go (so PPO starts with a critic that is not noise).
Every batch is turned by a random symmetry of the square (:func:`~hiseg_sim.policies.spaces.augment`).
A tenth of the episodes (at least one) is held out — whole groups of them when ``groups`` is
given (e.g. the case of each episode, so held-out cases are unseen); the curve records the
held-out kind accuracy, the mean box-corner error in grid cells (all boxes, and the episode's
first box alone) and the learning rate. The learning rate follows ``schedule`` (``"constant"`` or
``"cosine"``, annealed to a hundredth); with ``patience`` training stops once the held-out
box-corner error has not improved for that many epochs, and with ``restore_best`` the weights of
the best held-out epoch are put back at the end.
"""

from __future__ import annotations

import copy

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
    obs = {
        "screen": torch.as_tensor(np.ascontiguousarray(screen), device=device).float(),
        "state": torch.as_tensor(state, device=device),
    }
    features = policy.extract_features(obs)  # SB3's preprocessing divides the uint8 screen by 255
    latent_pi, latent_vf = policy.mlp_extractor(features)
    return policy._get_action_dist_from_latent(latent_pi), policy.value_net(latent_vf).flatten()


def _split(
    demos: Demos, rng: np.random.Generator, groups: np.ndarray | None = None, val_frac: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out row indices: a ``val_frac`` share of the groups (episodes by default) held out."""
    key = np.asarray(groups) if groups is not None else demos.episode
    uniq = np.unique(key)
    n_val = max(1, int(round(len(uniq) * val_frac))) if len(uniq) > 1 and val_frac > 0 else 0
    val_keys = rng.choice(uniq, n_val, replace=False) if n_val else uniq[:0]
    val = np.isin(key, val_keys)
    return np.flatnonzero(~val), np.flatnonzero(val)


def behaviour_clone(
    policy,
    demos: Demos,
    grid: int,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 3e-4,
    value_coef: float = 0.5,
    seed: int = 0,
    log=None,
    groups: np.ndarray | None = None,
    val_frac: float = 0.1,
    schedule: str = "constant",
    patience: int | None = None,
    restore_best: bool = False,
) -> list[dict]:
    """Fit ``policy`` (an SB3 ``ActorCriticPolicy`` over a :class:`~hiseg_sim.policies.spaces.PolicyView`
    env) to ``demos``; returns one dict per epoch (``epoch, loss, nll, value_mse, val_kind_acc,
    val_box_err_cells, val_first_box_err_cells, lr``). ``log`` is called with each dict.

    ``groups`` (one key per row, e.g. the case id's index) makes the held-out split by group;
    ``schedule``, ``patience`` and ``restore_best`` as in the module docstring.
    """
    if len(demos) == 0:
        raise ValueError("no demonstrations to clone (were all episodes under min_dice?)")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine'; got {schedule!r}")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    tr, va = _split(demos, rng, groups, val_frac)
    mask_all = action_mask(demos.action)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    curve = []
    best, best_state, since = np.inf, None, 0
    for epoch in range(int(epochs)):
        lr_now = (
            lr
            if schedule == "constant"
            else lr * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * epoch / max(1, int(epochs)))))
        )
        for g in opt.param_groups:
            g["lr"] = lr_now
        policy.set_training_mode(True)
        order = rng.permutation(tr)
        tot = tot_nll = tot_v = 0.0
        nb = 0
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
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
        row = {"epoch": epoch + 1, "loss": tot / nb, "nll": tot_nll / nb, "value_mse": tot_v / nb, "lr": lr_now}
        row.update(_validate(policy, demos, va))
        curve.append(row)
        if log is not None:
            log(row)
        score = row["val_box_err_cells"]
        if np.isfinite(score) and score < best:
            best, since = score, 0
            if restore_best:
                best_state = copy.deepcopy(policy.state_dict())
        else:
            since += 1
            if patience is not None and since >= int(patience):
                break
    if restore_best and best_state is not None:
        policy.load_state_dict(best_state)
    policy.set_training_mode(False)
    return curve


@torch.no_grad()
def _validate(policy, demos: Demos, idx: np.ndarray) -> dict:
    if len(idx) == 0:
        return {
            "val_kind_acc": float("nan"),
            "val_box_err_cells": float("nan"),
            "val_first_box_err_cells": float("nan"),
        }
    policy.set_training_mode(False)
    dist, _ = _forward(policy, demos.screen[idx], demos.state[idx])
    pred = torch.stack([d.probs.argmax(1) for d in dist.distribution], dim=1).cpu().numpy()
    true = demos.action[idx]
    acc = float((pred[:, 0] == true[:, 0]).mean())
    box = true[:, 0] == Kind.BOX
    err = float(np.abs(pred[box, 1:5] - true[box, 1:5]).mean()) if box.any() else float("nan")
    ep = demos.episode[idx]
    first = np.r_[True, ep[1:] != ep[:-1]] & box  # the first action of each held-out episode, if a box
    err1 = float(np.abs(pred[first, 1:5] - true[first, 1:5]).mean()) if first.any() else float("nan")
    return {"val_kind_acc": acc, "val_box_err_cells": err, "val_first_box_err_cells": err1}
