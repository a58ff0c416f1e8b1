"""Fit a profile to recorded sessions: exact likelihood where the trace gives it, a simulation-corrected
pseudo-likelihood where it does not.

Why not plain simulation-based inference over everything: one simulated person on 16 nodules with
LiteMedSAM takes 2–4 s on two cores with the embeddings cached, so the thousand or so simulated
pilots (thousands of persons) an ABC-SMC or a neural posterior needs take hours per fit. Instead:

1. *Time* (mental scale, practice exponents, practised motor share, key scale, and the click
   scatter through the Fitts effective width) has an exact likelihood: the env charges every
   action's seconds by a known formula of the action, the pointer and the person's factors
   (:func:`hiseg_sim.fitting.model.time_loglik`). Sampled by Metropolis, no simulation.
2. *Boxes* (margin, its SD): the first box of each nodule against the reference's tight box;
   conjugate normal / scaled-inverse-χ² draws (:class:`hiseg_sim.fitting.model.BoxData`).
3. *Decisions* (accept threshold, quality SD, patience, undo margin; the prompt values' priors and
   the learning rate): a pseudo-likelihood of each accept / undo / prompt choice that reads the
   Dice against the reference in place of the person's perceived quality
   (:func:`~hiseg_sim.fitting.model.judgement_loglik`, :func:`~hiseg_sim.fitting.model.strategy_loglik`).

Parts 2 and 3 are *auxiliary* estimates: the person compares with their own intent, not the
reference, so the estimates are shifted. The shift is measured by simulation, once per fit:
``calibration`` sessions simulated from the base profile on the same cases are fitted the same
way, and ``shift = estimate(simulated) - base value`` is taken off the estimate from the data
(indirect inference with a binding function of slope 1 around the base profile, taken on the log
scale for the two SDs). A pseudo-likelihood is overconfident (it treats proxy decisions as exact
and independent), and its estimator's value depends on how many persons it pools, so the calibration persons are
fitted in sets the size of the pilot: the sets' mean is the shift, their spread the estimate's
sampling SD, and the data's draws are widened to it (:func:`calibration_draws`; a parametric
bootstrap of the auxiliary estimator). That costs a few sets of simulated persons instead of
thousands, and the recovery runs in ``docs/fitting.md`` measure how well it works.

A parameter is *identified* when its 90 % posterior interval is less than half as wide as its
prior's; the others are written with the base profile's value and reported as not identified.
Parameters none of the parts read (perception, the semantic-error rates, temperature, ...) are not
identified by construction.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from scipy.stats import norm
from scipy.stats import t as student_t

from hiseg_sim.annotators.behaviour.profiles import SECTIONS, Profile
from hiseg_sim.experiments.posterior import DRAWS_PREFIX
from hiseg_sim.fitting import model as Mo
from hiseg_sim.fitting.mcmc import sample_posterior
from hiseg_sim.fitting.sessions import Session

__all__ = [
    "CALIBRATION_SETS",
    "FitResult",
    "ParamFit",
    "calibration_draws",
    "fit_sessions",
    "load_references",
    "write_profile",
]

#: Calibration sets (each the pilot's number of persons) the CLI simulates by default.
CALIBRATION_SETS = 8
#: The most sets fitted (more calibration persons than this many sets are left unused).
MAX_SETS = 12
#: Fewer sets give no usable spread (Student's t with one degree of freedom multiplies it by 3.8).
MIN_SETS = 3
#: Share of the prior's 90 % width below which a posterior counts as identified.
IDENTIFIED_WIDTH = 0.5
#: Bounds of the derived parameters (box margin and SD) for the identification rule.
_BOX_PRIORS = {"execution.box_margin_mm": (-1.0, 4.0), "execution.box_margin_sd_mm": (0.05, 3.0)}
#: Parameters whose estimates come from a proxy and are shift-corrected by simulation.
PROXY = (
    "execution.box_margin_mm",
    "execution.box_margin_sd_mm",
    "judgement.accept_threshold",
    "judgement.quality_sd",
    "judgement.patience",
    "judgement.undo_margin",
    "strategy.prior_point",
    "strategy.prior_box",
    "strategy.prior_rebox",
    "learning.learning_rate",
)
#: Valid ranges the (corrected) draws are kept in.
_VALID = {
    "judgement.accept_threshold": (0.01, 1.0),
    "judgement.quality_sd": (0.0, 1.0),
    "judgement.patience": (1.0, 200.0),
    "judgement.undo_margin": (0.0, 1.0),
    "strategy.prior_point": (-1.0, 1.0),
    "strategy.prior_box": (-1.0, 1.0),
    "strategy.prior_rebox": (-1.0, 1.0),
    "learning.learning_rate": (0.0, 1.0),
    "execution.box_margin_sd_mm": (0.01, 10.0),
    "execution.point_sd_mm": (0.01, 10.0),
    "time.mental_scale": (0.0, 100.0),
    "time.motor_practised_share": (0.0, 1.0),
}


@dataclass
class ParamFit:
    """One parameter's fit: the value written (posterior median, or the base's when not
    identified), the 90 % interval, whether identified, and the draws (``None`` if not fitted)."""

    name: str
    value: float
    lo: float
    hi: float
    identified: bool
    draws: np.ndarray | None = None
    prior: tuple[float, float] | None = None

    def to_json(self) -> dict:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "identified": self.identified}


@dataclass
class FitResult:
    """Every parameter of the profile with its fit, and what the fit read."""

    base: Profile
    params: dict[str, ParamFit]
    n_sessions: int
    n_episodes: int
    n_actions: int
    corrected: bool
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "parameters": {k: v.to_json() for k, v in self.params.items()},
            "sessions": self.n_sessions,
            "episodes": self.n_episodes,
        }


def load_references(sessions: list[Session], cohort: str = "default"):
    """Pixel size per case and the reference outline in each episode's viewport, from the cohort."""
    from hiseg_sim.env.viewport import crop2d
    from hiseg_sim.experiments.cases import CaseSource
    from hiseg_sim.experiments.spec import CasesSpec

    ids = sorted({ep.case for s in sessions for ep in s.episodes})
    cases = {c.case_id: c for c in CaseSource(CasesSpec(cohort=cohort, ids=tuple(ids))).load(ids)}
    spacing = {cid: tuple(float(v) for v in c.spacing_zyx[1:]) for cid, c in cases.items()}
    refs = {}
    for s in sessions:
        for ep in s.episodes:
            key = Mo._ref_key(ep)
            if key in refs:
                continue
            c = cases[ep.case]
            z0, n, y0, x0 = key[1:]
            size = int(ep.viewport.get("size", 96))
            ref = np.stack([crop2d(c.gt[z0 + i], y0, x0, size, fill=False) for i in range(n)])
            refs[key] = (ref, spacing[ep.case])
    return spacing, refs


def _width90(x: np.ndarray) -> float:
    lo, hi = np.quantile(x, [0.05, 0.95])
    return float(hi - lo)


def _named_draws(loglik, params, rng, **kw) -> dict[str, np.ndarray]:
    """:func:`sample_posterior` of one part's ``(name, bounds)`` parameters, its columns by name."""
    d = sample_posterior(loglik, [b for _, b in params], rng, **kw)
    return {n: d[:, i] for i, (n, _) in enumerate(params)}


def _aux_draws(sessions, base: Profile, spacing, refs, rng, n_chains, n_steps) -> dict[str, np.ndarray]:
    """Draws of every part's parameters (auxiliary for the proxy ones), by name."""
    out: dict[str, np.ndarray] = {}
    td = Mo.time_data(sessions, spacing)
    if len(td) >= 5:
        out.update(
            _named_draws(
                lambda th: Mo.time_loglik(td, th), Mo.TIME_PARAMS, rng, n_chains=n_chains, n_steps=n_steps, polish=3000
            )
        )
    bd = Mo.box_data(sessions, refs)
    st = bd.stats()
    if st["df"] >= 2 and np.isfinite(st["margin"]):
        k = 4000
        out["box.margin"] = rng.normal(st["margin"], max(st["se"], 1e-6), k)
        out["box.within"] = st["within"] * st["df"] / rng.chisquare(st["df"], k)
    dd = Mo.decision_data(sessions)
    if dd.acc_y.size + dd.undo_y.size >= 5:
        out.update(
            _named_draws(
                lambda th: Mo.judgement_loglik(dd, th), Mo.JUDGEMENT_PARAMS, rng, n_chains=n_chains, n_steps=n_steps
            )
        )
    if any(dd.events):
        sp = base.strategy
        out.update(
            _named_draws(
                lambda th: Mo.strategy_loglik(dd, th, sp.temperature, sp.epsilon, sp.combo_bias),
                Mo.STRATEGY_PARAMS,
                rng,
                n_chains=n_chains // 2,
                n_steps=n_steps // 3,
                n_init=400,
            )
        )
    return out


def _profile_draws(aux: dict[str, np.ndarray], base: Profile) -> dict[str, np.ndarray]:
    """Profile parameters from the part draws: ``mental_scale`` is the mental factor over the base's
    ``1 + hesitation``; the box SD is the within-box SD of the sides less the corners' motor
    scatter (what else widens it, the intent's edge against the reference, is left to the shift)."""
    out: dict[str, np.ndarray] = {}
    for k, v in aux.items():
        if k == "m":
            out["time.mental_scale"] = v / (1.0 + base.time.hesitation)
        elif "." in k and k.split(".")[0] in SECTIONS:
            out[k] = v
    if "box.margin" in aux:
        out["execution.box_margin_mm"] = aux["box.margin"]
        psd = aux.get("execution.point_sd_mm")
        n = aux["box.within"].size
        corner = (2.0 * (psd[:n] if psd is not None and psd.size >= n else base.execution.point_sd_mm)) ** 2
        out["execution.box_margin_sd_mm"] = np.sqrt(np.maximum(aux["box.within"] - corner, 1e-4))
    return out


def _priors() -> dict[str, tuple[float, float]]:
    pri = {n: b for n, b in Mo.TIME_PARAMS + Mo.JUDGEMENT_PARAMS + Mo.STRATEGY_PARAMS}
    pri["time.mental_scale"] = pri.pop("m")
    pri.update(_BOX_PRIORS)
    return pri


def calibration_draws(
    calibration: list[Session],
    base: Profile,
    references,
    seed: int = 1,
    n_chains: int = 32,
    n_steps: int = 400,
    set_size: int | None = None,
) -> dict[str, np.ndarray]:
    """The proxy estimates on sessions simulated from ``base`` (what :func:`fit_sessions` takes off
    the data's); computed once, they serve every fit of ``set_size`` persons against the same base
    and cases.

    With at least :data:`MIN_SETS` sets of ``set_size`` persons (the data's number of persons), each set is
    fitted alone, as the data are: the mean of the sets' estimates is the proxy estimator's value
    at the base for a pilot of that size (``set_mean:<name>``), and their SD is its sampling SD
    (``set_sd:<name>``), on the scale the shift is taken on. Measured on 32 simulated non-medical
    persons, that SD is 1.7-2.7 times the pseudo-posterior's for the strategy parameters (the
    likelihood treats proxy choices as exact and independent), and the estimator's value moves
    with the number of persons (``prior_point`` 0.46 / 0.36 / 0.28 for sets of 2 / 4 / 8), so
    neither can be taken from a pooled fit. Otherwise the pooled fit's draws are returned, and
    :func:`fit_sessions` uses their mean and SD.
    """
    spacing, refs = references
    rng = np.random.default_rng(seed)
    n_sets = min(len(calibration) // set_size, MAX_SETS) if set_size else 0
    if n_sets < MIN_SETS:
        return _profile_draws(_aux_draws(calibration, base, spacing, refs, rng, n_chains, n_steps), base)
    per_set = [
        _profile_draws(
            _aux_draws(calibration[i * set_size : (i + 1) * set_size], base, spacing, refs, rng, n_chains, n_steps),
            base,
        )
        for i in range(n_sets)
    ]
    out: dict[str, np.ndarray] = {"sets": np.array([n_sets, set_size], float)}
    for k in PROXY:
        meds = [float(np.median(_scaled(k, base, d[k]))) for d in per_set if k in d]
        if len(meds) >= 2:
            out[f"set_mean:{k}"] = np.array([np.mean(meds)])
            out[f"set_sd:{k}"] = np.array([np.std(meds, ddof=1)])
    return out


#: Proxy parameters corrected on the log scale (positive scales: a shift in proportion).
_LOG_SCALE = ("judgement.quality_sd", "execution.box_margin_sd_mm")


def _scaled(name: str, base: Profile, x: np.ndarray) -> np.ndarray:
    """Draws on the scale the shift is taken on (log for positive scales)."""
    if name in _LOG_SCALE and float(base.value(name)) > 0:
        return np.log(np.maximum(np.asarray(x, float), 1e-4))
    return np.asarray(x, float)


def _unscaled(name: str, base: Profile, x: np.ndarray) -> np.ndarray:
    if name in _LOG_SCALE and float(base.value(name)) > 0:
        return np.exp(x)
    return x


def fit_sessions(
    sessions: list[Session],
    base: Profile,
    *,
    cohort: str = "default",
    calibration: list[Session] | dict | None = None,
    seed: int = 0,
    n_draws: int = 200,
    n_chains: int = 32,
    n_steps: int = 400,
    references=None,
) -> FitResult:
    """Fit ``base``'s parameters to ``sessions`` (see the module docstring).

    Args:
        sessions: the recorded sessions.
        base: the profile the fit starts from; parameters not identified keep its values.
        cohort: the cohort the sessions' cases come from (pixel sizes and reference outlines).
        calibration: sessions simulated from ``base`` on the same cases, for the proxy shift (or their
            :func:`calibration_draws`); ``None`` leaves the proxy estimates uncorrected (said in ``notes``).
        seed: the sampler's seed.
        n_draws: joint posterior draws kept (written to the profile).
        references: ``(spacing, refs)`` from :func:`load_references` (loaded when ``None``).
    """
    rng = np.random.default_rng(seed)
    extra = calibration if isinstance(calibration, list) else []
    spacing, refs = references if references is not None else load_references(sessions + extra, cohort)
    data = _profile_draws(_aux_draws(sessions, base, spacing, refs, rng, n_chains, n_steps), base)
    notes = []
    corrected = calibration is not None and len(calibration) > 0
    if calibration is not None and corrected:
        n_p = len(sessions)
        sim = (
            calibration
            if isinstance(calibration, dict)
            else calibration_draws(calibration, base, (spacing, refs), seed + 1, n_chains, n_steps, set_size=n_p)
        )
        sets = sim.get("sets")
        if sets is not None and int(sets[1]) != n_p:
            raise ValueError(
                f"the calibration draws were made for sets of {int(sets[1])} persons and the sessions hold {n_p}; "
                "compute them with calibration_draws(..., set_size=len(sessions))"
            )
        if sets is None:
            notes.append(
                f"fewer than {MIN_SETS} sets of calibration persons the size of the pilot: the box and decision "
                "intervals are the pseudo-posteriors', which are too narrow (docs/fitting.md)"
            )
        for k in PROXY:
            if k not in data:
                continue
            x = _scaled(k, base, data[k])
            b = float(_scaled(k, base, np.array([base.value(k)]))[0])
            if sets is not None and f"set_mean:{k}" in sim:
                # the data's estimate scatters as the sets' do; the shift's own error adds 1 / n_sets of
                # that; the SD estimated from n_sets values takes Student's t in place of the normal
                n_sets = int(sets[0])
                target = float(sim[f"set_sd:{k}"][0]) * np.sqrt(1.0 + 1.0 / n_sets)
                target *= float(student_t.ppf(0.95, n_sets - 1) / norm.ppf(0.95))
                med = float(np.median(x))
                sd = float(np.std(x))
                widen = max(1.0, target / sd) if sd > 0 else 1.0
                data[k] = _unscaled(k, base, med + widen * (x - med) - (float(sim[f"set_mean:{k}"][0]) - b))
            elif k in sim:
                xs = _scaled(k, base, sim[k])
                jitter = rng.normal(0.0, float(np.std(xs)), x.size)
                data[k] = _unscaled(k, base, x - (float(np.mean(xs)) - b) + jitter)
    else:
        notes.append("no calibration sessions: box and decision parameters are the proxy estimates, uncorrected")
    priors = _priors()
    params: dict[str, ParamFit] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            name = f"{section}.{f.name}"
            bv = base.value(name)
            if name not in data or isinstance(bv, str):
                params[name] = ParamFit(name, bv, bv, bv, False)
                continue
            d = np.asarray(data[name], float)
            if name in _VALID:
                d = np.clip(d, *_VALID[name])
            pri = priors.get(name)
            ident = pri is not None and _width90(d) < IDENTIFIED_WIDTH * 0.9 * (pri[1] - pri[0])
            sel = rng.choice(d.size, size=n_draws, replace=d.size < n_draws)
            lo, med, hi = (float(v) for v in np.quantile(d, [0.05, 0.5, 0.95]))
            if isinstance(bv, int):
                med, lo, hi = float(round(med)), float(np.floor(lo)), float(np.ceil(hi))
            params[name] = ParamFit(
                name,
                (int(med) if isinstance(bv, int) else med) if ident else bv,
                lo,
                hi,
                bool(ident),
                d[sel] if ident else None,
                pri,
            )
    if "time.mental_scale" in data:
        notes.append("time.hesitation: only mental_scale x (1 + hesitation) is identified; hesitation kept")
    return FitResult(
        base=base,
        params=params,
        n_sessions=len(sessions),
        n_episodes=sum(len(s.episodes) for s in sessions),
        n_actions=sum(s.n_actions for s in sessions),
        corrected=corrected,
        notes=notes,
    )


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(round(v, 6))
    return json.dumps(str(v))


def write_profile(fit: FitResult, path: str | Path, name: str | None = None, date: str | None = None) -> Path:
    """Write the fitted profile (format of ``agents/profiles``; loadable by its path). Fitted values
    carry their interval in the source and their joint draws in ``note``; the others keep the base's
    source with a note that the sessions did not identify them."""
    p = Path(path)
    date = date or _dt.date.today().isoformat()
    base = fit.base
    prov = f"fitted: {fit.n_sessions} sessions, {fit.n_episodes} nodules, {date}"
    name = name or p.stem
    lines = [
        f"# Fitted by `hiseg-sim fit-profile` from the base profile {base.name!r}.",
        f"# {prov}",
        "# Each fitted value is the posterior median; its source gives the 90 % credible interval and its",
        "# note the joint posterior draws (draw i of every parameter is one draw). Parameters the sessions",
        "# do not identify keep the base's value and source (note: not identified).",
        f"name = {_toml_value(name)}",
        f"description = {_toml_value(f'{base.description} Fitted to recorded sessions ({prov}).')}",
    ]
    for section, cls in SECTIONS.items():
        lines += ["", f"[{section}]"]
        for f in fields(cls):
            key = f"{section}.{f.name}"
            pf = fit.params[key]
            if pf.identified and pf.draws is not None:
                kind = "calibration"
                src = (
                    f"{kind}: fitted by hiseg-sim fit-profile to {fit.n_sessions} sessions, {fit.n_episodes} nodules "
                    f"({date}); 90 % credible interval [{pf.lo:.4g}, {pf.hi:.4g}]"
                )
                draws = " ".join(f"{v:.5g}" for v in pf.draws)
                lines.append(
                    f"{f.name} = {{value = {_toml_value(pf.value)}, source = {_toml_value(src)}, "
                    f"note = {_toml_value(DRAWS_PREFIX + ' ' + draws)}}}"
                )
            else:
                src = base.sources.get(key) or "assumption: kept from the base profile"
                why = (
                    "not identified by the sessions (90 % interval "
                    f"[{pf.lo:.4g}, {pf.hi:.4g}], posterior about the prior); kept from the base profile"
                    if pf.lo != pf.hi
                    else "not fitted: the sessions do not identify it; kept from the base profile"
                )
                lines.append(
                    f"{f.name} = {{value = {_toml_value(base.value(key))}, source = {_toml_value(src)}, "
                    f"note = {_toml_value(why)}}}"
                )
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines) + "\n")
    return p
