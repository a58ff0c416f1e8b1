"""Annotator profiles and the registry: every profile loads, every value has a source, bad files fail clearly."""

from __future__ import annotations

import re
import warnings

import pytest

from hiseg_sim.annotators.base import Annotator
from hiseg_sim.annotators.behaviour.person import BehaviourAnnotator
from hiseg_sim.annotators.behaviour.profiles import (
    SECTIONS,
    SOURCE_KINDS,
    ProfileError,
    apply_overrides,
    load_profile_file,
)
from hiseg_sim.annotators.registry import ROBOT_NAMES, available_annotators, build_annotator, load_profile

GROUPS = [
    "non_medical",
    "non_medical_trained",
    "crowd_worker",
    "junior_medical_student",
    "trainee_resident",
    "expert_radiologist",
]


def test_available_lists_every_group_and_robot():
    names = available_annotators()
    for g in GROUPS:
        assert g in names
    for r in (
        "robot_ritm",
        "robot_microsam",
        "robot_deepgrow",
        "robot_sammed3d",
        "robot_medsegfm",
        "robot_medsam_box",
        "robot_sam_box",
        "auto_box",
    ):
        assert r in names and r in ROBOT_NAMES


@pytest.mark.parametrize("name", GROUPS, ids=GROUPS)
def test_profile_loads_with_a_source_for_every_value(name):
    p = load_profile(name)
    assert p.name == name and p.description
    rows = p.table()
    assert len(rows) == sum(len(cls.__dataclass_fields__) for cls in SECTIONS.values())
    for row in rows:
        assert row["source"].lower().startswith(SOURCE_KINDS[:4]), row
    # a literature source cites a number
    for row in rows:
        if row["source"].startswith("literature:"):
            assert re.search(r"\d", row["source"]), row


@pytest.mark.parametrize("name", GROUPS + list(ROBOT_NAMES))
def test_build_annotator_gives_the_protocol(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = build_annotator(name)
    assert isinstance(a, Annotator)
    assert a.reads_ground_truth == (name in ROBOT_NAMES)


def test_overrides_and_label():
    a = build_annotator("non_medical", strategy__temperature=0.3, params={"judgement.patience": 4}, label="nm-hot")
    assert isinstance(a, BehaviourAnnotator)
    assert a.name == "nm-hot"
    assert a.profile.strategy.temperature == 0.3 and a.profile.judgement.patience == 4
    assert a.profile.sources["strategy.temperature"].startswith("override:")
    with pytest.raises(ProfileError, match="strategy.nonsense"):
        apply_overrides(load_profile("non_medical"), {"strategy.nonsense": 1})
    with pytest.raises(ProfileError, match="temperature"):
        apply_overrides(load_profile("non_medical"), {"strategy.temperature": -1.0})
    assert build_annotator("robot_ritm", target_iou=0.85).target_iou == 0.85


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ProfileError, match="expert_radiologist"):
        load_profile("no_such_group")


def _write(tmp_path, text: str):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


def _expert_text() -> str:
    return load_profile("expert_radiologist").path.read_text()


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda t: t.replace("temperature = {value = 0.05,", "temperature = {value = -0.05,"),
            r"bad\.toml.*\[strategy\].*temperature",
        ),
        (
            lambda t: t.replace('source = "assumption: experts choose consistently"', 'source = "I think so"'),
            r"bad\.toml: strategy\.temperature: source",
        ),
        (
            lambda t: t.replace("temperature = {value = 0.05", 'temperature = {value = "hot"'),
            r"bad\.toml: strategy\.temperature: expected a number",
        ),
        (lambda t: re.sub(r"\nepsilon = .*\n", "\n", t), r"bad\.toml: strategy\.epsilon is missing"),
        (
            lambda t: t.replace("[strategy]", '[strategy]\nspeed = {value = 1.0, source = "assumption: x y z"}'),
            r"bad\.toml: unknown key\(s\) \['strategy\.speed'\]",
        ),
        (
            lambda t: t.replace("patience = {value = 10,", "patience = {value = 2.5,"),
            r"bad\.toml: judgement\.patience: expected a whole number",
        ),
        (
            lambda t: t.replace(
                'mental_scale = {value = 1.0, source = "literature: keystroke-level model (Card, Moran '
                '& Newell), M = 1.35 s"}',
                'mental_scale = {value = 1.0, source = "literature: KLM"}',
            ),
            r"bad\.toml: time\.mental_scale: a literature source must cite",
        ),
        (
            lambda t: t.replace("epsilon = {value = 0.02", "epsilon = 0.02 #"),
            r"bad\.toml: strategy\.epsilon must be a table",
        ),
        (lambda t: t + "\n[[oops", r"bad\.toml: not valid TOML"),
    ],
    ids=["bad-value", "bad-source", "wrong-type", "missing", "unknown", "not-int", "uncited", "bare-value", "toml"],
)
def test_malformed_profile_names_file_and_key(tmp_path, edit, match):
    text = edit(_expert_text())
    with pytest.raises(ProfileError, match=match):
        load_profile_file(_write(tmp_path, text))


def test_perception_params_scale_the_expert_fit():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = load_profile("expert_radiologist").perception.params()
        n = load_profile("non_medical").perception.params()
    k = load_profile("non_medical").perception.edge_sd_scale
    assert n.shift_sd_mm == pytest.approx(e.shift_sd_mm * k)
    assert n.p_include_vessel > 0 and e.p_include_vessel == 0


@pytest.mark.parametrize(
    "module",
    ["behaviour.learning", "behaviour.execution", "behaviour.judgement", "registry", "behaviour.strategy", "harness"],
)
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"hiseg_sim.annotators.{module}")
    res = doctest.testmod(mod, verbose=False)
    assert res.failed == 0
