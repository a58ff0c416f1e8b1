"""Study specifications: the TOML files of ``experiments/`` as validated, frozen dataclasses.

A study names its cases, segmenters, annotators and seeds; the runner
(:mod:`hiseg_sim.experiments.runner`) turns it into work units. Every key is checked when the file
is read, and an error names the file, the table and the key::

    experiments/x.toml: [run] replicates: must be an integer >= 1; got 'three'
    experiments/x.toml: [run] unknown key 'replicate'; did you mean 'replicates'?

The file's tables (``experiments/hiseg_groups.toml`` is a worked example):

``[study]``
    ``name`` (str, required: a plain name, also the run directory ``runs/<name>/``), ``kind`` (a
    registered study kind: ``"groups"``, ``"crowd"``, ``"training"``, ``"protocols"``,
    ``"downstream"`` or a plugin's; see :mod:`hiseg_sim.studies`), ``description``, ``seed`` (int,
    the study seed every episode seed is derived from), ``env`` (``"2d"``, ``"3d"`` or a registered
    Gymnasium id), ``env_kwargs`` (table passed to ``gym.make``).
``[cases]``
    ``cohort`` (a cohort of ``data_manifests/phantom-lidc.json``) or ``source`` (a registered case
    source, :mod:`hiseg_sim.data.sources`, called with ``kwargs``); ``ids`` (only these),
    ``per_stratum`` (cohorts: at most this many per size band x texture group, in manifest order),
    ``limit`` (first N after the other filters).
``[segmenters]``
    ``names`` (registered segmenter names, optionally ``name@runtime``; default ``["litemedsam"]``),
    ``optional`` (names run only when their checkpoint is given), ``checkpoints`` (name → path).
``[[annotators]]`` (one table per arm)
    ``name`` (a registered annotator name, :mod:`hiseg_sim.annotators.registry`), ``label`` (how
    rows and reports call the arm; default ``name``; unique), ``overrides`` (profile parameters
    passed to ``build_annotator``), ``replicates`` (episodes per case for this arm; default
    ``[run] replicates``), ``feedback`` (``"none"``, ``"score"``, ``"worked_example"`` or
    ``"worked_example_uninformative"``: what a teacher shows after each case,
    :mod:`hiseg_sim.annotators.behaviour.teacher`), ``practice`` (sequence design: how many leading
    cases get that feedback; the rest are test cases without feedback), and the training design of
    a sequence study: ``feedback_every`` (feedback after every k-th case only), ``examples``
    (``"own"``: the worked example of the case just done; ``"easy_first"``, ``"mixed"``,
    ``"hardest_first"`` or ``"targeted"``: one from the study's cases in that order or chosen for
    the person's last error) and ``tutorial`` (worked examples before the first case);
    ``posterior`` (default false; true: ``name`` is a profile written by ``hiseg-sim fit-profile``
    and each simulated person is one joint draw of its posterior, so the study's intervals carry
    the fit's uncertainty; :mod:`hiseg_sim.experiments.posterior`). ``feedback_every``, ``examples``
    and ``tutorial``
    are stored in ``feedback`` as one text (``"worked_example;every=5"``,
    :meth:`~hiseg_sim.annotators.behaviour.teacher.FeedbackDesign.key`), which is what the episode
    function receives.
``[run]``
    ``replicates`` (default 1), ``design`` (``"crossed"``: every arm on every case, a fresh person
    per episode; ``"sequence"``: each replicate is one person working through ``length`` cases in
    a replicate-specific order, learning as they go), ``length`` (sequence design: cases per
    person; default all the study's cases), ``executor`` (``"serial"``,
    ``"process"``, ``"ray"``), ``workers`` (0 = all cores), ``cache_dir`` (on-disk embedding
    cache; default :func:`hiseg_sim.segmenters.default_cache_dir`), ``episode_fn`` (a registered
    episode function, default ``"harness"``: :func:`hiseg_sim.experiments.episode.harness_episode`),
    ``paired`` (default false; true: common random numbers — the arms of one annotator, e.g. the
    same profile under different feedback, draw their episodes from the annotator's name instead of
    the arm's label, so replicate r of every such arm is the same person meeting the same draws
    (perception, viewport, start slice) on each case, and the arms differ only by what their
    design changed: the paired comparison of training designs).
``[analysis]``
    the settings the study kind reads (each kind lists its keys; an unknown key is an error);
    changing them never invalidates the stored episodes.

Every name in a spec is looked up in a registry (:mod:`hiseg_sim.registry`); nothing in a spec is
imported or called by a dotted path.

Only what changes the episodes enters :meth:`StudySpec.config_hash` (not the executor, worker
count, cache directory, description or analysis settings), so a run may be resumed on another
executor and gives the same rows.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hiseg_sim.annotators.behaviour.teacher import EXAMPLE_ORDERS, FEEDBACK_MODES, FeedbackDesign
from hiseg_sim.registry import Registry

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "SpecError",
    "AnnotatorSpec",
    "CasesSpec",
    "RunSpec",
    "StudySpec",
    "load_spec",
    "spec_from_dict",
    "ENV_ALIASES",
    "EPISODES",
    "STUDY_KINDS",
    "FEEDBACK_MODES",
    "EXAMPLE_ORDERS",
    "DESIGNS",
    "EXECUTORS",
    "DEFAULT_EPISODE_FN",
]

ENV_ALIASES = {"2d": "hiseg_sim/NoduleSeg2D-v0", "3d": "hiseg_sim/NoduleSeg3D-v0"}
#: Kinds of study by name (entry-point group ``hiseg_sim.study_kinds``; see :mod:`hiseg_sim.studies`).
STUDY_KINDS: Registry[Any] = Registry("study_kinds", "study kind")
#: Episode functions by name (entry-point group ``hiseg_sim.episodes``; ``harness`` is the default:
#: :func:`hiseg_sim.experiments.episode.harness_episode`).
EPISODES: Registry[Callable[..., Any]] = Registry("episodes", "episode function")
DESIGNS = ("crossed", "sequence")
EXECUTORS = ("serial", "process", "ray")
DEFAULT_EPISODE_FN = "harness"
_LABEL = re.compile(r"^[A-Za-z0-9_.+@-]+$")
_NAME = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,127}$")


class SpecError(ValueError):
    """A study specification that cannot be used; the message names the file, table and key."""


# ---- the dataclasses ---------------------------------------------------------------------------
@dataclass(frozen=True)
class AnnotatorSpec:
    """One arm of a study: an annotator (profile, robot, policy) and how it is run."""

    name: str
    label: str
    overrides: dict = field(default_factory=dict)
    replicates: int | None = None
    feedback: str = "none"
    practice: int | None = None
    #: each simulated person (replicate) one joint draw of the fitted profile's posterior
    #: (:mod:`hiseg_sim.experiments.posterior`); ``name`` is then a profile written by ``fit-profile``
    posterior: bool = False

    def overrides_for(self, replicate: int, seed: int = 0) -> dict:
        """The profile overrides of person ``replicate``: with ``posterior``, one posterior draw
        under the arm's own ``overrides``; else the arm's ``overrides``."""
        if not self.posterior:
            return dict(self.overrides)
        from hiseg_sim.experiments.posterior import posterior_overrides

        return {**posterior_overrides(self.name, replicate, seed), **self.overrides}


@dataclass(frozen=True)
class CasesSpec:
    """Where the cases come from (a manifest cohort, or a registered case source) and which of them."""

    cohort: str | None = "default"
    source: str | None = None
    kwargs: dict = field(default_factory=dict)
    ids: tuple[str, ...] = ()
    per_stratum: int | None = None
    limit: int | None = None


@dataclass(frozen=True)
class RunSpec:
    """How the study is executed; only ``replicates``, ``design``, ``length``, ``episode_fn`` and
    ``paired`` change results."""

    replicates: int = 1
    design: str = "crossed"
    length: int | None = None
    executor: str = "process"
    workers: int = 0
    cache_dir: str | None = None
    episode_fn: str = DEFAULT_EPISODE_FN
    paired: bool = False


@dataclass(frozen=True)
class StudySpec:
    """A whole study. Build it with :func:`load_spec` (TOML) or :func:`spec_from_dict`."""

    name: str
    kind: str = "groups"
    description: str = ""
    seed: int = 0
    env_id: str = ENV_ALIASES["2d"]
    env_kwargs: dict = field(default_factory=dict)
    cases: CasesSpec = field(default_factory=CasesSpec)
    segmenters: tuple[str, ...] = ("litemedsam",)
    optional_segmenters: tuple[str, ...] = ()
    checkpoints: dict = field(default_factory=dict)
    annotators: tuple[AnnotatorSpec, ...] = ()
    run: RunSpec = field(default_factory=RunSpec)
    analysis: dict = field(default_factory=dict)
    path: str | None = None

    # -- derived -----------------------------------------------------------------------------
    def replicates_of(self, arm: AnnotatorSpec) -> int:
        return int(arm.replicates if arm.replicates is not None else self.run.replicates)

    def active_segmenters(self) -> tuple[str, ...]:
        """``names`` plus each ``optional`` segmenter whose checkpoint is given."""
        return tuple(self.segmenters) + tuple(s for s in self.optional_segmenters if s in self.checkpoints)

    def arm(self, label: str) -> AnnotatorSpec:
        for a in self.annotators:
            if a.label == label:
                return a
        raise KeyError(f"no annotator arm labelled {label!r}; arms: {[a.label for a in self.annotators]}")

    def result_dict(self) -> dict:
        """What determines the episodes (the input of :meth:`config_hash`)."""
        return {
            "seed": self.seed,
            "env_id": self.env_id,
            "env_kwargs": self.env_kwargs,
            "cases": asdict(self.cases),
            "segmenters": list(self.active_segmenters()),
            "checkpoints": {k: v for k, v in sorted(self.checkpoints.items()) if k in self.active_segmenters()},
            # posterior only when set, so the hashes of studies written before the key stay as they were
            "annotators": [{k: v for k, v in asdict(a).items() if k != "posterior" or v} for a in self.annotators],
            "run": {
                "replicates": self.run.replicates,
                "design": self.run.design,
                "length": self.run.length,
                "episode_fn": self.run.episode_fn,
                # only when set, so the hashes of studies written before the key stay as they were
                **({"paired": True} if self.run.paired else {}),
            },
        }

    def config_hash(self) -> str:
        """SHA-256 (hex, first 16) of :meth:`result_dict` as canonical JSON."""
        blob = json.dumps(self.result_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        """A plain dict that :func:`spec_from_dict` turns back into an equal spec (picklable, JSON-able)."""
        d = asdict(self)
        d["cases"]["ids"] = list(d["cases"]["ids"])
        d["__spec__"] = 1
        return d

    def with_run(self, **changes) -> StudySpec:
        """A copy with ``[run]`` settings changed (e.g. ``executor="serial"``); validated."""
        run = replace(self.run, **changes)
        _check_run(run, self._where())
        return replace(self, run=run)

    def _where(self) -> str:
        return self.path or f"study {self.name!r}"


# ---- validation helpers ------------------------------------------------------------------------
def _suggest(key: str, allowed) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; allowed keys: {', '.join(sorted(allowed))}"


def _no_unknown(table: dict, allowed, where: str, tname: str) -> None:
    for key in table:
        if key not in allowed:
            raise SpecError(f"{where}: [{tname}] unknown key {key!r}{_suggest(key, allowed)}")


def _get(table: dict, key: str, check: Callable[[Any], bool], expect: str, where: str, tname: str, default=None):
    if key not in table:
        return default
    val = table[key]
    if not check(val):
        raise SpecError(f"{where}: [{tname}] {key}: must be {expect}; got {val!r}")
    return val


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pos_int(v) -> bool:
    return _is_int(v) and v >= 1


def _nonneg_int(v) -> bool:
    return _is_int(v) and v >= 0


def _is_str(v) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _str_list(v) -> bool:
    return isinstance(v, list) and all(_is_str(s) for s in v)


def _is_table(v) -> bool:
    return isinstance(v, dict)


def _check_run(run: RunSpec, where: str) -> None:
    if run.executor not in EXECUTORS:
        raise SpecError(f"{where}: [run] executor: must be one of {', '.join(EXECUTORS)}; got {run.executor!r}")
    if not _nonneg_int(run.workers):
        raise SpecError(f"{where}: [run] workers: must be an integer >= 0 (0 = all cores); got {run.workers!r}")
    if not _pos_int(run.replicates):
        raise SpecError(f"{where}: [run] replicates: must be an integer >= 1; got {run.replicates!r}")


# ---- parsing -----------------------------------------------------------------------------------
_TOP = {"study", "cases", "segmenters", "annotators", "run", "analysis"}
_STUDY = {"name", "kind", "description", "seed", "env", "env_kwargs"}
_CASES = {"cohort", "source", "kwargs", "ids", "per_stratum", "limit"}
_SEGS = {"names", "optional", "checkpoints"}
_ARM = {
    "name",
    "label",
    "overrides",
    "replicates",
    "feedback",
    "practice",
    "feedback_every",
    "examples",
    "tutorial",
    "posterior",
}
_RUN = {"replicates", "design", "length", "executor", "workers", "cache_dir", "episode_fn", "paired"}


def spec_from_dict(data: dict, where: str = "study spec") -> StudySpec:
    """Validate a parsed TOML document (or :meth:`StudySpec.to_dict` output) and build the spec.

    Raises:
        SpecError: naming ``where``, the table and the key at fault.
    """
    if not isinstance(data, dict):
        raise SpecError(f"{where}: a study spec must be a table; got {type(data).__name__}")
    if data.get("__spec__") == 1:
        return _from_to_dict(data, where)
    _no_unknown(data, _TOP, where, "top level")
    study = _get(data, "study", _is_table, "a table", where, "top level")
    if study is None:
        raise SpecError(f'{where}: missing table [study] (with at least name = "...")')
    _no_unknown(study, _STUDY, where, "study")
    name = _get(
        study,
        "name",
        lambda v: _is_str(v) and _NAME.match(v) is not None,
        "a plain name: 1-128 letters, digits, '_', '.', '+' or '-', not starting with '.' (it names runs/<name>/)",
        where,
        "study",
    )
    if name is None:
        raise SpecError(f"{where}: [study] name: missing (the study's name; it names runs/<name>/)")
    kind = _get(study, "kind", _is_str, "a study kind such as 'groups'", where, "study", "groups")
    if kind not in STUDY_KINDS:
        raise SpecError(f"{where}: [study] kind: {STUDY_KINDS.unknown_message(kind)}")
    desc = _get(study, "description", lambda v: isinstance(v, str), "a string", where, "study", "")
    seed = _get(study, "seed", _nonneg_int, "an integer >= 0", where, "study", 0)
    env = _get(study, "env", _is_str, "'2d', '3d' or a registered Gymnasium id", where, "study", "2d")
    env_id = ENV_ALIASES.get(env.lower(), env)
    if "/" not in env_id:
        raise SpecError(
            f"{where}: [study] env: must be '2d', '3d' or a registered Gymnasium id like "
            f"'hiseg_sim/NoduleSeg2D-v0'; got {env!r}"
        )
    env_kwargs = dict(_get(study, "env_kwargs", _is_table, "a table", where, "study", {}))
    for bad in ("cases", "segmenter", "cache_dir"):
        if bad in env_kwargs:
            raise SpecError(
                f"{where}: [study.env_kwargs] {bad}: set by the runner; use [cases] / [segmenters] / "
                "[run] cache_dir instead"
            )

    cases = _parse_cases(_get(data, "cases", _is_table, "a table", where, "top level", {}), where)
    segs, optional, ckpts = _parse_segmenters(
        _get(data, "segmenters", _is_table, "a table", where, "top level", {}), where
    )
    run = _parse_run(_get(data, "run", _is_table, "a table", where, "top level", {}), where)
    arms_raw = _get(
        data,
        "annotators",
        lambda v: isinstance(v, list) and bool(v) and all(isinstance(a, dict) for a in v),
        "a non-empty array of tables ([[annotators]])",
        where,
        "top level",
    )
    if arms_raw is None:
        raise SpecError(f'{where}: missing [[annotators]]: at least one table with name = "<profile or robot>"')
    arms = tuple(_parse_arm(a, i, where, run) for i, a in enumerate(arms_raw))
    labels = [a.label for a in arms]
    dup = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dup:
        raise SpecError(
            f'{where}: [[annotators]] label: {dup[0]!r} is used by more than one arm; give each a unique label = "..."'
        )
    analysis = dict(_get(data, "analysis", _is_table, "a table", where, "top level", {}))
    spec = StudySpec(
        name=name,
        kind=kind,
        description=desc.strip(),
        seed=seed,
        env_id=env_id,
        env_kwargs=env_kwargs,
        cases=cases,
        segmenters=segs,
        optional_segmenters=optional,
        checkpoints=ckpts,
        annotators=arms,
        run=run,
        analysis=analysis,
        path=where if where != "study spec" else None,
    )
    STUDY_KINDS.get(kind).validate(spec, where)
    return spec


def _parse_cases(t: dict, where: str) -> CasesSpec:
    _no_unknown(t, _CASES, where, "cases")
    source = _get(t, "source", _is_str, "the name of a registered case source", where, "cases")
    if source is not None:
        from hiseg_sim.data.sources import CASE_SOURCES

        if source not in CASE_SOURCES:
            raise SpecError(f"{where}: [cases] source: {CASE_SOURCES.unknown_message(source)}")
    cohort = _get(t, "cohort", _is_str, "a cohort name such as 'default' or 'holdout'", where, "cases")
    if source and cohort:
        raise SpecError(f"{where}: [cases] give either cohort or source, not both")
    if not source and not cohort:
        cohort = "default"
    ids = tuple(_get(t, "ids", _str_list, "a list of case ids", where, "cases", []))
    per = _get(t, "per_stratum", _pos_int, "an integer >= 1", where, "cases")
    if per is not None and source:
        raise SpecError(f"{where}: [cases] per_stratum: only for a cohort (it reads the manifest's strata)")
    return CasesSpec(
        cohort=cohort,
        source=source,
        kwargs=dict(_get(t, "kwargs", _is_table, "a table", where, "cases", {})),
        ids=ids,
        per_stratum=per,
        limit=_get(t, "limit", _pos_int, "an integer >= 1", where, "cases"),
    )


def _is_seg_name(v) -> bool:
    return _is_str(v) and re.match(r"^[A-Za-z0-9_.-]+(@[A-Za-z0-9_]+)?$", v) is not None


def _parse_segmenters(t: dict, where: str):
    _no_unknown(t, _SEGS, where, "segmenters")
    names = _get(
        t,
        "names",
        lambda v: isinstance(v, list) and bool(v) and all(_is_seg_name(s) for s in v),
        "a non-empty list of segmenter names (optionally name@runtime)",
        where,
        "segmenters",
        ["litemedsam"],
    )
    optional = _get(
        t,
        "optional",
        lambda v: isinstance(v, list) and all(_is_seg_name(s) for s in v),
        "a list of registry names",
        where,
        "segmenters",
        [],
    )
    ckpts = _get(
        t,
        "checkpoints",
        lambda v: _is_table(v) and all(_is_str(p) for p in v.values()),
        'a table of name = "path"',
        where,
        "segmenters",
        {},
    )
    for n in list(names) + list(optional):
        _check_segmenter_name(n, where)
    ckpts = {k: str(Path(v).expanduser()) for k, v in ckpts.items()}
    for k, p in ckpts.items():
        if k in (set(names) | set(optional)) and not Path(p).is_file():
            raise SpecError(f"{where}: [segmenters] checkpoints.{k}: no file at {p}")
    if len(set(names) | set(optional)) != len(names) + len(optional):
        raise SpecError(f"{where}: [segmenters] a segmenter is listed twice in names/optional")
    return tuple(names), tuple(optional), ckpts


def _check_segmenter_name(name: str, where: str) -> None:
    from hiseg_sim import segmenters

    known = segmenters.available()
    base, _, runtime = name.partition("@")
    if base not in known:
        raise SpecError(f"{where}: [segmenters] unknown segmenter {base!r}{_suggest(base, known)}")
    if runtime and runtime not in segmenters.RUNTIMES:
        raise SpecError(
            f"{where}: [segmenters] {name!r}: unknown runtime {runtime!r}; one of {', '.join(segmenters.RUNTIMES)}"
        )


def _parse_arm(t: dict, i: int, where: str, run: RunSpec) -> AnnotatorSpec:
    tname = f"annotators #{i + 1}"
    _no_unknown(t, _ARM, where, tname)
    name = _get(t, "name", _is_str, "a registered annotator name", where, tname)
    if name is None:
        raise SpecError(f"{where}: [{tname}] name: missing (a profile such as 'expert_radiologist', or a robot)")
    from hiseg_sim.annotators.registry import ANNOTATORS

    if name.endswith(".toml") or "/" in name:  # a profile file (a fitted one, or the user's own)
        from hiseg_sim.annotators.behaviour.profiles import ProfileError, load_profile_file

        try:
            load_profile_file(name)
        except ProfileError as exc:
            raise SpecError(f"{where}: [{tname}] name: {exc}") from None
    elif name not in ANNOTATORS:
        raise SpecError(f"{where}: [{tname}] name: {ANNOTATORS.unknown_message(name)}")
    label = _get(
        t,
        "label",
        lambda v: _is_str(v) and _LABEL.match(v) is not None,
        "a label of letters, digits, '_', '.', '+', '@' or '-'",
        where,
        tname,
        None,
    )
    if label is None:
        label = Path(name).stem if (name.endswith(".toml") or "/" in name) else name
    fb = _get(t, "feedback", lambda v: v in FEEDBACK_MODES, f"one of {', '.join(FEEDBACK_MODES)}", where, tname, "none")
    practice = _get(t, "practice", _nonneg_int, "an integer >= 0", where, tname)
    if practice is not None and run.design != "sequence":
        raise SpecError(f'{where}: [{tname}] practice: only with [run] design = "sequence"')
    if practice is not None and run.length is not None and practice > run.length:
        raise SpecError(f"{where}: [{tname}] practice: {practice} is more than [run] length = {run.length}")
    fb = _feedback_design(t, fb, where, tname, run)
    posterior = _get(t, "posterior", lambda v: isinstance(v, bool), "true or false", where, tname, False)
    if posterior:
        from hiseg_sim.experiments.posterior import PosteriorError, posterior_draws

        try:
            posterior_draws(name)
        except PosteriorError as exc:
            raise SpecError(f"{where}: [{tname}] posterior: {exc}") from None
    return AnnotatorSpec(
        name=name,
        label=label,
        overrides=dict(_get(t, "overrides", _is_table, "a table", where, tname, {})),
        replicates=_get(t, "replicates", _pos_int, "an integer >= 1", where, tname),
        feedback=fb,
        practice=practice,
        posterior=bool(posterior),
    )


def _feedback_design(t: dict, mode: str, where: str, tname: str, run: RunSpec) -> str:
    """The arm's ``feedback`` text: the mode, with ``feedback_every``, ``examples`` and ``tutorial``."""
    every = _get(t, "feedback_every", _pos_int, "an integer >= 1 (1: after every case)", where, tname, 1)
    examples = _get(
        t, "examples", lambda v: v in EXAMPLE_ORDERS, f"one of {', '.join(EXAMPLE_ORDERS)}", where, tname, "own"
    )
    tutorial = _get(
        t, "tutorial", _nonneg_int, "an integer >= 0 (worked examples before the first case)", where, tname, 0
    )
    for key, default in (("feedback_every", 1), ("examples", "own"), ("tutorial", 0)):
        if t.get(key, default) != default and run.design != "sequence":
            raise SpecError(
                f'{where}: [{tname}] {key}: only with [run] design = "sequence" (one person over many cases)'
            )
    if every != 1 and mode == "none":
        raise SpecError(f'{where}: [{tname}] feedback_every: needs a feedback other than "none"')
    if examples != "own" and not mode.startswith("worked_example"):
        raise SpecError(
            f'{where}: [{tname}] examples: needs feedback = "worked_example" or '
            f'"worked_example_uninformative"; got {mode!r}'
        )
    return FeedbackDesign(mode, every, examples, tutorial).key()


def _parse_run(t: dict, where: str) -> RunSpec:
    _no_unknown(t, _RUN, where, "run")
    run = RunSpec(
        replicates=_get(t, "replicates", _pos_int, "an integer >= 1", where, "run", 1),
        design=_get(t, "design", lambda v: v in DESIGNS, f"one of {', '.join(DESIGNS)}", where, "run", "crossed"),
        length=_get(t, "length", _pos_int, "an integer >= 1", where, "run"),
        executor=_get(
            t, "executor", lambda v: v in EXECUTORS, f"one of {', '.join(EXECUTORS)}", where, "run", "process"
        ),
        workers=_get(t, "workers", _nonneg_int, "an integer >= 0 (0 = all cores)", where, "run", 0),
        cache_dir=_get(t, "cache_dir", _is_str, "a directory path", where, "run"),
        episode_fn=_get(t, "episode_fn", _is_str, "a registered episode function", where, "run", DEFAULT_EPISODE_FN),
        paired=_get(t, "paired", lambda v: isinstance(v, bool), "true or false", where, "run", False),
    )
    if run.episode_fn not in EPISODES:
        raise SpecError(f"{where}: [run] episode_fn: {EPISODES.unknown_message(run.episode_fn)}")
    if run.length is not None and run.design != "sequence":
        raise SpecError(f'{where}: [run] length: only with design = "sequence"')
    return run


def _from_to_dict(d: dict, where: str) -> StudySpec:
    """Rebuild from :meth:`StudySpec.to_dict` (trusted: it was validated when first read)."""
    d = {k: v for k, v in d.items() if k != "__spec__"}
    d["cases"] = CasesSpec(**{**d["cases"], "ids": tuple(d["cases"].get("ids", ()))})
    d["run"] = RunSpec(**d["run"])
    d["annotators"] = tuple(AnnotatorSpec(**a) for a in d["annotators"])
    for k in ("segmenters", "optional_segmenters"):
        d[k] = tuple(d.get(k, ()))
    return StudySpec(**d)


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study TOML file.

    Args:
        path: a ``.toml`` file, or the name of a shipped study (``"hiseg_groups"`` finds
            ``experiments/hiseg_groups.toml`` in a checkout or in the installed package).

    Raises:
        SpecError: the file is missing, is not valid TOML, or a key is wrong (the message names it).
    """
    p = resolve_spec_path(path)
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{p}: not valid TOML ({exc})") from None
    return spec_from_dict(data, str(p))


def shipped_specs_dir() -> Path:
    """``<repo>/experiments`` in a checkout, else the copy bundled in the wheel."""
    from hiseg_sim.resources import shipped_path

    return shipped_path("experiments")


def resolve_spec_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.suffix == "" and not p.parent.name:
        shipped = shipped_specs_dir() / f"{p.name}.toml"
        if shipped.is_file():
            return shipped
    names = sorted(q.stem for q in shipped_specs_dir().glob("*.toml"))
    raise SpecError(f"{p}: no such study file (shipped studies: {', '.join(names) or 'none'})")
