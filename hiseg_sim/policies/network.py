"""The policy's feature extractor: a small CNN over the ``uint8`` screen, with coordinate channels.

SB3's ``MultiInputPolicy`` calls it on the :class:`~hiseg_sim.policies.spaces.PolicyView`
observation; the actor and critic heads sit on its output (``features_dim``). Two fixed channels
holding each pixel's x and y in ``[-1, 1]`` (CoordConv, Liu et al. 2018) let the convolutions
tell where a thing is, which a box's corners need; the last map is flattened, not pooled, for
the same reason.

A saved policy is rebuilt from JSON, never from a pickle: :func:`describe_policy` writes what the
SB3 constructor needs (policy and extractor class by name, their keyword arguments with every
default filled in, the observation and action spaces, ``net_arch``, activation) and
:func:`build_policy` makes a fresh policy of it, mapping names through fixed tables
(:data:`POLICY_CLASSES`, :data:`EXTRACTORS`, :data:`ACTIVATIONS`), so a card can name nothing
else. The weights then come from a tensor state dict (:mod:`hiseg_sim.policies.store`).
"""

from __future__ import annotations

import inspect
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURE_FORMAT",
    "EXTRACTORS",
    "POLICY_CLASSES",
    "ArchitectureError",
    "ScreenCNN",
    "SpatialActorCriticPolicy",
    "SpatialScreenNet",
    "build_policy",
    "describe_policy",
]


class ScreenCNN(BaseFeaturesExtractor):
    """``{"screen": (B, C, S, S) uint8-as-float, "state": (B, n)}`` → ``(B, features_dim)``.

    Four convolutions (strides 2, 2, 2, 1) to an ``S/8 x S/8`` map, flattened, concatenated with
    the state vector, one linear layer with ReLU. SB3 has already divided the screen by 255.
    """

    def __init__(self, observation_space: gym.spaces.Dict, features_dim: int = 256, channels: int = 32):
        super().__init__(observation_space, features_dim)
        c, s, _ = observation_space["screen"].shape
        n_state = int(observation_space["state"].shape[0])
        ch = int(channels)
        self.cnn = nn.Sequential(
            nn.Conv2d(c + 2, ch, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * ch, 2 * ch, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * ch, ch // 2, 3, stride=1, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        lin = torch.linspace(-1.0, 1.0, s)
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        self.register_buffer("coords", torch.stack([xx, yy])[None], persistent=False)
        with torch.no_grad():
            n_flat = self.cnn(torch.zeros(1, c + 2, s, s)).shape[1]
        self.head = nn.Sequential(nn.Linear(n_flat + n_state, features_dim), nn.ReLU())

    def forward(self, observations: dict) -> torch.Tensor:
        screen = observations["screen"]
        coords = self.coords.expand(screen.shape[0], -1, -1, -1)
        x = self.cnn(torch.cat([screen, coords], dim=1))
        return self.head(torch.cat([x, observations["state"]], dim=1))


class SpatialScreenNet(BaseFeaturesExtractor):
    """A fully convolutional net that scores every grid cell for each box coordinate.

    ``{"screen": (B, C, S, S), "state": (B, n)}`` → ``(B, 4 G + 2 ch + n)``: first the logits of
    ``x0, y0, x1, y1`` over the ``G`` grid cells (``G = grid``), then the channel-wise mean and max
    of the last feature map, then the state vector. A strided convolution brings the screen (plus
    the two coordinate channels) to the ``G x G`` grid; four dilated convolutions (dilation 1, 2, 4,
    8: about 60 px of context) keep that resolution; a 1x1 convolution gives four maps, and each
    x logit is the log-sum-exp of its map down a column (each y logit along a row). The box
    corners are therefore read off where the image shows them — translation-equivariant, unlike a
    flattened map and a dense layer, which must learn every position separately and on unseen
    cases fall back to boxes around the viewport's centre. With ``position_bias`` a learned
    score per cell and coordinate is added (the prior that the viewport is centred on a
    detection: boxes far from the centre are rare). :class:`SpatialActorCriticPolicy`
    reads the logits straight through; the kind and the value come from the pooled features.
    """

    def __init__(
        self, observation_space: gym.spaces.Dict, grid: int = 48, channels: int = 16, position_bias: bool = False
    ):
        c, s, _ = observation_space["screen"].shape
        n_state = int(observation_space["state"].shape[0])
        if s % grid:
            raise ValueError(f"SpatialScreenNet needs the viewport ({s} px) to be a multiple of the grid ({grid})")
        ch = int(channels)
        super().__init__(observation_space, 4 * grid + 2 * ch + n_state)
        self.grid = int(grid)
        stride = s // grid
        layers = [nn.Conv2d(c + 2, ch, 5, stride=stride, padding=2), nn.ReLU()]
        for d in (1, 2, 4, 8):
            layers += [nn.Conv2d(ch, ch, 3, padding=d, dilation=d), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.heat = nn.Conv2d(ch, 4, 1)
        # a learned prior over the cells of each coordinate, added to the image's evidence
        self.position_bias = nn.Parameter(torch.zeros(4, self.grid)) if position_bias else None
        lin = torch.linspace(-1.0, 1.0, s)
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        self.register_buffer("coords", torch.stack([xx, yy])[None], persistent=False)

    def forward(self, observations: dict) -> torch.Tensor:
        screen = observations["screen"]
        coords = self.coords.expand(screen.shape[0], -1, -1, -1)
        f = self.body(torch.cat([screen, coords], dim=1))
        h = self.heat(f)  # (B, 4, G, G): rows y, columns x
        x0, y0 = torch.logsumexp(h[:, 0], dim=1), torch.logsumexp(h[:, 1], dim=2)
        x1, y1 = torch.logsumexp(h[:, 2], dim=1), torch.logsumexp(h[:, 3], dim=2)
        if self.position_bias is not None:
            b = self.position_bias
            x0, y0, x1, y1 = x0 + b[0], y0 + b[1], x1 + b[2], y1 + b[3]
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return torch.cat([x0, y0, x1, y1, pooled, observations["state"]], dim=1)


class _SpatialHead(nn.Module):
    """Latent ``[4 G coordinate logits, rest]`` → MultiDiscrete logits ``[kind, x0, y0, x1, y1]``."""

    def __init__(self, grid: int, n_kinds: int, n_rest: int, hidden: int = 64):
        super().__init__()
        self.grid = int(grid)
        self.kind = nn.Sequential(nn.Linear(n_rest, hidden), nn.ReLU(), nn.Linear(hidden, n_kinds))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        n = 4 * self.grid
        return torch.cat([self.kind(latent[:, n:]), latent[:, :n]], dim=1)


def _spatial_policy_class():
    from stable_baselines3.common.policies import MultiInputActorCriticPolicy

    class SpatialActorCriticPolicy(MultiInputActorCriticPolicy):
        """SB3's actor-critic with :class:`SpatialScreenNet`'s coordinate logits as the action logits.

        Use with ``features_extractor_class=SpatialScreenNet`` and ``net_arch=dict(pi=[], vf=[...])``
        (the actor's latent must be the features themselves).
        """

        def _build(self, lr_schedule) -> None:
            super()._build(lr_schedule)
            nvec = self.action_space.nvec
            grid = int(nvec[1])
            if self.mlp_extractor.latent_dim_pi != self.features_dim:
                raise ValueError("SpatialActorCriticPolicy needs net_arch pi=[] (the features are the actor's latent)")
            self.action_net = _SpatialHead(grid, int(nvec[0]), self.features_dim - 4 * grid)
            self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    SpatialActorCriticPolicy.__module__ = __name__
    SpatialActorCriticPolicy.__qualname__ = "SpatialActorCriticPolicy"
    return SpatialActorCriticPolicy


SpatialActorCriticPolicy = _spatial_policy_class()


# ---- rebuilding a saved policy from its card -------------------------------------------------
#: version of the ``architecture`` section that :func:`describe_policy` writes
ARCHITECTURE_FORMAT = 1
#: feature extractors a card may name
EXTRACTORS: dict[str, type] = {"ScreenCNN": ScreenCNN, "SpatialScreenNet": SpatialScreenNet}
#: activations of the MLP heads a card may name
ACTIVATIONS: dict[str, type] = {"Tanh": nn.Tanh, "ReLU": nn.ReLU}
_DTYPES = ("uint8", "float32")
_KEYS = (
    "format",
    "policy_class",
    "observation_space",
    "action_space",
    "features_extractor",
    "features_extractor_kwargs",
    "net_arch",
    "activation_fn",
    "share_features_extractor",
    "normalize_images",
)


def _policy_classes() -> dict[str, Any]:
    from stable_baselines3.common.policies import MultiInputActorCriticPolicy

    return {
        "MultiInputActorCriticPolicy": MultiInputActorCriticPolicy,
        "SpatialActorCriticPolicy": SpatialActorCriticPolicy,
    }


#: SB3 actor-critic classes a card may name
POLICY_CLASSES: dict[str, Any] = _policy_classes()


class ArchitectureError(ValueError):
    """A policy that cannot be described in, or rebuilt from, a card's ``architecture`` section."""


def _name_of(table: dict[str, type], obj: type, what: str) -> str:
    for name, cls in table.items():
        if obj is cls:
            return name
    raise ArchitectureError(f"{what} {getattr(obj, '__qualname__', obj)!r} cannot be saved: known are {sorted(table)}")


def _constant_lr(_progress: float) -> float:
    """The learning-rate schedule of a rebuilt policy (its optimiser is not used for inference;
    fine-tuning puts the weights into a fresh PPO model with its own)."""
    return 0.0


def _box_to_json(box, key: str) -> dict:
    if not isinstance(box, gym.spaces.Box) or np.dtype(box.dtype).name not in _DTYPES:
        raise ArchitectureError(f"observation {key!r} must be a Box of {'/'.join(_DTYPES)}; got {box}")
    lo, hi = np.unique(box.low), np.unique(box.high)
    if len(lo) != 1 or len(hi) != 1:
        raise ArchitectureError(f"observation {key!r} must have one lower and one upper bound; got {box}")
    return {
        "shape": [int(v) for v in box.shape],
        "low": lo[0].item(),
        "high": hi[0].item(),
        "dtype": np.dtype(box.dtype).name,
    }


def _resolved_kwargs(cls: type, kwargs: dict | None) -> dict:
    """``kwargs`` of ``cls(observation_space, ...)`` with every default filled in (so the card,
    not the code's defaults at load time, says what was built)."""
    params = list(inspect.signature(cls).parameters.values())[1:]  # after observation_space
    kwargs = dict(kwargs or {})
    unknown = set(kwargs) - {p.name for p in params}
    if unknown:
        raise ArchitectureError(f"{cls.__name__} takes no argument {sorted(unknown)}")
    out = {p.name: kwargs.get(p.name, p.default) for p in params}
    for p in params:
        v, default = out[p.name], p.default
        if v is inspect.Parameter.empty or not (v is None or isinstance(v, (bool, int, float, str))):
            raise ArchitectureError(f"{cls.__name__} argument {p.name}={v!r} is not a JSON scalar")
        if default is not None and default is not inspect.Parameter.empty and not _same_kind(v, default):
            raise ArchitectureError(f"{cls.__name__} argument {p.name}={v!r} must be of type {type(default).__name__}")
    return out


def _same_kind(v: Any, default: Any) -> bool:
    """``v`` may stand where ``default`` does: a bool for a bool, an int for an int, a number for a float."""
    if isinstance(default, bool) or isinstance(v, bool):
        return isinstance(v, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(v, (int, float))
    return isinstance(v, type(default))


def describe_policy(policy) -> dict:
    """The ``architecture`` section of a model card: everything :func:`build_policy` needs to make
    the same network again (not the weights). Raises :class:`ArchitectureError` for a policy built
    from classes outside the tables above."""
    cls_name = _name_of(POLICY_CLASSES, type(policy), "policy class")
    if getattr(policy, "use_sde", False):
        raise ArchitectureError("a policy with state-dependent exploration (use_sde) cannot be saved")
    obs, act = policy.observation_space, policy.action_space
    if not isinstance(obs, gym.spaces.Dict) or set(obs.spaces) != {"screen", "state"}:
        raise ArchitectureError(f"observation space must be Dict(screen, state); got {obs}")
    if not isinstance(act, gym.spaces.MultiDiscrete) or np.ndim(act.nvec) != 1 or np.any(np.asarray(act.start) != 0):
        raise ArchitectureError(f"action space must be a one-dimensional MultiDiscrete from 0; got {act}")
    net_arch = policy.net_arch
    if isinstance(net_arch, dict):
        pi, vf = list(net_arch.get("pi", [])), list(net_arch.get("vf", []))
    else:  # SB3: a list is the same layers for the actor and the critic
        pi = vf = list(net_arch)
    extractor = policy.features_extractor_class
    return {
        "format": ARCHITECTURE_FORMAT,
        "policy_class": cls_name,
        "observation_space": {k: _box_to_json(obs[k], k) for k in ("screen", "state")},
        "action_space": {"type": "MultiDiscrete", "nvec": [int(v) for v in act.nvec]},
        "features_extractor": _name_of(EXTRACTORS, extractor, "features extractor"),
        "features_extractor_kwargs": _resolved_kwargs(extractor, policy.features_extractor_kwargs),
        "net_arch": {"pi": [int(v) for v in pi], "vf": [int(v) for v in vf]},
        "activation_fn": _name_of(ACTIVATIONS, policy.activation_fn, "activation"),
        "share_features_extractor": bool(policy.share_features_extractor),
        "normalize_images": bool(policy.normalize_images),
    }


def _int_list(v: Any, what: str, lo: int = 1) -> list[int]:
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= lo for x in v):
        raise ArchitectureError(f"{what} must be a list of integers >= {lo}; got {v!r}")
    return v


def _box_from_json(d: Any, key: str) -> gym.spaces.Box:
    if not isinstance(d, dict) or set(d) != {"shape", "low", "high", "dtype"} or d["dtype"] not in _DTYPES:
        raise ArchitectureError(f"observation_space.{key} must be {{shape, low, high, dtype in {_DTYPES}}}; got {d!r}")
    if not all(isinstance(d[b], (int, float)) and not isinstance(d[b], bool) for b in ("low", "high")):
        raise ArchitectureError(f"observation_space.{key} bounds must be numbers; got {d['low']!r}, {d['high']!r}")
    return gym.spaces.Box(
        d["low"], d["high"], tuple(_int_list(d["shape"], f"observation_space.{key}.shape")), np.dtype(d["dtype"])
    )


def build_policy(arch: dict):
    """A fresh policy (random weights, CPU) of the network an ``architecture`` section describes.

    Only names in :data:`POLICY_CLASSES`, :data:`EXTRACTORS` and :data:`ACTIVATIONS` are accepted
    and every field is checked, so a card cannot make this run anything else. Raises
    :class:`ArchitectureError` (one line: the field and what it must be).
    """
    if not isinstance(arch, dict):
        raise ArchitectureError(f"architecture must be a JSON object; got {type(arch).__name__}")
    if arch.get("format") != ARCHITECTURE_FORMAT:
        raise ArchitectureError(f"architecture format {arch.get('format')!r} is not {ARCHITECTURE_FORMAT}")
    if set(arch) != set(_KEYS):
        raise ArchitectureError(
            f"architecture fields must be {sorted(_KEYS)}; missing {sorted(set(_KEYS) - set(arch))}, "
            f"unknown {sorted(set(arch) - set(_KEYS))}"
        )
    names = {"policy_class": POLICY_CLASSES, "features_extractor": EXTRACTORS, "activation_fn": ACTIVATIONS}
    for key, table in names.items():
        if arch[key] not in table:
            raise ArchitectureError(f"architecture {key} {arch[key]!r} is not one of {sorted(table)}")
    obs = arch["observation_space"]
    if not isinstance(obs, dict) or set(obs) != {"screen", "state"}:
        raise ArchitectureError(f"observation_space must have exactly 'screen' and 'state'; got {obs!r}")
    obs_space = gym.spaces.Dict({k: _box_from_json(obs[k], k) for k in ("screen", "state")})
    act = arch["action_space"]
    if not isinstance(act, dict) or act.get("type") != "MultiDiscrete" or set(act) != {"type", "nvec"}:
        raise ArchitectureError(f"action_space must be {{type: MultiDiscrete, nvec}}; got {act!r}")
    act_space = gym.spaces.MultiDiscrete(np.array(_int_list(act["nvec"], "action_space.nvec"), np.int64))
    net = arch["net_arch"]
    if not isinstance(net, dict) or set(net) != {"pi", "vf"}:
        raise ArchitectureError(f"net_arch must be {{pi: [...], vf: [...]}}; got {net!r}")
    net_arch = {k: _int_list(net[k], f"net_arch.{k}") for k in ("pi", "vf")}
    for key in ("share_features_extractor", "normalize_images"):
        if not isinstance(arch[key], bool):
            raise ArchitectureError(f"architecture {key} must be true or false; got {arch[key]!r}")
    extractor = EXTRACTORS[arch["features_extractor"]]
    kwargs = arch["features_extractor_kwargs"]
    if not isinstance(kwargs, dict):
        raise ArchitectureError(f"features_extractor_kwargs must be a JSON object; got {kwargs!r}")
    kwargs = _resolved_kwargs(extractor, kwargs)
    return POLICY_CLASSES[arch["policy_class"]](
        obs_space,
        act_space,
        _constant_lr,
        net_arch=net_arch,
        activation_fn=ACTIVATIONS[arch["activation_fn"]],
        features_extractor_class=extractor,
        features_extractor_kwargs=kwargs,
        share_features_extractor=arch["share_features_extractor"],
        normalize_images=arch["normalize_images"],
    )
