"""A simulated person prompting a Segment Anything model: perception → strategy → execution → judgement → stop.

:class:`BehaviourAnnotator` puts the parts together for one annotator group
(a :class:`~hiseg_sim.annotators.behaviour.profiles.Profile`):

1. *perception* happens before the episode, in the harness
   (:func:`hiseg_sim.annotators.harness.make_knowledge`): the annotator exposes
   :meth:`~BehaviourAnnotator.perception_params` and receives its intent in
   :class:`~hiseg_sim.annotators.base.Knowledge` (never the ground truth);
2. *strategy* (:mod:`~hiseg_sim.annotators.behaviour.strategy`): opening, then corrections, chosen by the
   values the person holds for each prompt type;
3. *execution* (:mod:`~hiseg_sim.annotators.behaviour.execution`): aim, motor noise, box looseness;
4. *judgement* (:mod:`~hiseg_sim.annotators.behaviour.judgement`): after each prompt the mask is judged
   against the intent; a prompt that made it look worse is undone; the person accepts when it
   looks good enough, or gives up when patience or the time budget run out, or when
   ``stall_limit`` prompts in a row did not help *and* every kind of prompt has been tried on the
   slice (when stuck, a person first tries a kind of prompt they have not tried yet: that is how a
   click-first novice whose clicks produce nothing comes to draw a box);
5. *time*: the env charges each action with the group's :class:`~hiseg_sim.timing.TimeModel`
   (:meth:`~BehaviourAnnotator.time_model_for`, passed by the harness as ``options["time_model"]``),
   which gets faster with the cases the person has done (the power law of practice,
   :func:`~hiseg_sim.annotators.behaviour.execution.time_model_for`);
6. *learning* (:mod:`~hiseg_sim.annotators.behaviour.learning`): each judged prompt updates the value of
   its type; the values stay with the person from case to case; :meth:`end_case` with a teacher's
   :class:`~hiseg_sim.annotators.base.Feedback` updates the types that made the final mask, and a
   worked example (``Feedback.expert_mask``, or one a teacher shows through
   :meth:`~BehaviourAnnotator.study_example`) is compared with the person's own intent on the same
   image: the errors it shows move their perception
   (:func:`~hiseg_sim.annotators.behaviour.learning.learn_from_example`).

Decisions read only the observation (the mask shown, the seconds spent), the env's flag for a
refused action, and the :class:`~hiseg_sim.annotators.base.Knowledge` (image, pixel size,
intent); ``reads_ground_truth`` is False and a test checks this module never touches the case or
the ground truth.

In the 3-D environment the person works as people do in volume tools
(:mod:`~hiseg_sim.annotators.behaviour.volume`): before starting they judge the extent from the
image (:mod:`~hiseg_sim.annotators.behaviour.extent`: the key slice where the nodule looks
largest, and the first and last slice that show it, with perception noise fitted to the LIDC
readers' disagreement), never from the slices their intent covers; then they scroll to the key
slice, prompt it as in 2-D, ``Propagate`` up slice by slice to the last slice, scroll one past it
to check the nodule has ended, scroll back, propagate down to the first slice and check past it,
scroll through the extent once to review, and accept. A propagated slice that looks right
(:func:`~hiseg_sim.annotators.behaviour.volume.slice_looks_right`) is kept; one that leaks or
shrinks is corrected as in 2-D, with the slice's own patience and time budget
(``time_budget_s`` counts the seconds spent on that slice); a slice they cannot fix is left as it
is. They give up on the whole (accept what is there) only when the seconds spent reach
``time_budget_s`` per slice of their extent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hiseg_sim.annotators.base import Annotator, Feedback, Knowledge
from hiseg_sim.annotators.behaviour import execution as X
from hiseg_sim.annotators.behaviour import judgement as J
from hiseg_sim.annotators.behaviour import strategy as S
from hiseg_sim.annotators.behaviour.examples import Lessons, key_slice_of, read_example
from hiseg_sim.annotators.behaviour.learning import PROMPT_TYPES, PromptValues, learn_from_example, relative_gain
from hiseg_sim.annotators.behaviour.profiles import Profile
from hiseg_sim.annotators.behaviour.volume import VolumePlan, plan_volume, slice_looks_right
from hiseg_sim.env.actions import Accept, NextSlice, PrevSlice, Propagate, Undo
from hiseg_sim.timing import TimeModel

__all__ = ["BehaviourAnnotator"]

#: assumption: the 3-D env is registered with 200 steps; the review scroll is skipped when it would
#: take the episode past this many, so the person accepts before the step limit.
REVIEW_STEP_CAP = 190

#: ``info["invalid_action"]`` codes after which nothing changed (the prompt did not happen).
_NOOP = frozenset(
    {
        "zero_area_box",
        "prompt_rejected",
        "nothing_to_undo",
        "nothing_to_accept",
        "no_slice_there",
        "nothing_to_propagate",
    }
)


@dataclass
class _Slice:
    """The person's account of one slice: the prompts standing (type, perceived quality before it)."""

    stack: list = field(default_factory=list)
    q: float = 0.0
    n_actions: int = 0
    margin_delta_mm: float = 0.0
    stalled: int = 0
    best_q: float = 0.0
    tried: set = field(default_factory=set)
    done: bool = False
    gave_up: bool = False

    @property
    def has_box(self) -> bool:
        return any(k in ("box", "rebox", "propagate") for k, _ in self.stack)


class BehaviourAnnotator(Annotator):
    """A simulated annotator of one group; see the module docstring.

    Args:
        profile: the group's parameters.
        name: the name written in traces (default: the profile's).
    """

    reads_ground_truth = False

    def __init__(self, profile: Profile, name: str | None = None):
        self.profile = profile
        self.name = name or profile.name
        self.values = PromptValues(profile.strategy.priors())
        self.cases_done = 0
        self.perception_spec = profile.perception  # moves with what worked examples show
        self.examples_seen: list[str] = []  # the cases whose worked example the person has studied
        self.last_lessons: Lessons | None = None  # what the last worked example showed them
        self.history: list[dict] = []
        self.perceived_quality: float | None = None
        self._k: Knowledge | None = None
        self._slices: list[_Slice] = []
        self._opening: str | None = None
        self._values_start = self.values.snapshot()
        self._plan: VolumePlan | None = None  # 3-D: the extent and outlines the person set out to do

    # ---- hooks the harness calls ------------------------------------------------------------
    def perception_params(self):
        """This person's :class:`~hiseg_sim.annotators.behaviour.perception.PerceptionParams` (the perception
        step): the group's, moved by the worked examples studied so far."""
        return self.perception_spec.params()

    def time_model_for(self, spacing_yx, base: TimeModel | None = None) -> TimeModel:
        """The env's time model for this person on a case with this pixel size: the group's, on the
        person's next case with the tool (faster with the cases done)."""
        tm = X.time_model_for(
            self.profile.execution, self.profile.time, spacing_yx, base, practice_n=self.cases_done + 1
        )
        return tm.scaled(inspect_s=self.profile.volume.inspect_slice_s)

    @property
    def seconds_per_example(self) -> float:
        """Seconds the person spends looking at one worked example."""
        return self.profile.time.example_study_s

    def study_example(
        self, image_hu: np.ndarray, intent: np.ndarray, example: np.ndarray, spacing_yx, example_id: str | None = None
    ) -> Lessons:
        """Compare a worked example with what the person meant to outline on the same image, and
        learn from what it shows (:func:`~hiseg_sim.annotators.behaviour.examples.read_example`,
        :func:`~hiseg_sim.annotators.behaviour.learning.learn_from_example`).

        Args:
            image_hu: the image, ``(H, W)`` HU.
            intent: the person's own intent on it, ``bool`` ``(H, W)``.
            example: the mask the teacher shows, ``bool`` ``(H, W)``.
            spacing_yx: pixel size, mm.
            example_id: the example's case, remembered in ``examples_seen``.
        """
        lessons = read_example(image_hu, intent, example, spacing_yx, self.perception_params())
        self.perception_spec = learn_from_example(self.perception_spec, lessons, self.profile.learning)
        self.last_lessons = lessons
        if example_id is not None:
            self.examples_seen.append(str(example_id))
        return lessons

    # ---- protocol ---------------------------------------------------------------------------
    def begin_case(self, knowledge: Knowledge, rng: np.random.Generator) -> None:
        if knowledge.intent is None:
            raise ValueError(
                f"{self.name}: a behaviour model needs Knowledge.intent (made by the harness's "
                "perception step, hiseg_sim.annotators.harness.make_knowledge)"
            )
        intent = np.asarray(knowledge.intent, bool)
        self._k = knowledge
        self._intent = intent if knowledge.three_d else intent[None]
        self._spacing = tuple(float(s) for s in knowledge.spacing_mm[-2:])
        self._size = int(self._intent.shape[-1])
        self.rng = rng
        n = self._intent.shape[0]
        self._slices = [_Slice() for _ in range(n)]
        todo = np.flatnonzero(self._intent.any(axis=(1, 2)))
        self._todo = set(int(z) for z in todo) | {int(knowledge.start_slice)}
        self._n_planned = max(1, len(self._todo))  # the time budget is per slice the person means to do
        self._direction = 1
        self._pending: tuple | None = None  # (slice, type, q_before) of a prompt awaiting judgement
        self._undoing: tuple | None = None  # (slice, q to restore)
        self._queue: list[str] = []
        self._n_actions = 0
        self._gave_up = False
        self._opening: str | None = None
        self._values_start = self.values.snapshot()
        self._kinds_used: list[str] = []
        self.perceived_quality = None
        self._target = self._intent  # what the person means to outline on each slice
        self._plan = None
        if knowledge.three_d:
            self._plan = plan_volume(
                np.asarray(knowledge.image_hu),
                intent,
                self._spacing,
                int(knowledge.start_slice),
                self.profile.volume,
                rng,
            )
            self._target = self._plan.target
            self._n_planned = self._plan.extent.n_slices
            self._phase = "seek"
            self._slice_t0: dict[int, float] = {}

    def act(self, obs: dict, info: dict):
        if self._k is None:
            raise RuntimeError("call reset(knowledge, rng) before act()")
        z = int(obs.get("slice", 0)) if self._k.three_d else 0
        mask = np.asarray(obs["mask"][0]) > 127
        seconds = float(np.asarray(obs["seconds"]).reshape(-1)[0])
        code = info.get("invalid_action", "")
        action = self._react(z, mask, code)
        if action is None:
            action = self._next3d(z, mask, seconds) if self._k.three_d else self._next(z, mask, seconds)
        self._n_actions += 1
        return action

    def end_case(self, feedback: Feedback | None) -> None:
        if feedback is not None and feedback.dice is not None:
            standing = {k for st in self._slices for k, _ in st.stack if k in PROMPT_TYPES}
            self.values.learn_from_feedback(standing, feedback.dice, self.profile.learning.feedback_rate)
        if feedback is not None and feedback.expert_mask is not None and self._k is not None:
            example = np.asarray(feedback.expert_mask, bool)
            z = key_slice_of(example) if self._k.three_d else 0
            image = np.asarray(self._k.image_hu)
            self.study_example(
                image[z] if self._k.three_d else image,
                self._intent[z],
                example[z] if self._k.three_d else example,
                self._spacing,
                example_id=self._k.case_id,
            )
        self.history.append(
            {
                "case": self._k.case_id if self._k else None,
                "opening": self._opening,
                "values_before": self._values_start,
                "values_after": self.values.snapshot(),
                "feedback_dice": None if feedback is None else feedback.dice,
            }
        )
        self.cases_done += 1

    def episode_info(self) -> dict:
        kinds = self._kinds_used
        out = {
            "gave_up": self._gave_up,
            "opening": self._opening,
            "prompt_types": {k: kinds.count(k) for k in sorted(set(kinds))},
            "values_before": self._values_start,
            "values_after": self.values.snapshot(),
        }
        if self._plan is not None:  # 3-D: the extent the person judged (slab indices)
            out.update(
                extent_first=self._plan.first,
                extent_last=self._plan.last,
                key_slice=self._plan.key,
                slices_left_imperfect=sum(st.gave_up for st in self._slices),
            )
        return out

    # ---- judging the last action ------------------------------------------------------------
    def _react(self, z: int, mask: np.ndarray, code: str):
        """Judge what the last action did; may return an Undo."""
        if self._undoing is not None:
            zu, q_restore = self._undoing
            self._undoing = None
            if code not in _NOOP:
                st = self._slices[zu]
                st.stack.pop()
                st.q = q_restore
        if self._pending is not None:
            zp, kind, q_before = self._pending
            self._pending = None
            st = self._slices[zp]
            if code in _NOOP:
                st.stack.pop()
            else:
                q = J.perceived_quality(mask, self._target[zp], self.profile.judgement.quality_sd, self.rng)
                st.q = q
                if kind != "propagate":
                    st.stalled = 0 if q > st.best_q + self.profile.judgement.undo_margin else st.stalled + 1
                st.best_q = max(st.best_q, q)
                undo = not self._queue and J.looks_worse(q_before, q, self.profile.judgement)
                if kind in PROMPT_TYPES:  # what the prompt left them with: nothing, if they take it back
                    gain = 0.0 if undo else relative_gain(q_before, q)
                    self.values.update(kind, gain, self.profile.learning.learning_rate)
                if undo:
                    self._undoing = (zp, q_before)
                    self.perceived_quality = q
                    st.n_actions += 1
                    return Undo()
        st = self._slices[z]
        self.perceived_quality = st.q if st.stack else None
        return None

    # ---- choosing the next action -----------------------------------------------------------
    def _next(self, z: int, mask: np.ndarray, seconds: float):
        st = self._slices[z]
        jp = self.profile.judgement
        if self._queue:
            return self._prompt(z, self._queue.pop(0), mask)
        if seconds >= jp.time_budget_s * self._n_planned and any(s.stack for s in self._slices):
            self._gave_up = True
            return Accept()
        errors = None
        if st.stack and not st.done:
            errors = J.perceived_errors(mask, self._target[z], self._spacing, jp.min_error_mm)
            options = S.available_corrections(errors, st.has_box)
            # stuck: is there a kind of prompt not tried yet here? (then try it before giving up)
            untried = [k for k in options if k not in st.tried] if st.stalled >= jp.stall_limit else []
            best = max(self.values[k] for k in options)
            verdict = J.decide(st.q, st.n_actions, seconds, jp, 0 if untried else st.stalled, None if untried else best)
            if verdict == "go_on" and untried:
                st.stalled = 0  # trial and error: try something different before giving up
                return self._prompt(z, untried[0], mask, errors)
            if verdict != "go_on":
                st.done = True
                st.gave_up = verdict == "give_up"
                self._gave_up |= st.gave_up
        if not st.stack and not self._target[z].any():
            st.done = True  # nothing intended on this slice (3-D): move on
        if st.done or (z not in self._todo and st.stack):
            return self._move_on(z, mask)
        if not st.stack:
            return self._open(z, mask)
        if errors is None:
            errors = J.perceived_errors(mask, self._target[z], self._spacing, jp.min_error_mm)
        kind = S.choose_correction(self.values, self.profile.strategy, errors, st.has_box, self.rng)
        return self._prompt(z, kind, mask, errors)

    def _open(self, z: int, mask: np.ndarray):
        """The first prompt of an opening on the empty slice ``z``; the rest of it is queued."""
        opening = S.choose_opening(self.values, self.profile.strategy, self.rng)
        if self._opening is None:
            self._opening = opening
        kinds = list(S.OPENINGS[opening])
        self._queue = kinds[1:]
        return self._prompt(z, kinds[0], mask)

    # ---- 3-D: the volume workflow (see the module docstring) -----------------------------------
    def _next3d(self, z: int, mask: np.ndarray, seconds: float):
        plan, jp = self._plan, self.profile.judgement
        if self._queue:
            return self._prompt(z, self._queue.pop(0), mask)
        if seconds >= jp.time_budget_s * self._n_planned and any(s.stack for s in self._slices):
            self._gave_up = True
            return Accept()
        if self._phase == "seek":
            if z != plan.key:
                return NextSlice() if plan.key > z else PrevSlice()
            self._phase = "up"
        if self._phase in ("up", "down") and plan.first <= z <= plan.last:
            action = self._work_slice(z, mask, seconds)
            if action is not None:
                return action
        return self._advance(z, mask)

    def _work_slice(self, z: int, mask: np.ndarray, seconds: float):
        """The next prompt on slice ``z`` of the extent, or None when the slice is done."""
        st, jp, vp = self._slices[z], self.profile.judgement, self.profile.volume
        if st.done:
            return None
        t0 = self._slice_t0.setdefault(z, seconds)
        if not st.stack:
            return self._open(z, mask)
        target = self._target[z]
        if slice_looks_right(mask, target, st.q, self._spacing, vp, jp.accept_threshold):
            st.done = True
            return None
        errors = J.perceived_errors(mask, target, self._spacing, jp.min_error_mm)
        options = S.available_corrections(errors, st.has_box)
        untried = [k for k in options if k not in st.tried] if st.stalled >= jp.stall_limit else []
        best = max(self.values[k] for k in options)
        stalled = 0 if untried else st.stalled
        verdict = J.decide(st.q, st.n_actions, seconds - t0, jp, stalled, None if untried else best)
        if verdict == "go_on" and untried:
            st.stalled = 0
            return self._prompt(z, untried[0], mask, errors)
        if verdict != "go_on":  # accepted as it looks, or left as it is: on to the next slice
            st.done = True
            st.gave_up = verdict == "give_up"
            return None
        kind = S.choose_correction(self.values, self.profile.strategy, errors, st.has_box, self.rng)
        return self._prompt(z, kind, mask, errors)

    def _advance(self, z: int, mask: np.ndarray):
        """Slice ``z`` is done: the next move of the pass (up, check, back, down, check, review)."""
        plan = self._plan
        n = len(self._slices)
        if self._phase == "up":
            if z < plan.last:
                return self._step_to(z, 1, mask)
            self._phase = "back"
            if z + 1 < n:
                return NextSlice()  # one slice past the end: has it ended?
        if self._phase == "back":
            if z > plan.key:
                return PrevSlice()
            self._phase = "down"
        if self._phase == "down":
            if z > plan.first:
                return self._step_to(z, -1, mask)
            self._phase = "review"
            if z - 1 >= 0:
                return PrevSlice()
        if self._phase == "review":
            review = self.profile.volume.review and self._n_actions + (plan.last - z) < REVIEW_STEP_CAP
            if review and z < plan.last:
                return NextSlice()
        return Accept()

    def _step_to(self, z: int, step: int, mask: np.ndarray):
        """Onto slice ``z + step``: propagate this slice's mask there when it has one and the
        target slice has nothing yet (the tool's way), else scroll."""
        t = z + step
        if mask.any() and not self._slices[t].stack:
            self._slices[t].stack.append(("propagate", 0.0))
            self._slices[t].n_actions += 1
            self._pending = (t, "propagate", 0.0)
            return Propagate(step)
        return NextSlice() if step == 1 else PrevSlice()

    def _move_on(self, z: int, mask: np.ndarray):
        """The slice is done: go to the next intended slice, or accept the whole."""
        self._todo.discard(z)
        left = sorted(t for t in self._todo if not self._slices[t].done)
        if not left:
            return Accept()
        ahead = [t for t in left if (t - z) * self._direction > 0]
        if not ahead:
            self._direction = -self._direction
            ahead = left
        target = min(ahead, key=lambda t: abs(t - z))
        step = 1 if target > z else -1
        if target == z + step and mask.any() and not self._slices[target].stack:
            self._slices[target].stack.append(("propagate", 0.0))
            self._slices[target].n_actions += 1
            self._pending = (target, "propagate", 0.0)
            return Propagate(step)
        return NextSlice() if step == 1 else PrevSlice()

    def _prompt(self, z: int, kind: str, mask: np.ndarray, errors: J.PerceivedErrors | None = None):
        """Execute a prompt of ``kind`` on slice ``z`` and remember it for judgement."""
        st = self._slices[z]
        ex, sp = self.profile.execution, self._spacing
        intent = self._target[z]
        if kind == "point":
            if errors is None or not (errors.missing.any() or errors.leak.any()):
                region, positive = intent, True  # the centre click of an opening
            else:
                region, positive = S.correction_click(errors)
            aim = X.aim_point(region, sp, self.rng, ex.centre_fraction)
            action = X.place_point(aim, positive, ex, sp, self._size, self.rng)
        elif kind in ("box", "rebox"):
            if kind == "rebox":
                if errors is None:
                    errors = J.perceived_errors(mask, intent, sp, self.profile.judgement.min_error_mm)
                st.margin_delta_mm += S.rebox_step_mm(errors, self.profile.strategy)
            action = X.place_box(intent, ex, sp, self._size, self.rng, st.margin_delta_mm)
        else:  # pragma: no cover - the strategy offers nothing else
            raise ValueError(f"unknown prompt type {kind!r}")
        st.stack.append((kind, st.q))
        st.tried.add(kind)
        st.n_actions += 1
        self._pending = (z, kind, st.q)
        self._kinds_used.append(kind)
        return action
