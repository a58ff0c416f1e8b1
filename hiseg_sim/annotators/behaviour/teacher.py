"""The teacher of a training protocol: what follows which case, and which worked example is shown.

A training design (:class:`FeedbackDesign`, one per study arm) says

- ``mode``: what the teacher shows after a case: nothing (``none``), the score (``score``: the Dice
  the environment gave and the seconds), the score and a worked example (``worked_example``), or
  the score and a mask of the expert mask's area centred in the view (``worked_example_uninformative``,
  :func:`uninformative_mask`: the control that has the example's size and none of its content);
- ``every``: after every ``every``-th case only (1: every case);
- ``examples``: which worked example: ``own`` (the expert's mask of the case just done) or one of
  the teaching file in a planned order: ``easy_first``, ``hardest_first``, ``mixed`` (an order
  unrelated to difficulty) or ``targeted`` (chosen for the error the person made on the case
  just done);
- ``tutorial``: worked examples shown before the first case, one per kind of error in turn
  (an attached vessel, a ground-glass rim, the pleura, a hard edge, a subtle nodule).

The *teaching file* is the set of cases the person's study holds (in a sequence study, the cases
of their own sequence). Difficulty comes only from what a planner has before anyone annotates
(:func:`planned_difficulty`: size, texture and the LIDC subtlety and margin ratings), and what an
example can show from its image and the expert's mask (:func:`example_content`: how much a person
who takes in vessels, misses a faint rim or misplaces the pleura would change on it). The person
has no memory of single cases: seeing a case's example before annotating it helps on that case no
more than on any other.

Every example is a 2-D view of ``size`` pixels centred on the nodule on its largest slice; the
person's intent on it comes from their perception step as in an episode
(:func:`~hiseg_sim.annotators.behaviour.perception.intended_mask` with their current parameters),
and they learn from it with
:meth:`~hiseg_sim.annotators.behaviour.person.BehaviourAnnotator.study_example`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from hiseg_sim.annotators.behaviour import perception_errors as PE
from hiseg_sim.annotators.behaviour.examples import read_example
from hiseg_sim.annotators.behaviour.perception import PerceptionParams, case_difficulty, intended_mask
from hiseg_sim.env.viewport import AIR_HU, crop2d
from hiseg_sim.seeding import keyed_rng, text_key

__all__ = [
    "EXAMPLE_ORDERS",
    "FEEDBACK_MODES",
    "TUTORIAL_KINDS",
    "ExampleView",
    "FeedbackDesign",
    "Teacher",
    "diagnose",
    "example_content",
    "example_view",
    "lesson_summary",
    "planned_difficulty",
    "uninformative_mask",
]

FEEDBACK_MODES = ("none", "score", "worked_example", "worked_example_uninformative")
EXAMPLE_ORDERS = ("own", "easy_first", "mixed", "hardest_first", "targeted")
#: What a tutorial shows in turn, and what ``targeted`` looks for.
TUTORIAL_KINDS = ("vessel", "ggo_rim", "pleura", "edge", "wrong_spot")
#: The error on the case just done must show at least this clearly for ``targeted`` to aim at it.
TARGET_MIN_CLARITY = 0.2
_EXAMPLE_STREAM = 0xE7A  # the seed tag of the perception draws on teaching-file examples


@dataclass(frozen=True)
class FeedbackDesign:
    """One arm's training design (see the module docstring). :meth:`key` is its text form, which
    a study spec stores as the arm's ``feedback`` and the episode function reads back (:meth:`parse`)."""

    mode: str = "none"
    every: int = 1
    examples: str = "own"
    tutorial: int = 0

    def __post_init__(self) -> None:
        if self.mode not in FEEDBACK_MODES:
            raise ValueError(f"feedback must be one of {', '.join(FEEDBACK_MODES)}; got {self.mode!r}")
        if not (isinstance(self.every, int) and not isinstance(self.every, bool) and self.every >= 1):
            raise ValueError(f"feedback_every must be an integer >= 1; got {self.every!r}")
        if self.examples not in EXAMPLE_ORDERS:
            raise ValueError(f"examples must be one of {', '.join(EXAMPLE_ORDERS)}; got {self.examples!r}")
        if not (isinstance(self.tutorial, int) and not isinstance(self.tutorial, bool) and self.tutorial >= 0):
            raise ValueError(f"tutorial must be an integer >= 0; got {self.tutorial!r}")
        if self.examples != "own" and not self.shows_examples:
            raise ValueError(f"examples = {self.examples!r} needs a worked-example feedback; got {self.mode!r}")
        if self.every != 1 and self.mode == "none":
            raise ValueError("feedback_every needs a feedback other than 'none'")

    @property
    def shows_examples(self) -> bool:
        return self.mode.startswith("worked_example")

    @property
    def teaches(self) -> bool:
        """Anything is ever shown."""
        return self.mode != "none" or self.tutorial > 0

    def after(self, cases_before: int) -> bool:
        """Whether feedback follows the case a person meets after ``cases_before`` others."""
        return self.mode != "none" and (int(cases_before) + 1) % self.every == 0

    def key(self) -> str:
        """``mode`` alone for the defaults, else ``mode;every=5;examples=easy_first;tutorial=3``
        (only the keys that differ from the default)."""
        extra = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)[1:] if getattr(self, f.name) != f.default]
        return ";".join([self.mode, *extra])

    @classmethod
    def parse(cls, text: str) -> FeedbackDesign:
        """The design of ``text`` (:meth:`key`'s form); ``ValueError`` naming what is wrong."""
        mode, *rest = str(text).split(";")
        kw: dict[str, Any] = {}
        for item in rest:
            k, sep, v = item.partition("=")
            if not sep or k not in ("every", "examples", "tutorial"):
                raise ValueError(f"feedback {text!r}: cannot read {item!r}")
            kw[k] = v if k == "examples" else int(v)
        return cls(mode=mode, **kw)


# ---- what an example is ------------------------------------------------------------------------
def uninformative_mask(expert: np.ndarray) -> np.ndarray:
    """A disc of the expert mask's area (pixel count) centred in the view, per slice of a
    ``(n, S, S)`` slab or on one ``(S, S)`` view: the example's size without its content."""
    ex = np.asarray(expert, bool)
    if ex.ndim == 3:
        return np.stack([uninformative_mask(s) for s in ex])
    h, w = ex.shape
    yy, xx = np.mgrid[:h, :w]
    d2 = (yy - (h - 1) / 2.0) ** 2 + (xx - (w - 1) / 2.0) ** 2
    out = np.zeros(h * w, bool)
    out[np.argsort(d2.ravel(), kind="stable")[: int(ex.sum())]] = True
    return out.reshape(h, w)


def planned_difficulty(meta: Mapping, diameter_mm: float) -> float:
    """How hard a case is to outline, in [0, 1], from what a planner has before anyone annotates:
    the mean of ``(5 - texture) / 4`` (ground glass hardest), ``(5 - subtlety) / 4`` and
    ``(5 - margin) / 4`` (LIDC ratings; a rating missing is left out) and the size,
    ``clip((20 - D) / 17, 0, 1)`` (3 mm hardest, 20 mm and more easiest)."""
    ratings = dict(meta.get("ratings") or {})
    parts = [float(np.clip((20.0 - float(diameter_mm)) / 17.0, 0.0, 1.0))]
    tex = ratings.get("texture", meta.get("texture"))
    for v in (tex, ratings.get("subtlety"), ratings.get("margin")):
        if v is not None and np.isfinite(float(v)):
            parts.append(float(np.clip((5.0 - float(v)) / 4.0, 0.0, 1.0)))
    return float(np.mean(parts))


@dataclass(frozen=True, eq=False)
class ExampleView:
    """A case as a teacher shows it: the view (``image`` ``(S, S)`` HU), the expert's mask on it,
    the ground truth the perception step reads, the pixel size, and what a planner knows of it."""

    case_id: str
    image: np.ndarray
    expert: np.ndarray
    spacing_yx: tuple[float, float]
    difficulty: float
    subtlety: float
    content: dict


def example_content(image: np.ndarray, expert: np.ndarray, spacing_yx, params: PerceptionParams | None = None) -> dict:
    """What an example can show: the area (mm^2) that taking in an attached vessel, missing a faint
    rim, and leaking into the pleura would change on it (the perception errors applied to the
    expert's mask; 0 when the image has no such structure)."""
    p = PerceptionParams() if params is None else params
    m, img = np.asarray(expert, bool)[None], np.asarray(image, np.float32)[None]
    sp = (1.0e6, float(spacing_yx[0]), float(spacing_yx[1]))
    px = float(spacing_yx[0]) * float(spacing_yx[1])
    leak = PE.pleura_error(m, img, sp, p.replace(p_pleura_leak=1.0), np.random.default_rng(0))
    return {
        "vessel": float((PE.include_vessel(m, img, sp, p) ^ m).sum() * px),
        "ggo_rim": float((PE.miss_ggo_rim(m, img, sp, p) ^ m).sum() * px),
        "pleura": float((leak ^ m).sum() * px),
    }


_VIEWS: dict[tuple[str, int], ExampleView] = {}


def example_view(case, size: int) -> ExampleView:
    """The view of ``case`` (a :class:`~hiseg_sim.data.case.Case`) a teacher shows, ``size`` px
    centred on the nodule on its largest slice (remembered per process)."""
    key = (case.case_id, int(size))
    if key not in _VIEWS:
        z = int(case.key_slice)
        gt = np.asarray(case.gt[z], bool)
        ys, xs = np.nonzero(gt)
        y0, x0 = int(round(ys.mean())) - size // 2, int(round(xs.mean())) - size // 2
        img = crop2d(np.asarray(case.volume_hu[z], np.float32), y0, x0, size, fill=AIR_HU)
        expert = crop2d(gt, y0, x0, size, fill=False)
        sp = (float(case.spacing_zyx[1]), float(case.spacing_zyx[2]))
        ratings = dict(case.meta.get("ratings") or {})
        _VIEWS[key] = ExampleView(
            case.case_id,
            img,
            expert,
            sp,
            planned_difficulty(case.meta, case.diameter_mm),
            float(ratings.get("subtlety", 3.0)),
            example_content(img, expert, sp),
        )
    return _VIEWS[key]


# ---- the teacher -------------------------------------------------------------------------------
class Teacher:
    """Shows one person the examples of a :class:`FeedbackDesign` from a teaching file.

    Args:
        design: the arm's design.
        cases: the teaching file (:class:`~hiseg_sim.data.case.Case` objects).
        size: the view's side, pixels (the environment's viewport).
        seed: the episode's seed (the perception draws on the examples come from it).
    """

    def __init__(self, design: FeedbackDesign, cases, size: int, seed: int) -> None:
        self.design = design
        self.cases = list(cases)
        self.size = int(size)
        self.seed = int(seed)
        self.shown: list[dict] = []

    def views(self) -> list[ExampleView]:
        return [example_view(c, self.size) for c in self.cases]

    def order(self, how: str) -> list[ExampleView]:
        """The teaching file in a planned order (ties by case id)."""
        v = self.views()
        if how == "easy_first":
            return sorted(v, key=lambda e: (e.difficulty, e.case_id))
        if how == "hardest_first":
            return sorted(v, key=lambda e: (-e.difficulty, e.case_id))
        return sorted(v, key=lambda e: (text_key(e.case_id), e.case_id))  # mixed: unrelated to difficulty

    @staticmethod
    def _next(candidates: list[ExampleView], seen: list[str]) -> ExampleView:
        """The first of ``candidates`` seen least often (unseen first)."""
        return min(candidates, key=lambda e: seen.count(e.case_id))

    def by_kind(self, kind: str, seen: list[str]) -> ExampleView:
        """The example least seen that shows ``kind`` most (edge: the hardest; wrong spot: the most subtle)."""
        v = self.views()
        if kind == "edge":
            score = {e.case_id: e.difficulty for e in v}
        elif kind == "wrong_spot":
            score = {e.case_id: -e.subtlety for e in v}
        else:
            score = {e.case_id: e.content[kind] for e in v}
        ranked = sorted(v, key=lambda e: (seen.count(e.case_id), -score[e.case_id], e.case_id))
        return ranked[0]

    def tutorial(self, person) -> list[ExampleView]:
        """The tutorial's examples, one kind of error after another."""
        seen = list(getattr(person, "examples_seen", []))
        out = []
        for i in range(self.design.tutorial):
            e = self.by_kind(TUTORIAL_KINDS[i % len(TUTORIAL_KINDS)], seen)
            out.append(e)
            seen.append(e.case_id)
        return out

    def choose(self, person, diagnosis: dict | None) -> ExampleView:
        """The teaching-file example to show after a case (``examples`` other than ``own``);
        ``diagnosis``: clarity per error kind the person's final mask showed (``targeted``)."""
        seen = list(getattr(person, "examples_seen", []))
        how = self.design.examples
        if how == "targeted":
            if diagnosis:
                kind = max(TUTORIAL_KINDS, key=lambda k: diagnosis.get(k, 0.0))
                if diagnosis.get(kind, 0.0) >= TARGET_MIN_CLARITY:
                    return self.by_kind(kind, seen)
            how = "mixed"
        return self._next(self.order(how), seen)

    def show(self, person, view: ExampleView, uninformative: bool = False) -> dict:
        """Show ``view`` to ``person``: their intent on it from their perception step, then they study it."""
        rng = keyed_rng(self.seed, text_key(view.case_id), _EXAMPLE_STREAM)
        intent = intended_mask(
            view.expert,
            view.spacing_yx,
            person.perception_params(),
            rng,
            image_hu=view.image,
            difficulty_z=case_difficulty(key=view.case_id),
        )
        shown = uninformative_mask(view.expert) if uninformative else view.expert
        lessons = person.study_example(view.image, intent, shown, view.spacing_yx, example_id=view.case_id)
        rec = {"example": view.case_id, **lesson_summary(lessons)}
        self.shown.append(rec)
        return rec


def diagnose(image: np.ndarray, final_mask: np.ndarray, expert: np.ndarray, spacing_yx) -> dict:
    """What error the person's final mask shows against the expert's (the teacher's reading, with
    the default thresholds): clarity per kind of :data:`TUTORIAL_KINDS`."""
    les = read_example(image, final_mask, expert, spacing_yx, PerceptionParams())
    return {k: float(getattr(les, k)) for k in TUTORIAL_KINDS}


def lesson_summary(lessons) -> dict:
    """A :class:`~hiseg_sim.annotators.behaviour.examples.Lessons` as a flat dict of rounded numbers."""
    d = lessons.to_dict()
    d.pop("areas_mm2", None)
    return {k: round(float(v), 4) for k, v in d.items()}
