"""One episode → its rows: the default episode function and what the runner adds to every episode.

The runner calls an *episode function* ``fn(env, annotator, *, case_id, seed, feedback)`` that
returns an object with ``trace`` (one dict per action, the schema of :mod:`hiseg_sim.env.trace`)
and ``summary`` (one dict), or a ``(trace, summary)`` pair. The default,
:func:`harness_episode`, is :func:`hiseg_sim.annotators.harness.run_episode`.

After the episode the runner reads the env's final mask (:func:`final_mask_record`) and adds
what the analysis needs and the harness does not give: HD95 and NSD against the reference, and
the mask itself (its bounding-box crop, bit-packed, in volume coordinates), so crowd fusion
can be done afterwards without re-running anything.
"""

from __future__ import annotations

import numpy as np

from hiseg_sim import metrics
from hiseg_sim.annotators.base import Annotator, DelegatingAnnotator, Feedback
from hiseg_sim.annotators.behaviour.examples import key_slice_of
from hiseg_sim.annotators.behaviour.learning import SEMANTIC_PARAMS
from hiseg_sim.annotators.behaviour.teacher import (
    FeedbackDesign,
    Teacher,
    diagnose,
    lesson_summary,
    uninformative_mask,
)
from hiseg_sim.codec import jsonable, pack_mask
from hiseg_sim.env.viewport import AIR_HU, crop2d

__all__ = ["harness_episode", "final_mask_record", "case_record", "trace_rows", "NSD_TOLERANCE_MM"]

#: tolerance of the NSD column ``nsd`` (mm): about one pixel of the default cohort (0.5–0.9 mm)
NSD_TOLERANCE_MM = 1.0


def harness_episode(env, annotator, *, case_id: str, seed: int, feedback: str = "none"):
    """The default episode function: :func:`hiseg_sim.annotators.harness.run_episode`, with the
    teacher of the arm's training design.

    ``feedback`` is the arm's design as text
    (:class:`~hiseg_sim.annotators.behaviour.teacher.FeedbackDesign`): its mode is ``"none"``
    (``end_case(None)``), ``"score"`` (a teacher shows the Dice the env scored and the seconds:
    the harness's ``feedback=True``), ``"worked_example"`` (the same, plus a worked example) or
    ``"worked_example_uninformative"`` (the score, plus a disc of the example's area centred in the
    view); the worked example is the reference mask of the case in the viewport
    (``Feedback.expert_mask``), or with ``examples`` other than ``own`` one of the env's cases
    chosen by the teacher. Feedback follows every ``every``-th case of the person (counted by the
    annotator's ``cases_done``), and a ``tutorial`` of worked examples comes before their first.
    A design that ever teaches adds ``examples_shown`` (per example: its case and what it showed,
    :class:`~hiseg_sim.annotators.behaviour.examples.Lessons`), ``tutorial_seconds`` and
    ``teaching_seconds`` (the time spent on the examples before and after the case) and
    ``perception_after`` (the person's perception parameters after the case's feedback) to the
    summary.
    """
    from hiseg_sim.annotators.harness import run_episode

    design = FeedbackDesign.parse(feedback)
    if not design.teaches:
        return run_episode(env, annotator, case_id=case_id, seed=seed, feedback=False)
    u = env.unwrapped
    person = annotator
    learns = callable(getattr(person, "study_example", None))  # robots and policies are shown nothing to study
    teacher = Teacher(design, u.cases, u.size, seed)
    if learns and design.tutorial and getattr(person, "cases_done", 0) == 0:
        for view in teacher.tutorial(person):
            teacher.show(person, view, uninformative=design.mode == "worked_example_uninformative")
    n_tutorial = len(teacher.shown)
    after = design.after(getattr(person, "cases_done", 0))
    own = after and design.shows_examples and design.examples == "own"
    wrapped = _WorkedExampleTeacher(annotator, env, design.mode == "worked_example_uninformative") if own else annotator
    res = run_episode(env, wrapped, case_id=case_id, seed=seed, feedback=after)
    if own and learns:
        teacher.shown.append({"example": case_id, **wrapped.lessons})
    if after and learns and design.shows_examples and design.examples != "own":
        diagnosis = _diagnosis(env) if design.examples == "targeted" else None
        teacher.show(
            person, teacher.choose(person, diagnosis), uninformative=design.mode == "worked_example_uninformative"
        )
    per_example = float(getattr(person, "seconds_per_example", 0.0))
    res.summary["examples_shown"] = teacher.shown
    res.summary["tutorial_seconds"] = n_tutorial * per_example
    res.summary["teaching_seconds"] = (len(teacher.shown) - n_tutorial) * per_example
    if learns:
        res.summary["perception_after"] = _perception_record(person)
    return res


def _diagnosis(env) -> dict:
    """What the teacher sees in the person's final mask against the reference, on the largest slice."""
    u = env.unwrapped
    ref = np.asarray(u.scoring_reference(), bool)
    z = key_slice_of(ref)
    vp = u.viewport
    image = crop2d(np.asarray(u.case.volume_hu[vp.z0 + z], np.float32), vp.y0, vp.x0, u.size, fill=AIR_HU)
    return diagnose(image, np.asarray(u.slab_masks()[z], bool), ref[z], tuple(u.case.spacing_zyx[1:]))


def _perception_record(person) -> dict:
    spec = getattr(person, "perception_spec", None)
    if spec is None:
        return {}
    return {k: round(float(getattr(spec, k)), 5) for k in ("edge_sd_scale", "bias_mm", *SEMANTIC_PARAMS.values())}


class _WorkedExampleTeacher(DelegatingAnnotator):
    """The annotator, with the scoring reference (or, for the control, a disc of its area centred
    in the view) added to the feedback at ``end_case``."""

    def __init__(self, inner: Annotator, env, uninformative: bool = False) -> None:
        super().__init__(inner)
        self._env = env
        self._uninformative = uninformative
        self.lessons: dict = {}

    def end_case(self, feedback) -> None:
        u = self._env.unwrapped
        ref = u.scoring_reference()
        expert = ref if u.three_d else ref[0]
        if self._uninformative:
            expert = uninformative_mask(expert)
        fb = Feedback(
            dice=getattr(feedback, "dice", None), seconds=getattr(feedback, "seconds", None), expert_mask=expert
        )
        self.inner.end_case(fb)
        last = getattr(self.inner, "last_lessons", None)
        self.lessons = {} if last is None else lesson_summary(last)


def final_mask_record(env, case) -> dict:
    """The final mask of the episode just run on ``env`` (any wrapper), scored against ``case.gt``.

    The reference is what the env scores against: the whole slices of the viewport's slab (in
    2-D the key slice), ground truth outside the viewport counting as missed. Returns row fields:
    ``dice_check`` (equals the env's final Dice), ``hd95`` (mm; NaN if either mask is empty),
    ``nsd`` (at :data:`NSD_TOLERANCE_MM`), ``mask_*`` (:func:`pack_mask`) and ``score_z0`` /
    ``score_nz`` (the slab scored).
    """
    u = env.unwrapped
    vp = u.viewport
    slab = u.slab_masks()
    n, S = slab.shape[0], slab.shape[1]
    Z, Y, X = case.shape
    ys, ye = max(vp.y0, 0), min(vp.y0 + S, Y)
    xs, xe = max(vp.x0, 0), min(vp.x0 + S, X)
    pred = np.zeros((n, Y, X), bool)
    pred[:, ys:ye, xs:xe] = slab[:, ys - vp.y0 : ye - vp.y0, xs - vp.x0 : xe - vp.x0]
    ref = case.gt[vp.z0 : vp.z0 + n]
    if n == 1:
        p2, r2, sp = pred[0], ref[0], case.spacing_zyx[1:]
    else:
        p2, r2, sp = pred, ref, case.spacing_zyx
    rec = {
        "dice_check": metrics.dice(p2, r2),
        "hd95": metrics.hd95(p2, r2, sp),
        "nsd": metrics.nsd(p2, r2, NSD_TOLERANCE_MM, sp),
        "score_z0": int(vp.z0),
        "score_nz": int(n),
    }
    rec.update(pack_mask(pred, (vp.z0, 0, 0)))
    return rec


def case_record(case) -> dict:
    """One row per case: its metadata, key slice, spacing, shape and ground truth (packed, ``gt_*``)."""
    from hiseg_sim.experiments.cases import case_meta

    row = case_meta(case)
    row.update(
        key_slice=int(case.key_slice),
        spacing_z=float(case.spacing_zyx[0]),
        spacing_y=float(case.spacing_zyx[1]),
        spacing_x=float(case.spacing_zyx[2]),
        shape_z=int(case.shape[0]),
        shape_y=int(case.shape[1]),
        shape_x=int(case.shape[2]),
    )
    row.update(pack_mask(case.gt, (0, 0, 0), prefix="gt"))
    return row


# ---- rows -------------------------------------------------------------------------------------
_TRACE_DROP = {"env", "case", "annotator", "episode", "seed", "viewport", "start_slice"}


def trace_rows(trace: list[dict], keys: dict) -> list[dict]:
    """Per-action rows: ``keys`` (the episode's identity) + each trace record, flattened.

    Adds ``kind`` (the action's kind), ``is_prompt`` (the action reached the model) and
    ``prompt_index`` (prompts so far, this one included). Nested fields become JSON text.
    """
    rows = []
    n_prompts = 0
    for i, rec in enumerate(trace):
        row = dict(keys)
        act = rec.get("action")
        kind = act.get("kind") if isinstance(act, dict) else (type(act).__name__ if act is not None else None)
        is_prompt = rec.get("prompt") is not None
        n_prompts += int(is_prompt)
        row.update(
            step=int(rec.get("step", i + 1)),
            kind=None if kind is None else str(kind),
            is_prompt=is_prompt,
            prompt_index=n_prompts,
        )
        for k, v in rec.items():
            if k in _TRACE_DROP or k in row:
                continue
            row[k] = jsonable(v)
        rows.append(row)
    return rows
