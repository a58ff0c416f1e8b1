"""The specialist → generalist annotator (SemiSAM+-style): a small net prompts the frozen segmenter.

A :class:`~hiseg_sim.downstream.unet.TinyUNet` trained on ``n_labelled`` labelled cases of the
*default* cohort (calibration split; never the holdout) looks at the viewport a person would see
and proposes a mask. Like every annotator it knows the viewport is centred on a (noisy) detection
of the nodule: the shipped study trains it with the centre-prior channel
(``train = {prior = true}``, :class:`~hiseg_sim.downstream.unet.TinyUNet`), and
:func:`proposal_mask` keeps the component weighted most towards the middle, falling back to a
lower threshold when nothing passes. Its proposal becomes prompts for the frozen segmenter in the env, over a
few rounds (SemiSAM+, arXiv 2502.20749):

1. a box: the proposal's bounding box grown by ``box_pad_px`` (LiteMedSAM was trained with boxes);
2. up to ``rounds - 1`` points by the RITM rule (:func:`~hiseg_sim.annotators.robots.points.ritm_click`)
   applied to the *proposal* in place of ground truth: the deepest pixel of the larger region
   where the segmenter's mask and the proposal disagree, positive if the proposal has it. The
   env feeds the previous round's low-resolution logits back with each point (its
   ``mask_feedback``): that is SemiSAM+'s mask prompt. The env has no action that takes an
   arbitrary mask, so the proposal itself does not enter as a mask prompt.
3. the annotator judges each round by its Dice with the proposal, undoes back to the round that
   agrees best (points after a box often make LiteMedSAM worse) and accepts.

It reads no ground truth: :class:`~hiseg_sim.annotators.base.Knowledge` gives it the viewport in
HU and nothing else it uses. The masks of every round are kept; :meth:`episode_info` returns them
(bit-packed) with the proposal, so the runner stores them beside the final mask and
:mod:`hiseg_sim.downstream.labels` can build a pseudo-label whose pixels are weighted by the spread
across rounds (:mod:`hiseg_sim.downstream.pseudo`).

Weights: trained on first use and cached under ``<cache_dir>/specialist/<hash>.pt`` (``cache_dir``
default :func:`hiseg_sim.segmenters.cache.default_cache_dir`), keyed by everything training
depends on; loaded with ``torch.load(weights_only=True)``; memoised per process so the runner's
one-annotator-per-episode costs nothing. :func:`specialist_net` is the only place that trains or
reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from hiseg_sim.annotators.base import Annotator
from hiseg_sim.annotators.robots.points import Click, ritm_click
from hiseg_sim.downstream.pseudo import pack_rounds
from hiseg_sim.downstream.training import TrainConfig, train_unet
from hiseg_sim.downstream.unet import TinyUNet, predict_prob
from hiseg_sim.env.actions import Accept, BoxAction, PointAction, Undo
from hiseg_sim.metrics import dice as _dice
from hiseg_sim.seeding import keyed_rng
from hiseg_sim.segmenters.checks import check_finite_weights

__all__ = [
    "SpecialistConfig",
    "SpecialistAnnotator",
    "labelled_ids",
    "specialist_net",
    "proposal_mask",
    "specialist_prompt_box",
    "build_specialist",
    "SHIPPED_DEFAULTS",
    "cohort_cases",
    "weights_path",
]


@dataclass(frozen=True)
class SpecialistConfig:
    """What the specialist's weights depend on.

    Attributes:
        n_labelled: labelled cases it is trained on (the first ``n`` of :func:`labelled_ids`).
        seed: seeds the choice of cases (with ``cohort``) and the training.
        cohort: the cohort the labelled cases come from (calibration split only).
        neighbours: ground-truth slices each side of the key slice used per labelled case
            (a labelled case is labelled on every slice).
        train: the training schedule.
    """

    n_labelled: int = 8
    seed: int = 0
    cohort: str = "default"
    neighbours: int = 2
    train: TrainConfig = field(default_factory=TrainConfig)

    def key(self) -> str:
        d = asdict(self)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def labelled_ids(case_ids, n: int, seed: int = 0) -> list[str]:
    """The first ``n`` of a seeded permutation of ``case_ids`` (sorted first): nested in ``n``.

    >>> labelled_ids(["c", "a", "b"], 2, seed=1) == labelled_ids(["a", "b", "c"], 3, seed=1)[:2]
    True
    """
    ids = sorted(case_ids)
    if not 1 <= int(n) <= len(ids):
        raise ValueError(f"n_labelled must be in [1, {len(ids)}]; got {n}")
    order = keyed_rng(seed, 0x1AB).permutation(len(ids))
    return [ids[i] for i in order[: int(n)]]


_NETS: dict[str, TinyUNet] = {}


def cohort_cases(cohort: str, allow_holdout: bool = False) -> list:
    """The cases of a manifest cohort or a registered case source (:func:`hiseg_sim.data.sources.load_cases`).

    The specialist's cohort must not be the holdout (``allow_holdout=False``): it is for reporting only.
    """
    if not allow_holdout and "holdout" in str(cohort):
        raise ValueError("the specialist is trained on the calibration split only; the holdout is for reporting")
    from hiseg_sim.data.sources import load_cases

    return load_cases(str(cohort))


def weights_path(cfg: SpecialistConfig, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the weights of ``cfg`` are cached: ``<cache_dir>/specialist/<cfg.key()>.pt``."""
    if cache_dir is None:
        from hiseg_sim.segmenters.cache import default_cache_dir

        cache_dir = default_cache_dir()
    return Path(cache_dir).expanduser() / "specialist" / f"{cfg.key()}.pt"


def specialist_net(
    cfg: SpecialistConfig = SpecialistConfig(), cache_dir: str | os.PathLike | None = None, cases=None
) -> TinyUNet:
    """The trained specialist for ``cfg``: memory → disk cache → trained now (and cached).

    ``cases``: the cohort's cases if the caller has them loaded (else :func:`load_cohort`).
    """
    key = cfg.key()
    if key in _NETS:
        return _NETS[key]
    path = weights_path(cfg, cache_dir)
    net = TinyUNet(cfg.train.base, cfg.train.prior)
    if path.is_file():
        state = torch.load(path, weights_only=True, map_location="cpu")
        check_finite_weights(state, path, "specialist checkpoint")
        net.load_state_dict(state)
        net.eval()
    else:
        from hiseg_sim.downstream.slices import case_crops

        cases = list(cases) if cases is not None else cohort_cases(cfg.cohort)
        by_id = {c.case_id: c for c in cases}
        ids = labelled_ids(by_id, cfg.n_labelled, cfg.seed)
        crops = [cr for i in ids for cr in case_crops(by_id[i], "specialist", cfg.seed, cfg.neighbours)]
        import multiprocessing

        from hiseg_sim.progress import note

        what = (
            f"training the specialist on {cfg.n_labelled} labelled case(s), {cfg.train.steps} steps "
            f"(once; the weights are cached in {path.parent})"
        )
        main = multiprocessing.parent_process() is None
        if not main:  # a pool worker: one line each, not bars from several processes on one terminal
            note(f"{what} …")
        net = train_unet(
            np.stack([c.image_hu for c in crops]),
            np.stack([c.gt for c in crops]),
            None,
            cfg.train,
            seed=cfg.seed,
            progress=what if main else None,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(net.state_dict(), tmp)
        os.replace(tmp, path)
    _NETS[key] = net
    return net


def proposal_mask(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The specialist's proposal: the connected component of ``prob > threshold`` that carries the
    most probability, each pixel weighted by a Gaussian around the viewport's centre (where the
    detection put the nodule). If nothing passes ``threshold``, the component around the
    best-weighted pixel at half its probability. ``(H, W)`` float → ``(H, W)`` bool (never empty)."""
    p = np.asarray(prob, np.float32)
    H, W = p.shape
    yy, xx = np.mgrid[0:H, 0:W]
    sd = max(H, W) / 4.0
    prior = np.exp(-(((yy - (H - 1) / 2) ** 2 + (xx - (W - 1) / 2) ** 2) / (2 * sd * sd)))
    score = p * prior
    fg = p > threshold
    if not fg.any():
        peak = np.unravel_index(int(np.argmax(score)), p.shape)
        fg = p >= 0.5 * float(p[peak])
    lab, n = ndimage.label(fg)
    if n == 0:  # pragma: no cover - fg always holds the peak
        out = np.zeros_like(fg)
        out[H // 2, W // 2] = True
        return out
    best = int(np.argmax(ndimage.sum(score, lab, index=np.arange(1, n + 1)))) + 1
    return lab == best


def specialist_prompt_box(mask: np.ndarray, pad_px: float = 2.0) -> BoxAction:
    """A :class:`BoxAction` around ``mask`` grown by ``pad_px``, clipped to the viewport, at least 2 px wide."""
    ys, xs = np.nonzero(mask)
    H, W = mask.shape
    x0, x1 = max(xs.min() - pad_px, 0.0), min(xs.max() + pad_px, W - 1.0)
    y0, y1 = max(ys.min() - pad_px, 0.0), min(ys.max() + pad_px, H - 1.0)
    if x1 - x0 < 2:
        x0, x1 = max(x0 - 1, 0.0), min(x1 + 1, W - 1.0)
    if y1 - y0 < 2:
        y0, y1 = max(y0 - 1, 0.0), min(y1 + 1, H - 1.0)
    return BoxAction(float(x0), float(y0), float(x1), float(y1))


class SpecialistAnnotator(Annotator):
    """The specialist prompting the frozen segmenter in ``NoduleSeg2D-v0``; see the module docstring.

    Args:
        n_labelled, seed, cohort, neighbours: :class:`SpecialistConfig` (which weights).
        steps: training steps (:class:`TrainConfig`), if the weights are not cached yet.
        train: other :class:`TrainConfig` fields (``{"base": 4, ...}``).
        net: a net to use as is (tests; skips :func:`specialist_net`).
        rounds: prompt rounds at most (1 box + ``rounds - 1`` RITM-rule points).
        min_error_px: stop clicking when the deepest disagreement is shallower than this (pixels).
        box_pad_px: box margin around the proposal.
        threshold: probability cut of the proposal.
        pick_best: undo back to the round that agrees best with the proposal before accepting
            (else accept the last round).
        cache_dir: where the weights are cached.
        label: the name written in traces.
    """

    reads_ground_truth = False

    def __init__(
        self,
        n_labelled: int = 8,
        seed: int = 0,
        cohort: str = "default",
        neighbours: int = 2,
        steps: int | None = None,
        rounds: int = 4,
        min_error_px: float = 1.0,
        box_pad_px: float = 2.0,
        threshold: float = 0.5,
        pick_best: bool = True,
        cache_dir: str | None = None,
        label: str | None = None,
        net: TinyUNet | None = None,
        train: dict | None = None,
    ) -> None:
        if int(rounds) < 1:
            raise ValueError(f"rounds must be >= 1; got {rounds}")
        train_cfg = replace(TrainConfig(), **dict(train or {}))
        if steps is not None:
            train_cfg = replace(train_cfg, steps=int(steps))
        self.config = SpecialistConfig(int(n_labelled), int(seed), str(cohort), int(neighbours), train_cfg)
        self.rounds = int(rounds)
        self.min_error_px = float(min_error_px)
        self.box_pad_px = float(box_pad_px)
        self.threshold = float(threshold)
        self.pick_best = bool(pick_best)
        self.cache_dir = cache_dir
        self.name = label or f"specialist_sam_n{int(n_labelled)}"
        self._net = net
        self.perceived_quality: float | None = None

    @property
    def net(self) -> TinyUNet:
        if self._net is None:
            self._net = specialist_net(self.config, self.cache_dir)
        return self._net

    # ---- protocol ---------------------------------------------------------------------------
    def begin_case(self, knowledge, rng: np.random.Generator) -> None:
        if getattr(knowledge, "three_d", False):
            raise ValueError("the specialist annotator works in NoduleSeg2D-v0 (one slice)")
        img = np.asarray(knowledge.image_hu, np.float32)
        self.prob = predict_prob(self.net, img)
        self.proposal = proposal_mask(self.prob, self.threshold)
        self.masks: list[np.ndarray] = []
        self.agree: list[float] = []
        self.clicks: list[Click] = []
        self.viewport: dict | None = None
        self._phase = "prompt"
        self._undo_left = 0
        self.chosen: int | None = None
        self.perceived_quality = None

    def act(self, obs: dict, info: dict):
        if self.viewport is None and "viewport" in info:
            self.viewport = dict(info["viewport"])
        if self._phase == "prompt" and int(info.get("n_prompts", 0)) > len(self.masks):
            mask = np.asarray(obs["mask"])[0] > 0
            self.masks.append(mask)
            self.agree.append(_dice(mask, self.proposal))
            self.perceived_quality = self.agree[-1]
        if self._phase == "prompt":
            if not self.masks:
                return specialist_prompt_box(self.proposal, self.box_pad_px)
            if len(self.masks) < self.rounds:
                click = ritm_click(self.masks[-1], self.proposal, previous=self.clicks)
                if click is not None and self._depth(click) >= self.min_error_px:
                    self.clicks.append(click)
                    return PointAction(float(click.xy[0]), float(click.xy[1]), click.positive)
            self._phase = "undo"
            best = int(np.argmax(self.agree)) if self.pick_best else len(self.masks) - 1
            self.chosen = best
            self._undo_left = len(self.masks) - 1 - best
            self.perceived_quality = self.agree[best]
        if self._phase == "undo" and self._undo_left > 0:
            self._undo_left -= 1
            return Undo()
        self._phase = "done"
        return Accept()

    def _depth(self, click: Click) -> float:
        """Distance of the clicked pixel to the edge of its error region (RITM's depth), pixels."""
        sam = self.masks[-1]
        err = (self.proposal & ~sam) if click.positive else (sam & ~self.proposal)
        dt = ndimage.distance_transform_edt(np.pad(err, 1))[1:-1, 1:-1]
        return float(dt[click.index])

    def end_case(self, feedback) -> None:
        return None

    def episode_info(self) -> dict:
        """Extra summary fields (stored in the episode row): the rounds, the proposal, the viewport."""
        if not self.masks:
            return {"sp_rounds": 0}
        R = len(self.masks)
        S = self.masks[0].shape[0]
        vp = self.viewport or {}
        return {
            "sp_rounds": R,
            "sp_chosen": int(self.chosen if self.chosen is not None else R - 1),
            "sp_agree": [round(a, 4) for a in self.agree],
            "sp_size": int(S),
            "sp_rounds_bits": pack_rounds(np.stack(self.masks)),
            "sp_proposal_bits": pack_rounds(self.proposal[None]),
            "sp_vp_z0": int(vp.get("z0", -1)),
            "sp_vp_y0": int(vp.get("y0", 0)),
            "sp_vp_x0": int(vp.get("x0", 0)),
            "sp_n_labelled": self.config.n_labelled,
        }


#: What ``build_annotator("specialist_sam")`` builds when nothing is overridden: the configuration
#: the downstream study ships (experiments/downstream.toml, arm specialist_n8), so the name alone
#: gives the specialist the project reports on (the class's own defaults train a weaker one:
#: no centre prior, no intensity augmentation, fewer steps).
SHIPPED_DEFAULTS: dict = {"n_labelled": 8, "neighbours": 3, "train": {"prior": True, "jitter_hu": 30.0, "steps": 400}}


def build_specialist(**overrides) -> SpecialistAnnotator:
    """Registry builder: ``build_annotator("specialist_sam", n_labelled=4, ...)``.

    Unset arguments take :data:`SHIPPED_DEFAULTS`; a ``train`` table is merged key by key with the
    shipped one (``train={"prior": False}`` keeps ``jitter_hu = 30``), and ``steps`` given on its
    own wins over ``train``'s. The downstream study builds its specialists here too, so the weights
    it trains before the run are the ones the runner's workers load."""
    kw = {k: v for k, v in SHIPPED_DEFAULTS.items() if k != "train"}
    kw.update({k: v for k, v in overrides.items() if k != "train"})
    kw["train"] = {**SHIPPED_DEFAULTS["train"], **dict(overrides.get("train") or {})}
    return SpecialistAnnotator(**kw)
