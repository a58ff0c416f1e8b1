"""What a trace says about a person: the data each part of the fit reads, and its likelihood.

Three parts, each a function of the recorded sessions alone (plus each case's pixel size and
reference outline in the viewport):

*Time* (:class:`TimeData`, :func:`time_loglik`): the seconds of each action given its kind, read
exactly as the env charges them (:func:`hiseg_sim.timing.action_seconds`): mental preparations,
keys, Fitts-law pointing from where the pointer was to where the action put it (the pointer
starts at the viewport's centre), the mouse click and the decode latency. The person's factors
multiply these parts: ``M × m(n)`` with ``m(n) = 1 + (m - 1) n^-a_M`` for ``m > 1`` (the power law
of practice toward the keystroke-level M; ``n`` the nodule's place in the session, from 1),
pointing and clicks ``× (s + (1 - s) n^-a_P)``, keys ``× key_scale``; the pointing target is the
effective width of the click scatter, ``We = 4.133 point_sd_mm`` (corners twice that;
:func:`hiseg_sim.annotators.behaviour.execution.time_model_for`). The likelihood is log-normal
around that prediction with a free SD (a person's seconds vary; the simulator's do not).

*Boxes* (:class:`BoxData`): each episode's first box (drawn before any redrawing) against the
reference outline's tight box, per side in mm (outward positive); sides the viewport clipped are
left out.

*Decisions* (:class:`DecisionData`, :func:`judgement_loglik`, :func:`strategy_loglik`): after each
prompt, whether the person took it back (undo) given how much the Dice changed; after each prompt
or undo, whether they accepted given the Dice and the actions taken so far on the slice; and
which prompt they chose (opening or correction) given the values their gains so far would have
taught them (:mod:`hiseg_sim.annotators.behaviour.learning`). The person judges against their own
intent, which a trace does not hold; these likelihoods read the Dice against the case's reference
instead. That is a *proxy*: its estimates are shifted from the person's parameters by how the
intent differs from the reference, and the fit corrects the shift by simulation
(:mod:`hiseg_sim.fitting.fit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr, ndtr

from hiseg_sim.fitting.sessions import Session

__all__ = [
    "BoxData",
    "DecisionData",
    "TimeData",
    "box_data",
    "decision_data",
    "judgement_loglik",
    "strategy_loglik",
    "time_data",
    "time_loglik",
]

_K, _M, _B = 0.20, 1.35, 0.20
_FITTS_A, _FITTS_B = 1.03, 0.096
_WE = 4.133
_SCREEN = 4.0
_DECODE = 0.06
_REFUSED = {"zero_area_box", "prompt_rejected", "nothing_to_propagate", "no_slice_there"}
_MIN_ROOM = 0.05  # as hiseg_sim.annotators.behaviour.learning.relative_gain


def _kind(rec: dict) -> str:
    a = rec["action"]
    return str(a.get("kind")) if isinstance(a, dict) else str(a)


# ---- time --------------------------------------------------------------------------------------
@dataclass
class TimeData:
    """Per action: seconds observed, practice index ``n``, mental operators, key seconds, latency,
    the two pointing distances (screen px; 0 = none), whether each is to a corner, the click
    seconds and the pixel size (mm)."""

    seconds: np.ndarray
    n: np.ndarray
    mental: np.ndarray
    keys: np.ndarray
    latency: np.ndarray
    d1: np.ndarray
    d2: np.ndarray
    corner1: np.ndarray
    corner2: np.ndarray
    click: np.ndarray
    px: np.ndarray

    def __len__(self) -> int:
        return int(self.seconds.size)


def time_data(sessions: list[Session], spacing: dict[str, tuple[float, float]]) -> TimeData:
    """The time data of every action with positive seconds (see the module docstring)."""
    cols: dict[str, list] = {k: [] for k in TimeData.__dataclass_fields__}
    for s in sessions:
        for ep in s.episodes:
            size = float(ep.viewport.get("size", 96))
            pointer = (size / 2.0, size / 2.0)
            tool = None
            px = float(np.mean(spacing[ep.case]))
            for rec in ep.records:
                kind = _kind(rec)
                a = rec["action"]
                code = str(rec.get("invalid_action") or "")
                mental = keys = lat = click = 0.0
                d1 = d2 = 0.0
                c1 = c2 = False
                if kind == "point":
                    xy = (float(a["x"]), float(a["y"]))
                    mental = 1
                    keys = _K if tool == "box" else 0.0
                    d1 = float(np.hypot(xy[0] - pointer[0], xy[1] - pointer[1])) * _SCREEN
                    click = _B
                    pointer, tool = xy, "point"
                    lat = _DECODE if code not in _REFUSED else 0.0
                elif kind == "box":
                    p1, p2 = (float(a["x0"]), float(a["y0"])), (float(a["x1"]), float(a["y1"]))
                    mental = 1
                    keys = _K if tool == "point" else 0.0
                    d1 = float(np.hypot(p1[0] - pointer[0], p1[1] - pointer[1])) * _SCREEN
                    d2 = float(np.hypot(p2[0] - p1[0], p2[1] - p1[1])) * _SCREEN
                    c1 = c2 = True
                    click = _B
                    pointer, tool = p2, "box"
                    lat = _DECODE if code not in _REFUSED else 0.0
                elif kind == "undo":
                    mental, keys = 1, 2 * _K
                elif kind == "accept":
                    mental, keys = 1, _K
                elif kind in ("next", "prev"):
                    keys = _K
                elif kind == "propagate":
                    mental, keys = 1, 2 * _K
                    lat = _DECODE if code not in _REFUSED else 0.0
                sec = float(rec["seconds"])
                if not sec > 0:
                    continue
                for k, v in (
                    ("seconds", sec),
                    ("n", ep.order + 1),
                    ("mental", mental),
                    ("keys", keys),
                    ("latency", lat),
                    ("d1", d1),
                    ("d2", d2),
                    ("corner1", c1),
                    ("corner2", c2),
                    ("click", click),
                    ("px", px),
                ):
                    cols[k].append(v)
    return TimeData(**{k: np.asarray(v, float) for k, v in cols.items()})


#: Time parameters in the order of :func:`time_loglik`'s columns, with their uniform priors.
TIME_PARAMS = (
    ("m", (0.3, 4.0)),  # mental_scale * (1 + hesitation)
    ("time.mental_practice_exp", (0.0, 1.2)),
    ("time.motor_practice_exp", (0.0, 1.2)),
    ("time.motor_practised_share", (0.2, 1.0)),
    ("time.key_scale", (0.2, 4.0)),
    ("execution.point_sd_mm", (0.05, 3.0)),
    ("log_sd", (np.log(0.003), np.log(2.0))),
)


def _fitts(d: np.ndarray, w: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = _FITTS_A + _FITTS_B * np.log2(d / w + 0.5)
    return np.where(d >= 1.0, np.maximum(t, 0.0), 0.0)


def time_predict(td: TimeData, theta: np.ndarray) -> np.ndarray:
    """Predicted seconds ``(n_chains, n_actions)`` for parameter rows ``theta`` (columns of :data:`TIME_PARAMS`)."""
    th = np.atleast_2d(theta)
    m, a_m, a_p, share, key, psd = (th[:, i : i + 1] for i in range(6))
    n = td.n[None, :]
    mental = np.where(m > 1.0, 1.0 + (m - 1.0) * n ** (-a_m), m)
    motor = share + (1.0 - share) * n ** (-a_p)
    w = _WE * psd / td.px[None, :] * _SCREEN
    point = _fitts(td.d1[None, :], np.where(td.corner1[None, :] > 0, 2 * w, w))
    point = point + _fitts(td.d2[None, :], np.where(td.corner2[None, :] > 0, 2 * w, w))
    return mental * _M * td.mental + motor * (point + td.click) + key * td.keys + td.latency


def time_loglik(td: TimeData, theta: np.ndarray) -> np.ndarray:
    """Log-normal log-likelihood of the observed seconds, per parameter row."""
    th = np.atleast_2d(theta)
    mu = np.maximum(time_predict(td, th), 1e-6)
    sd = np.exp(th[:, 6:7])
    z = (np.log(td.seconds)[None, :] - np.log(mu)) / sd
    return np.sum(-0.5 * z * z - np.log(sd), axis=1)


# ---- boxes -------------------------------------------------------------------------------------
@dataclass
class BoxData:
    """Per first box: the mean outward offset of its unclipped sides (mm), their within-box sum of
    squares and the number of sides."""

    mean: np.ndarray
    ss: np.ndarray
    k: np.ndarray

    def __len__(self) -> int:
        return int(self.mean.size)

    def stats(self) -> dict:
        """Margin estimate (median of the boxes' mean offsets), its standard error, the within-box
        variance of the sides and its degrees of freedom. Robust: a box drawn round a vessel the
        person took in, or round the wrong spot, sits millimetres off the reference and would
        dominate means and sums of squares, so medians are used (scaled to the normal's SD)."""
        four = self.k == 4
        if len(self) < 2 or four.sum() < 2:
            return {"margin": np.nan, "se": np.nan, "within": np.nan, "df": 0}
        med = float(np.median(self.mean))
        mad = 1.4826 * float(np.median(np.abs(self.mean - med)))
        # per box of 4 sides, ss / 3 ~ sigma^2 chi2_3 / 3, whose median is 0.789 sigma^2
        within = float(np.median(self.ss[four] / 3.0) / 0.789)
        return {
            "margin": med,
            "se": 1.253 * mad / np.sqrt(len(self)),
            "within": within,
            "df": float(3 * four.sum()) * 0.5,  # a median uses about half the information of a mean
        }


def box_data(sessions: list[Session], references: dict) -> BoxData:
    """Each episode's first box against the reference's tight box (``references[(case, viewport
    key)] = (bool (n, S, S) reference in the viewport, (sy, sx) mm)``)."""
    means, sss, ks = [], [], []
    for s in sessions:
        for ep in s.episodes:
            ref, (sy, sx) = references[_ref_key(ep)]
            for rec in ep.records:
                if _kind(rec) != "box" or rec.get("invalid_action") in _REFUSED:
                    continue
                a = rec["action"]
                prompt = rec.get("prompt") or {}
                z = int(prompt.get("slice", ep.viewport.get("z0", 0))) - int(ep.viewport.get("z0", 0))
                g = ref[min(max(z, 0), ref.shape[0] - 1)]
                if not g.any():
                    break
                ys, xs = np.flatnonzero(g.any(axis=1)), np.flatnonzero(g.any(axis=0))
                size = g.shape[-1]
                x0, x1 = sorted((float(a["x0"]), float(a["x1"])))
                y0, y1 = sorted((float(a["y0"]), float(a["y1"])))
                sides = [
                    ((xs[0] - x0) * sx, x0 > 0.5),
                    ((ys[0] - y0) * sy, y0 > 0.5),
                    ((x1 - xs[-1]) * sx, x1 < size - 1.5),
                    ((y1 - ys[-1]) * sy, y1 < size - 1.5),
                ]
                o = np.array([v for v, ok in sides if ok], float)
                if o.size >= 2:
                    means.append(o.mean())
                    sss.append(float(((o - o.mean()) ** 2).sum()))
                    ks.append(o.size)
                break  # the first box only: later ones may be redrawn tighter or looser
    return BoxData(np.asarray(means, float), np.asarray(sss, float), np.asarray(ks, float))


def _ref_key(ep) -> tuple:
    vp = ep.viewport
    return (ep.case, int(vp.get("z0", 0)), int(vp.get("n_slices", 1)), int(vp.get("y0", 0)), int(vp.get("x0", 0)))


# ---- decisions ---------------------------------------------------------------------------------
@dataclass
class DecisionData:
    """Undo decisions (Dice change of the prompt, taken back or not), accept decisions (Dice,
    actions so far on the slice, accepted or not) and, per person, the prompt-choice events."""

    undo_delta: np.ndarray
    undo_y: np.ndarray
    acc_dice: np.ndarray
    acc_n: np.ndarray
    acc_y: np.ndarray
    events: list  # per person: list of (tag, ...) tuples in order
    arrays: dict | None = None  # the events as padded arrays (built by decision_data)


def decision_data(sessions: list[Session]) -> DecisionData:
    """Read the decisions of every episode (see :class:`DecisionData`)."""
    ud, uy, ad, an, ay = [], [], [], [], []
    events = []
    for s in sessions:
        ev: list = []
        for ep in s.episodes:
            recs = [r for r in ep.records if str(r.get("invalid_action") or "") not in _REFUSED]
            kinds = [_kind(r) for r in recs]
            dice_after = [float(r["dice"]) for r in recs]
            n_on_slice = 0
            has_box = False
            first = True
            standing: list[float] = []  # Dice before each standing prompt (what an undo restores)
            d_now = 0.0
            for i, k in enumerate(kinds):
                nxt = kinds[i + 1] if i + 1 < len(kinds) else None
                if k in ("point", "box"):
                    n_on_slice += 1
                    kind = "point" if k == "point" else ("rebox" if has_box else "box")
                    if first:
                        two = nxt == "point" and k == "box"
                        ev.append(("open", k, two))
                        first = False
                    else:
                        ev.append(("corr", kind, has_box))
                    before, after = d_now, dice_after[i]
                    undone = nxt == "undo"
                    if i > 0:
                        ud.append(after - before)
                        uy.append(undone)
                    ev.append(("update", kind, before, after, undone))
                    standing.append(before)
                    has_box = has_box or k == "box"
                    d_now = after
                elif k == "undo":
                    n_on_slice += 1
                    d_now = standing.pop() if standing else 0.0
                    d_now = dice_after[i]
                elif k == "accept":
                    pass
                else:  # scrolling or propagation: a new slice (3-D) starts its own count
                    n_on_slice = 0
                    has_box = k == "propagate"
                    first = k != "propagate"
                    standing = []
                    d_now = dice_after[i]
                    continue
                if k in ("point", "box", "undo") and nxt is not None and nxt != "undo":
                    if nxt in ("point", "box", "accept"):
                        ad.append(d_now)
                        an.append(n_on_slice)
                        ay.append(nxt == "accept")
        events.append(ev)
    f = np.asarray
    return DecisionData(
        f(ud, float), f(uy, float), f(ad, float), f(an, float), f(ay, float), events, _event_arrays(events)
    )


#: Judgement parameters (columns of :func:`judgement_loglik`) and their uniform priors.
JUDGEMENT_PARAMS = (
    ("judgement.accept_threshold", (0.5, 1.0)),
    ("judgement.quality_sd", (0.005, 0.3)),
    ("give_up_rate", (0.0, 0.6)),
    ("judgement.patience", (1.0, 31.0)),
    ("judgement.undo_margin", (0.0, 0.3)),
    ("undo_sd", (0.005, 0.5)),
)


def judgement_loglik(dd: DecisionData, theta: np.ndarray) -> np.ndarray:
    """Pseudo-log-likelihood of the accept and undo decisions (Dice against the reference as the
    person's perceived quality), per parameter row.

    Accept: certain once the actions on the slice reach ``patience``; before, with probability
    ``1 - (1 - Φ((d - accept_threshold) / quality_sd)) (1 - g)``, ``g`` the chance of giving up
    for another reason (a stall, a small expected gain). Undo: ``Φ((-Δd - undo_margin) / s_u)``.
    """
    th = np.atleast_2d(theta)
    thr, qsd, g, pat, um, usd = (th[:, i : i + 1] for i in range(6))
    out = np.zeros(th.shape[0])
    if dd.acc_y.size:
        p_good = ndtr((dd.acc_dice[None, :] - thr) / qsd)
        p = 1.0 - (1.0 - p_good) * (1.0 - g)
        p = np.where(dd.acc_n[None, :] >= np.floor(pat), 1.0 - 1e-3, p)
        p = np.clip(p, 1e-9, 1 - 1e-9)
        y = dd.acc_y[None, :]
        out += np.sum(y * np.log(p) + (1 - y) * np.log1p(-p), axis=1)
    if dd.undo_y.size:
        z = (-dd.undo_delta[None, :] - um) / usd
        y = dd.undo_y[None, :]
        out += np.sum(y * log_ndtr(z) + (1 - y) * log_ndtr(-z), axis=1)
    return out


#: Strategy parameters (columns of :func:`strategy_loglik`) and their uniform priors.
STRATEGY_PARAMS = (
    ("strategy.prior_point", (-0.5, 1.0)),
    ("strategy.prior_box", (-0.5, 1.0)),
    ("strategy.prior_rebox", (-0.5, 1.0)),
    ("learning.learning_rate", (0.0, 1.0)),
)


def _event_arrays(events: list) -> dict:
    """The persons' choice events as padded arrays ``(n_events, n_persons)`` (persons side by side,
    so the sequential value updates run once per event index, not once per event)."""
    n_p = len(events)
    length = max((len(e) for e in events), default=0)
    tag = np.zeros((length, n_p), np.int8)  # 0 none, 1 opening, 2 correction, 3 value update
    code = np.zeros((length, n_p), np.int8)  # opening: 0 point, 1 box, 2 box then point; correction: 0 point, 1 box
    other = np.ones((length, n_p), np.int8)  # correction's alternative: 1 box, 2 rebox; update: the kind
    gain = np.zeros((length, n_p))
    idx = {"point": 0, "box": 1, "rebox": 2}
    for j, ev in enumerate(events):
        for i, e in enumerate(ev):
            if e[0] == "open":
                tag[i, j] = 1
                code[i, j] = 0 if e[1] == "point" else (2 if e[2] else 1)
            elif e[0] == "corr":
                tag[i, j] = 2
                code[i, j] = 0 if e[1] == "point" else 1
                other[i, j] = 2 if e[2] else 1
            else:
                _, kind, before, after, undone = e
                tag[i, j] = 3
                other[i, j] = idx[kind]
                gain[i, j] = 0.0 if undone else float(np.clip((after - before) / max(1.0 - before, _MIN_ROOM), -1, 1))
    return {"tag": tag, "code": code, "other": other, "gain": gain}


def strategy_loglik(dd: DecisionData, theta: np.ndarray, temperature: float, epsilon: float, combo_bias: float):
    """Log-likelihood of the prompt choices (openings and corrections) per parameter row, the values
    learned from relative Dice gains (``learning_rate``) starting at the priors; ``temperature``,
    ``epsilon`` and ``combo_bias`` as the base profile's. An opening of a box followed at once by a
    click is the box-and-click opening or a box then a click correction (counted as half the box
    opening's probability)."""
    th = np.atleast_2d(theta)
    arr = dd.arrays if dd.arrays is not None else _event_arrays(dd.events)
    n_c = th.shape[0]
    n_p = arr["tag"].shape[1]
    v = np.repeat(th[None, :, :3].transpose(2, 0, 1), n_p, axis=1)  # (3 kinds, persons, chains)
    lr = th[None, :, 3]
    out = np.zeros((n_p, n_c))
    t = max(float(temperature), 1e-6)
    eps = float(epsilon)
    rows = np.arange(n_p)
    for i in range(arr["tag"].shape[0]):
        tag, code, other, gain = (arr[k][i] for k in ("tag", "code", "other", "gain"))
        if (tag == 1).any():
            prefs = np.stack([v[0], v[1], 0.5 * (v[0] + v[1]) + combo_bias])
            z = np.exp((prefs - prefs.max(axis=0)) / t)
            soft = eps / 3 + (1 - eps) * z / z.sum(axis=0)
            p = np.where(
                (code == 0)[:, None], soft[0], np.where((code == 1)[:, None], soft[1], soft[2] + 0.5 * soft[1])
            )
            out += np.where((tag == 1)[:, None], np.log(np.clip(p, 1e-12, 1.0)), 0.0)
        if (tag == 2).any():
            alt = v[other.astype(int), rows]  # (persons, chains)
            p_point = eps / 2 + (1 - eps) / (1.0 + np.exp(np.clip((alt - v[0]) / t, -500, 500)))
            p = np.where((code == 0)[:, None], p_point, 1.0 - p_point)
            out += np.where((tag == 2)[:, None], np.log(np.clip(p, 1e-12, 1.0)), 0.0)
        if (tag == 3).any():
            k = other.astype(int)
            cur = v[k, rows]
            new = cur + lr * (gain[:, None] - cur)
            upd = (tag == 3)[:, None]
            v[k, rows] = np.where(upd, new, cur)
    return out.sum(axis=0)
