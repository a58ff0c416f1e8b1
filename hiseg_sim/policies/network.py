"""The policy's feature extractor: a small CNN over the ``uint8`` screen, with coordinate channels.

SB3's ``MultiInputPolicy`` calls it on the :class:`~hiseg_sim.policies.spaces.PolicyView`
observation; the actor and critic heads sit on its output (``features_dim``). Two fixed channels
holding each pixel's x and y in ``[-1, 1]`` (CoordConv, Liu et al. 2018) let the convolutions
tell where a thing is, which a box's corners need; the last map is flattened, not pooled, for
the same reason.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

__all__ = ["ScreenCNN", "SpatialScreenNet", "SpatialActorCriticPolicy"]


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
            nn.Conv2d(c + 2, ch, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * ch, 2 * ch, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * ch, ch // 2, 3, stride=1, padding=1), nn.ReLU(),
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

    def __init__(self, observation_space: gym.spaces.Dict, grid: int = 48, channels: int = 16,
                 position_bias: bool = False):
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
