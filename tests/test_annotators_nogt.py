"""No decision of a simulated person can reach the ground truth.

Three proofs: (1) static — the decision modules never name the ground truth, the case, the env's
internals or the robots; (2) the interface — Knowledge has no ground-truth field and the harness
hands behaviour models plain Knowledge; (3) dynamic — two cases identical except for the ground
truth, with the person's intent given identically, give identical action sequences (while the
env's scores differ).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import warnings

import numpy as np
import pytest

import hiseg_sim  # noqa: F401
from hiseg_sim.annotators.base import DelegatingAnnotator, Knowledge, RobotKnowledge
from hiseg_sim.annotators.behaviour import execution, judgement, learning, person, strategy
from hiseg_sim.annotators.harness import make_env, run_episode
from hiseg_sim.annotators.registry import ROBOT_NAMES, available_annotators, build_annotator
from hiseg_sim.data.case import Case
from tests.env_support import EnvStubSegmenter, synthetic_cases

DECISION_MODULES = [person, strategy, execution, judgement, learning]
FORBIDDEN_ATTRS = {
    "gt",
    "_gt_crop",
    "_gt_full",
    "_gt_total",
    "case",
    "cases",
    "reader_masks",
    "volume_hu",
    "meta",
    "unwrapped",
    "env",
    "_inter",
    "_stacks",
    "key_slice",
    "gt_slices",
}
FORBIDDEN_NAMES = {"RobotKnowledge", "gt", "ground_truth"}
FORBIDDEN_IMPORTS = (
    "hiseg_sim.annotators.robots.rules",
    "hiseg_sim.annotators.robots.agents",
    "hiseg_sim.data",
    "hiseg_sim.env.core",
    "hiseg_sim.env.scoring",
    "hiseg_sim.annotators.harness",
    ".robots",
    ".robot_agents",
    "hiseg_sim.metrics",
)


@pytest.mark.parametrize("module", DECISION_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_decision_code_never_names_the_ground_truth(module):
    tree = ast.parse(inspect.getsource(module))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            assert node.attr not in FORBIDDEN_ATTRS, f"{module.__name__}:{node.lineno} reads .{node.attr}"
        elif isinstance(node, ast.Name):
            assert node.id not in FORBIDDEN_NAMES, f"{module.__name__}:{node.lineno} names {node.id}"
        elif isinstance(node, ast.arg):
            assert node.arg not in FORBIDDEN_NAMES | {"env", "case"}, (
                f"{module.__name__}:{node.lineno} takes {node.arg}"
            )
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if isinstance(node, ast.ImportFrom) and node.level:
                names = ["." * node.level + (node.module or "")]
            for n in names:
                assert not n.startswith(FORBIDDEN_IMPORTS), f"{module.__name__}:{node.lineno} imports {n}"
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
            "getattr",
            "vars",
            "eval",
            "exec",
            "__import__",
        ):
            if node.func.id == "getattr":
                if isinstance(node.args[0], ast.Name) and node.args[0].id == "self":
                    continue  # a parameter class validating its own fields
                arg = node.args[1] if len(node.args) > 1 else None
                assert isinstance(arg, ast.Constant) and arg.value not in FORBIDDEN_ATTRS, (
                    f"{module.__name__}:{node.lineno} getattr with a dynamic or forbidden name"
                )
            else:
                pytest.fail(f"{module.__name__}:{node.lineno} calls {node.func.id}")


def test_knowledge_has_no_ground_truth_and_behaviour_models_do_not_ask_for_it():
    assert "gt" not in {f.name for f in dataclasses.fields(Knowledge)}
    assert "gt" in {f.name for f in dataclasses.fields(RobotKnowledge)}
    for name in available_annotators():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = build_annotator(name)
        assert a.reads_ground_truth is (name in ROBOT_NAMES), name


class _Spy(DelegatingAnnotator):
    """Wraps an annotator and records the type of the Knowledge it is handed."""

    def __init__(self, inner):
        super().__init__(inner)
        self.seen = []

    def begin_case(self, knowledge, rng):
        self.seen.append(type(knowledge))
        self.inner.begin_case(knowledge, rng)


@pytest.fixture(scope="module")
def stub():
    return EnvStubSegmenter()


@pytest.mark.filterwarnings("ignore")
def test_harness_hands_behaviour_models_plain_knowledge(stub):
    env = make_env("hiseg_sim/NoduleSeg2D-v0", cases=synthetic_cases(), segmenter=stub)
    spy = _Spy(build_annotator("crowd_worker"))
    run_episode(env, spy, case_id="synth-0", seed=0)
    assert spy.seen == [Knowledge]
    robot = _Spy(build_annotator("robot_ritm"))
    run_episode(env, robot, case_id="synth-0", seed=0)
    assert robot.seen == [RobotKnowledge]


def _twin_cases():
    """One synthetic case, and its twin whose ground truth is moved 6 px (same image, same key slice)."""
    base = synthetic_cases()[0]
    moved = np.roll(base.gt, 6, axis=2)
    twin = Case(base.case_id, base.volume_hu, base.spacing_zyx, moved, meta=dict(base.meta))
    assert twin.key_slice == base.key_slice
    return base, twin


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", ["non_medical", "expert_radiologist", "crowd_worker"])
def test_same_intent_different_ground_truth_same_actions(stub, name):
    base, twin = _twin_cases()
    env_a = make_env("hiseg_sim/NoduleSeg2D-v0", cases=[base], segmenter=stub)
    env_b = make_env("hiseg_sim/NoduleSeg2D-v0", cases=[twin], segmenter=stub)
    _, info = env_a.reset(seed=0, options={"case_id": base.case_id})
    vp = info["viewport"]
    intent = env_a.unwrapped._gt_crop[0].copy()  # any fixed mask serves; this one makes the person act
    intent[40:44, :] = False
    runs = []
    for env in (env_a, env_b):
        r = run_episode(
            env, build_annotator(name), case_id=base.case_id, seed=5, options={"viewport": vp}, intent=intent
        )
        runs.append(r)
    keys = ("action", "seconds", "perceived_quality", "invalid_action", "iou_pred")
    seq_a = [{k: t[k] for k in keys} for t in runs[0].trace]
    seq_b = [{k: t[k] for k in keys} for t in runs[1].trace]
    assert json.dumps(seq_a) == json.dumps(seq_b)
    assert runs[0].summary["final_dice"] != runs[1].summary["final_dice"]  # the env did score differently
