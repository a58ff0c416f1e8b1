"""Learning from what a worked example shows: the comparison of intent and example, the perception
updates it drives, the uninformative control, and the teacher's training designs (stub segmenter)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import hiseg_sim  # noqa: F401
from hiseg_sim.annotators.base import Feedback, Knowledge
from hiseg_sim.annotators.behaviour.examples import Lessons, read_example
from hiseg_sim.annotators.behaviour.learning import LearningParams, learn_from_example
from hiseg_sim.annotators.behaviour.perception import PerceptionParams, intended_mask
from hiseg_sim.annotators.behaviour.profiles import PerceptionSpec
from hiseg_sim.annotators.behaviour.teacher import (
    FeedbackDesign,
    Teacher,
    example_view,
    planned_difficulty,
    uninformative_mask,
)
from hiseg_sim.annotators.harness import make_env
from hiseg_sim.annotators.registry import build_annotator
from hiseg_sim.experiments.episode import harness_episode
from hiseg_sim.experiments.spec import SpecError, spec_from_dict
from tests.env_support import EnvStubSegmenter
from tests.experiment_support import stub_spec_dict, synthetic_study_cases

pytestmark = pytest.mark.filterwarnings("ignore:agents/calibration/expert_perception.json is missing")

S, SP = 96, (0.7, 0.7)
LUNG, SOLID, GGO, WALL = -870.0, 30.0, -600.0, 40.0


def scene(*, vessel=False, rim=False, wall=False, seed=0, centre=(38, 60), radius=7):
    """A synthetic lung view: a solid nodule off the view's centre (as a noisy detection puts it),
    optionally with an attached vessel, a ground-glass rim, or lying against the chest wall.
    Returns the image (HU, smoothed like a CT point spread, with noise) and the expert's mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:S, :S]
    r2 = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2
    img = np.full((S, S), LUNG, np.float32)
    nodule = r2 <= radius**2
    if rim:
        nodule = r2 <= (radius + 4) ** 2
        img[nodule] = GGO
        img[r2 <= radius**2] = SOLID
    else:
        img[nodule] = SOLID
    if vessel:
        img[(np.abs(yy - centre[0]) <= 1) & (xx > centre[1]) & (xx <= centre[1] + radius + 16)] = WALL
    if wall:
        img[:, centre[1] + radius + 1 :] = WALL
    img = ndimage.gaussian_filter(img, 0.6) + rng.normal(0, 25, (S, S)).astype(np.float32)
    return img, nodule


def person(**overrides):
    return build_annotator("non_medical", **overrides)


# ---- the comparison ------------------------------------------------------------------------------
def test_reading_an_example_never_names_the_ground_truth():
    """The person's side of a worked example passes the decision modules' static check: it sees the
    image, the intent and the example shown, nothing of the case."""
    from hiseg_sim.annotators.behaviour import examples
    from tests.test_annotators_nogt import test_decision_code_never_names_the_ground_truth as check

    check(examples)


def test_each_kind_of_error_is_read_from_the_image_the_intent_and_the_example():
    p = PerceptionParams()
    img, expert = scene(vessel=True)
    with_vessel = expert | (
        (np.abs(np.mgrid[:S, :S][0] - 38) <= 1) & (np.mgrid[:S, :S][1] > 60) & (np.mgrid[:S, :S][1] <= 80)
    )
    les = read_example(img, with_vessel, expert, SP, p)
    assert les.credibility == 1.0 and les.vessel > 0.9 and les.ggo_rim == 0 and les.pleura == 0
    assert read_example(img, expert, expert, SP, p).vessel == 0  # no error made: nothing shown

    img, expert = scene(rim=True)
    core = (np.mgrid[:S, :S][0] - 38) ** 2 + (np.mgrid[:S, :S][1] - 60) ** 2 <= 49
    les = read_example(img, core, expert, SP, p)
    assert les.ggo_rim > 0.9 and les.vessel == 0

    img, expert = scene(wall=True)
    leak = expert | (ndimage.binary_dilation(expert, iterations=4) & (np.mgrid[:S, :S][1] > 67))
    assert read_example(img, leak, expert, SP, p).pleura > 0.5

    img, expert = scene()
    wide, tight = ndimage.binary_dilation(expert, iterations=2), ndimage.binary_erosion(expert, iterations=2)
    assert read_example(img, wide, expert, SP, p).bias_mm > 0.5 > -0.5 > read_example(img, tight, expert, SP, p).bias_mm
    elsewhere = np.roll(expert, 30, axis=0)
    assert read_example(img, elsewhere, expert, SP, p).wrong_spot == 1.0


def test_an_outline_unrelated_to_the_image_is_not_credible():
    img, expert = scene(vessel=True)
    disc = uninformative_mask(expert)
    assert disc.sum() == expert.sum() and disc[S // 2, S // 2] and not (disc & expert).any()
    les = read_example(img, expert, disc, SP, PerceptionParams())
    assert read_example(img, expert, expert, SP, PerceptionParams()).credibility == 1.0
    assert les.credibility == 0.0
    spec = PerceptionSpec(edge_sd_scale=1.7, p_wrong_spot=0.1, p_include_vessel=0.5)
    assert learn_from_example(spec, les, LearningParams(perception_rate=0.5, semantic_rate=0.5)) == spec


def test_updates_follow_what_was_shown_and_how_clearly():
    spec = PerceptionSpec(edge_sd_scale=1.7, bias_mm=0.0, p_include_vessel=0.4, p_miss_ggo_rim=0.3)
    rates = LearningParams(perception_rate=0.2, semantic_rate=0.5)
    out = learn_from_example(spec, Lessons(credibility=1.0, vessel=1.0), rates)
    assert out.p_include_vessel == pytest.approx(0.2) and out.p_miss_ggo_rim == 0.3 and out.edge_sd_scale == 1.7
    half = learn_from_example(spec, Lessons(credibility=0.5, vessel=1.0), rates)
    assert half.p_include_vessel == pytest.approx(0.4 * (1 - 0.25))
    edge = learn_from_example(spec, Lessons(credibility=1.0, edge=1.0, bias_mm=0.5), rates)
    assert edge.edge_sd_scale == pytest.approx(1 + 0.7 * 0.8) and edge.bias_mm == pytest.approx(-0.1)
    assert learn_from_example(spec, Lessons(credibility=1.0), rates) == spec


# ---- the test: vessels ---------------------------------------------------------------------
def _inclusion_rate(a, n=30) -> float:
    """Share of ``n`` perception draws of ``a`` on a nodule with an attached vessel that take it in."""
    img, expert = scene(vessel=True, seed=99)
    hits = 0
    for k in range(n):
        intent = intended_mask(expert, SP, a.perception_params(), np.random.default_rng(1000 + k), image_hu=img)
        hits += int((intent & ~ndimage.binary_dilation(expert, iterations=2))[:, 70:].sum() > 5)
    return hits / n


def _train(a, *, vessels: bool, uninformative: bool, n: int = 8) -> None:
    """Show ``a`` ``n`` worked examples; their intent on each comes from their own perception step."""
    for k in range(n):
        img, expert = scene(vessel=vessels, seed=k, centre=(36 + k % 3, 58 + k % 4))
        intent = intended_mask(expert, SP, a.perception_params(), np.random.default_rng(k), image_hu=img)
        a.study_example(img, intent, uninformative_mask(expert) if uninformative else expert, SP)


def test_vessel_examples_teach_a_person_who_takes_vessels_in_and_the_control_teaches_nothing():
    shown_vessels, shown_plain = person(perception__p_include_vessel=0.9), person(perception__p_include_vessel=0.9)
    control_vessels, control_plain = person(perception__p_include_vessel=0.9), person(perception__p_include_vessel=0.9)
    before = _inclusion_rate(shown_vessels)
    _train(shown_vessels, vessels=True, uninformative=False)
    _train(shown_plain, vessels=False, uninformative=False)
    _train(control_vessels, vessels=True, uninformative=True)
    _train(control_plain, vessels=False, uninformative=True)
    p = {
        k: a.perception_spec.p_include_vessel
        for k, a in (("vessels", shown_vessels), ("plain", shown_plain), ("cv", control_vessels), ("cp", control_plain))
    }
    assert p["plain"] == 0.9  # examples of nodules without vessels show nothing about vessels
    assert p["vessels"] < 0.5 * p["plain"]
    after_vessels, after_plain = _inclusion_rate(shown_vessels), _inclusion_rate(shown_plain)
    assert after_vessels < 0.5 * after_plain and after_plain > 0.6 and before > 0.6, (
        before,
        after_vessels,
        after_plain,
    )
    untaught = person(perception__p_include_vessel=0.9).profile.perception
    assert control_vessels.perception_spec == control_plain.perception_spec == untaught


# ---- score-only feedback and the person's protocol -------------------------------------------------
def test_a_score_moves_prompt_values_not_perception_and_an_example_is_compared_with_the_intent():
    img, expert = scene(vessel=True)
    a = person(perception__p_include_vessel=1.0)
    intent = intended_mask(expert, SP, a.perception_params(), np.random.default_rng(0), image_hu=img)
    assert (intent & ~expert).sum() > 10  # they take the vessel in
    a.begin_case(Knowledge("c", img, SP, intent=intent), np.random.default_rng(0))
    a.act({"mask": np.zeros((1, S, S), np.uint8), "seconds": np.zeros(1, np.float32)}, {"invalid_action": ""})
    spec0 = a.perception_spec
    a.end_case(Feedback(dice=0.3))
    assert a.perception_spec == spec0 and a.values.snapshot() != a.values.priors
    a.end_case(Feedback(dice=0.3, expert_mask=expert))
    assert a.perception_spec.p_include_vessel < 0.6 and a.examples_seen == ["c"]


# ---- designs, the teacher, the spec -------------------------------------------------------------------
def test_feedback_designs_round_trip_and_bad_ones_are_refused():
    for d in (
        FeedbackDesign(),
        FeedbackDesign("worked_example", 5, "easy_first", 3),
        FeedbackDesign("none", tutorial=2),
    ):
        assert FeedbackDesign.parse(d.key()) == d
    assert FeedbackDesign("score").key() == "score"
    assert [FeedbackDesign("score", every=5).after(k) for k in range(10)] == [False] * 4 + [True] + [False] * 4 + [True]
    with pytest.raises(ValueError, match="examples = 'easy_first' needs a worked-example feedback"):
        FeedbackDesign("score", examples="easy_first")
    with pytest.raises(ValueError, match="cannot read"):
        FeedbackDesign.parse("score;sometimes")


@pytest.mark.parametrize(
    "arm, needle",
    [
        ({"feedback": "worked_example", "feedback_every": 0}, "feedback_every: must be an integer >= 1"),
        ({"feedback": "none", "feedback_every": 5}, 'feedback_every: needs a feedback other than "none"'),
        ({"feedback": "score", "examples": "easy_first"}, 'examples: needs feedback = "worked_example"'),
        ({"feedback": "worked_example", "examples": "easiest"}, "examples: must be one of own, easy_first"),
        ({"tutorial": -1}, "tutorial: must be an integer >= 0"),
    ],
)
def test_design_keys_are_validated_with_one_line(arm, needle):
    d = stub_spec_dict(design="sequence", length=3)
    d["annotators"][0].update(arm)
    with pytest.raises(SpecError) as err:
        spec_from_dict(d, "x.toml")
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)
    crossed = stub_spec_dict()
    crossed["annotators"][0].update(feedback="score", feedback_every=5)
    with pytest.raises(SpecError, match="only with \\[run\\] design"):
        spec_from_dict(crossed, "x.toml")


def test_the_spec_stores_the_design_and_keeps_plain_arms_as_they_were():
    d = stub_spec_dict(design="sequence", length=3)
    d["annotators"][0].update(feedback="worked_example", feedback_every=5, examples="targeted", tutorial=2)
    spec = spec_from_dict(d)
    assert spec.annotators[0].feedback == "worked_example;every=5;examples=targeted;tutorial=2"
    assert spec.annotators[1].feedback == "none"


def test_difficulty_comes_from_what_a_planner_knows():
    easy = planned_difficulty({"ratings": {"texture": 5, "subtlety": 5, "margin": 5}}, 25.0)
    hard = planned_difficulty({"ratings": {"texture": 1, "subtlety": 1, "margin": 1}}, 4.0)
    assert easy == 0.0 and hard > 0.9
    cases = synthetic_study_cases(6)
    t = Teacher(FeedbackDesign("worked_example", examples="easy_first"), cases, 64, 0)
    order = [v.difficulty for v in t.order("easy_first")]
    assert order == sorted(order) and [v.difficulty for v in t.order("hardest_first")] == sorted(order, reverse=True)
    assert {v.case_id for v in t.order("mixed")} == {c.case_id for c in cases}
    v = example_view(cases[0], 64)
    assert v.image.shape == v.expert.shape == (64, 64) and v.expert.any()


@pytest.fixture(scope="module")
def stub_env():
    e = make_env("hiseg_sim/NoduleSeg2D-v0", cases=synthetic_study_cases(6), segmenter=EnvStubSegmenter())
    yield e
    e.close()


def _sequence(env, feedback: str, who=None):
    a = who or person()
    rows = [
        harness_episode(env, a, case_id=c.case_id, seed=i, feedback=feedback).summary
        for i, c in enumerate(env.unwrapped.cases)
    ]
    return a, rows


def test_the_teacher_shows_what_the_design_says(stub_env):
    a, rows = _sequence(stub_env, "none")
    assert "examples_shown" not in rows[0] and a.perception_spec == a.profile.perception and not a.examples_seen
    a, rows = _sequence(stub_env, "worked_example;every=2")
    assert [len(r["examples_shown"]) for r in rows] == [0, 1, 0, 1, 0, 1]
    assert rows[1]["examples_shown"][0]["example"] == rows[1]["case_id"]
    assert [r["teaching_seconds"] for r in rows] == [0.0, 10.0] * 3
    a, rows = _sequence(stub_env, "none;tutorial=3")
    assert [len(r["examples_shown"]) for r in rows] == [3, 0, 0, 0, 0, 0] and len(set(a.examples_seen)) == 3
    assert rows[0]["tutorial_seconds"] == 30.0 and rows[0]["teaching_seconds"] == 0.0
    a, rows = _sequence(stub_env, "worked_example;examples=easy_first")
    shown = [r["examples_shown"][0]["example"] for r in rows]
    t = Teacher(FeedbackDesign.parse("worked_example;examples=easy_first"), stub_env.unwrapped.cases, 96, 0)
    assert shown == [v.case_id for v in t.order("easy_first")]  # each once, easiest first
    a, rows = _sequence(stub_env, "worked_example;examples=targeted")
    assert sorted(a.examples_seen) == sorted(c.case_id for c in stub_env.unwrapped.cases)


def test_people_get_faster_with_practice_on_the_tool(stub_env):
    fast = person()
    slow = person(time__mental_practice_exp=0.0, time__motor_practice_exp=0.0)
    _, f = _sequence(stub_env, "none", fast)
    _, s = _sequence(stub_env, "none", slow)
    assert f[0]["seconds_total"] == s[0]["seconds_total"]  # the first case: no practice yet
    ratio = sum(r["seconds_total"] for r in f[1:]) / sum(r["seconds_total"] for r in s[1:])
    assert ratio < 0.9


# ---- the training study's report -------------------------------------------------------------------
def test_a_training_study_reports_each_design_with_the_headline_the_protocol_needs(tmp_path):
    import json

    from hiseg_sim.analysis.report import build_report
    from hiseg_sim.experiments import run_study

    d = stub_spec_dict(n_cases=6, replicates=3, episode_fn="harness", design="sequence", length=6)
    d["study"]["kind"] = "training"
    d["annotators"] = [
        {"name": "non_medical", "label": "nm+none"},
        {"name": "non_medical", "label": "nm+we", "feedback": "worked_example"},
        {"name": "non_medical", "label": "nm+control", "feedback": "worked_example_uninformative"},
        {"name": "non_medical", "label": "nm+tutorial", "tutorial": 2},
        {"name": "junior_medical_student"},
    ]
    d["analysis"] = {
        "reference": "junior_medical_student",
        "window": 3,
        "n_boot": 50,
        "margin": 0.02,
        "curves": ["nm+none", "nm+we", "junior_medical_student"],
    }
    run = run_study(spec_from_dict(d), tmp_path / "t", executor="serial", cache_dir=str(tmp_path / "c"), progress=False)
    rep = build_report(run.dir)
    head = json.loads((run.dir / "headline.json").read_text())
    keys = {"dice_first5", "dice_last5", "seconds_first5", "seconds_last5", "cases_to_reference"}
    assert set(head["arms"]) == {"nm+none", "nm+we", "nm+control", "nm+tutorial", "junior_medical_student"}
    assert all(keys <= set(v) for v in head["arms"].values())
    assert head["arms"]["junior_medical_student"]["cases_to_reference"] == 0
    for v in head["arms"].values():  # the gain with the case mix taken out, with its interval
        est, lo, hi = v["gain_case_mix_removed"]
        assert lo <= est <= hi
    assert "gain, case mix removed [95% CI]" in rep.md_path.read_text()
    e = run.episodes
    tut = e[(e["annotator"] == "nm+tutorial") & (e["position"] == 0)]
    assert (tut["tutorial_seconds"] == 20.0).all()
    assert all(p.is_file() for p in rep.figures) and "Training designs" in rep.md_path.read_text()
