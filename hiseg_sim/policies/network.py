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

__all__ = ["ScreenCNN"]


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
