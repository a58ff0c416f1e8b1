"""One person's live session: their own environment, stepped by what they do, and the views drawn from it.

The page's actions are the env's actions; the masks the person sees are the env's masks
(``current_mask`` / ``slab_masks``), and the image is the env's observation (same viewport, same
lung window). The only state kept beside the env is a mirror of each slice's prompts, so the page
can draw the clicks and box behind the mask: it follows the env's rules exactly (a decoded prompt
pushes ``env.last_prompt`` onto its slice, a valid undo pops the slice in view).

Arrays: images ``uint8`` ``(size, size)``, masks ``bool`` ``(size, size)`` or ``(n_slices, size,
size)``, all row-major ``[y, x]``; prompts in viewport pixels ``(x, y)``, boxes XYXY.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np

from hiseg_sim.annotate.schema import EpisodeRecord, SlicePrompts, SliceView
from hiseg_sim.env.actions import Action, Undo

__all__ = ["LiveSession", "StepOutcome", "b64_bits", "b64_u8"]


def b64_u8(image: np.ndarray) -> str:
    """base64 of a ``uint8`` image, row-major."""
    return base64.b64encode(np.ascontiguousarray(image, np.uint8).tobytes()).decode("ascii")


def b64_bits(mask: np.ndarray) -> str:
    """base64 of ``numpy.packbits`` of a ``bool`` mask, row-major (8 pixels a byte, first pixel in the high bit)."""
    return base64.b64encode(np.packbits(np.asarray(mask, bool).ravel()).tobytes()).decode("ascii")


@dataclass
class StepOutcome:
    """What one env step returned (``info`` is the env's info dict)."""

    reward: float
    terminated: bool
    truncated: bool
    info: dict = field(default_factory=dict)


class LiveSession:
    """An env (``gym.make`` of a NoduleSeg id, so with its ``TimeLimit``) driven by one person.

    Args:
        env: the session's own environment.
    """

    def __init__(self, env) -> None:
        self.env = env
        self.episode: EpisodeRecord | None = None
        self.obs: dict | None = None
        self.info: dict = {}
        self.step_count = 0
        self.ended = False
        self.truncated = False
        self._prompts: list[list[dict]] = []

    @property
    def unwrapped(self):
        return self.env.unwrapped

    # ---- episode ---------------------------------------------------------------------------
    def begin(self, seed: int, case_key: str) -> dict:
        """Reset the env on ``case_key`` with a seeded viewport; returns the reset info (``viewport`` ...)."""
        obs, info = self.env.reset(seed=int(seed), options={"case_id": case_key})
        self._started(obs, info)
        return info

    def resume(self, ep: EpisodeRecord) -> None:
        """Reset the env on a recorded nodule: same case, viewport and start slice (no seed needed)."""
        options: dict = {"case_id": ep.case_key, "viewport": dict(ep.viewport)}
        if int(ep.viewport["n_slices"]) > 1:
            options["start_slice"] = int(ep.start_slice)
        obs, info = self.env.reset(seed=int(ep.seed), options=options)
        self.episode = ep
        self._started(obs, info)

    def _started(self, obs: dict, info: dict) -> None:
        self.obs, self.info = obs, dict(info, invalid_action="")
        self.step_count = 0
        self.ended = self.truncated = False
        self._prompts = [[] for _ in range(self.n_slices)]

    def apply(self, action: Action) -> StepOutcome:
        """Step the env with one typed action and mirror the prompts it pushed or undid."""
        u = self.unwrapped
        before = u.current_slice
        obs, reward, terminated, truncated, info = self.env.step(action)
        if u.last_prompt is not None:
            self._prompts[int(u.last_prompt["slice"]) - u.viewport.z0].append(u.last_prompt)
        elif isinstance(action, Undo) and not info["invalid_action"]:
            self._prompts[before].pop()
        self.obs, self.info = obs, info
        self.step_count += 1
        self.ended = bool(terminated or truncated)
        self.truncated = bool(truncated)
        return StepOutcome(float(reward), bool(terminated), bool(truncated), info)

    # ---- what the page draws ---------------------------------------------------------------
    @property
    def n_slices(self) -> int:
        return int(self.unwrapped.viewport.n_slices)

    @property
    def size(self) -> int:
        return int(self.unwrapped.size)

    @property
    def z0(self) -> int:
        return int(self.unwrapped.viewport.z0)

    @property
    def decode_ms(self) -> float | None:
        """The segmenter's decode time of the last step, ms (None if it decoded nothing)."""
        s = self.unwrapped.last_decode_s
        return None if s is None else s * 1000.0

    @property
    def current_slice(self) -> int:
        return int(self.unwrapped.current_slice)

    def slab_masks(self) -> np.ndarray:
        """``bool`` ``(n_slices, size, size)``: the env's mask of every slab slice."""
        return self.unwrapped.slab_masks()

    def slices_with_mask(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.slab_masks().any(axis=(1, 2)))]

    def prompts(self, k: int) -> SlicePrompts:
        """The clicks and box behind slice ``k``'s mask."""
        if not self._prompts[k]:
            return SlicePrompts()
        p = self._prompts[k][-1]
        pts = [(float(x), float(y), int(lab)) for (x, y), lab in zip(p["points"] or [], p["labels"] or [])]
        return SlicePrompts(points=pts, box=None if p["box"] is None else tuple(p["box"]))

    def slice_hu(self, k: int) -> np.ndarray:
        """``float32`` ``(size, size)`` HU of slab slice ``k`` through the env's viewport (air-padded), as
        the env crops it for the segmenter."""
        from hiseg_sim.env.viewport import AIR_HU, crop2d

        u = self.unwrapped
        vp = u.viewport
        return crop2d(u.case.volume_hu[vp.z0 + k], vp.y0, vp.x0, u.size, fill=AIR_HU)

    def slice_image(self, k: int) -> np.ndarray:
        """``uint8`` ``(size, size)``: slab slice ``k`` in the env's window (the observation's image in view)."""
        if k == self.current_slice and self.obs is not None:
            return self.obs["image"][0]
        from hiseg_sim.env.observation import to_uint8_window

        return to_uint8_window(self.slice_hu(k), self.unwrapped.window)

    def view(self, k: int | None = None, reference: bool = False) -> SliceView:
        """The page's view of slab slice ``k`` (default: the slice in view); ``reference`` adds the
        scoring reference's outline (only for a worked-example feedback after the nodule)."""
        k = self.current_slice if k is None else int(k)
        if not 0 <= k < self.n_slices:
            raise IndexError(f"slice {k} is outside the slab [0, {self.n_slices}); scroll within it")
        mask = self.slab_masks()[k]
        ref = b64_bits(self.unwrapped.scoring_reference()[k]) if reference else None
        return SliceView(
            slice=k, image=b64_u8(self.slice_image(k)), mask=b64_bits(mask), reference=ref, prompts=self.prompts(k)
        )
