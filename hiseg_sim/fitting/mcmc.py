"""Posterior sampling for the fit: many random-walk Metropolis chains moved together.

Every parameter has a bounded uniform prior (``lo``, ``hi``); chains walk in the unbounded space
``u = logit((x - lo) / (hi - lo))`` (the Jacobian is added, so the prior stays uniform in ``x``),
with Gaussian proposals scaled by the chains' current covariance (2.38² / d, the optimal scaling
of Roberts, Gelman & Gilks 1997), adapted during burn-in. The log-likelihood is called on all
chains at once (an ``(n_chains, d)`` array in, ``(n_chains,)`` out), so a likelihood written with
numpy costs one pass over the data per step whatever the number of chains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["sample_posterior"]


def _to_x(u: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return lo + (hi - lo) / (1.0 + np.exp(-u))


def _log_jac(u: np.ndarray) -> np.ndarray:
    # d x / d u = (hi - lo) s (1 - s); the constant (hi - lo) cancels in acceptance ratios
    return np.sum(-np.logaddexp(0.0, -u) - np.logaddexp(0.0, u), axis=-1)


def sample_posterior(
    loglik: Callable[[np.ndarray], np.ndarray],
    bounds: Sequence[tuple[float, float]],
    rng: np.random.Generator,
    *,
    n_chains: int = 48,
    n_steps: int = 600,
    start: np.ndarray | None = None,
    n_init: int = 2000,
    polish: int = 0,
) -> np.ndarray:
    """Draws ``(n_chains * n_steps // 2, d)`` from the posterior ∝ likelihood × uniform prior.

    Args:
        loglik: ``(n, d)`` parameter array -> ``(n,)`` log-likelihoods (``-inf`` allowed).
        bounds: ``(lo, hi)`` per parameter.
        rng: the generator of the chains.
        n_chains, n_steps: chains and steps; the first half of the steps is burn-in.
        start: ``(d,)`` a point to start near; default: the best of ``n_init`` prior draws.
        n_init: prior draws scored to find where to start (one vectorised call).
        polish: at most this many likelihood calls of a Powell search from the start before the
            chains run (for sharp likelihoods that random-walk burn-in would take long to reach).
    """
    lo = np.array([b[0] for b in bounds], float)
    hi = np.array([b[1] for b in bounds], float)
    d = lo.size
    if start is None:
        u0 = rng.normal(0.0, 1.5, (n_init, d))
        lp0 = loglik(_to_x(u0, lo, hi)) + _log_jac(u0)
        lp0 = np.where(np.isfinite(lp0), lp0, -np.inf)
        top = u0[np.argsort(-lp0)[: max(n_chains, 2 * d + 2)]]
        centre, cov = top[0], np.cov(top.T).reshape(d, d) + 1e-6 * np.eye(d)
    else:
        s = np.clip((np.asarray(start, float) - lo) / (hi - lo), 1e-3, 1 - 1e-3)
        centre, cov = np.log(s / (1 - s)), np.eye(d) * 0.25
    if polish:
        from scipy.optimize import minimize

        def nll(v: np.ndarray) -> float:
            r = float((loglik(_to_x(v[None], lo, hi)) + _log_jac(v[None]))[0])
            return -r if np.isfinite(r) else 1e300

        res = minimize(nll, centre, method="Powell", options={"maxfev": int(polish), "xtol": 1e-4, "ftol": 1e-8})
        centre = res.x
        cov = cov * 0.01
    u = centre + rng.standard_normal((n_chains, d)) @ np.linalg.cholesky(cov * 0.25 + 1e-9 * np.eye(d)).T
    lp = loglik(_to_x(u, lo, hi)) + _log_jac(u)
    lp = np.where(np.isfinite(lp), lp, -np.inf)
    scale = 2.38 / np.sqrt(d)
    keep = []
    burn = n_steps // 2
    accepted = 0.0
    for t in range(n_steps):
        try:
            chol = np.linalg.cholesky(cov + 1e-9 * np.eye(d))
        except np.linalg.LinAlgError:
            chol = np.eye(d) * 0.1
        prop = u + scale * rng.standard_normal((n_chains, d)) @ chol.T
        lp_new = loglik(_to_x(prop, lo, hi)) + _log_jac(prop)
        lp_new = np.where(np.isfinite(lp_new), lp_new, -np.inf)
        with np.errstate(invalid="ignore"):
            ratio = lp_new - lp
        ok = np.log(rng.random(n_chains)) < np.where(np.isfinite(ratio), ratio, np.where(np.isfinite(lp_new), 1, -1))
        u = np.where(ok[:, None], prop, u)
        lp = np.where(ok, lp_new, lp)
        accepted = 0.9 * accepted + 0.1 * ok.mean()
        if t < burn:
            good = np.isfinite(lp)
            if good.sum() > d + 1:
                cov = 0.5 * cov + 0.5 * (np.cov(u[good].T).reshape(d, d) + 1e-6 * np.eye(d))
            # keep acceptance near a quarter: widen when too many moves pass, shrink when too few
            scale *= 1.1 if accepted > 0.3 else (0.9 if accepted < 0.15 else 1.0)
            if t == burn // 2:  # chains stuck far below the best restart from the best half
                order = np.argsort(-lp)
                half = n_chains // 2
                u[order[half:]] = u[order[:half]][: n_chains - half]
                lp[order[half:]] = lp[order[:half]][: n_chains - half]
        else:
            keep.append(_to_x(u, lo, hi))
    return np.concatenate(keep, axis=0)
