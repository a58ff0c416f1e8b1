"""Profiles fitted to recorded sessions (``hiseg-sim fit-profile``).

- :mod:`~hiseg_sim.fitting.sessions`: sessions directories (one JSON-lines trace per person) read
  and, from a simulated run, written;
- :mod:`~hiseg_sim.fitting.model`: what the traces say about time, boxes and decisions, and the
  likelihoods;
- :mod:`~hiseg_sim.fitting.mcmc`: the posterior sampler;
- :mod:`~hiseg_sim.fitting.fit`: the fit, its simulation-based correction, the fitted profile file;
- :mod:`~hiseg_sim.fitting.simulate`: simulated persons for the correction, recovery and
  predictive checks;
- :mod:`~hiseg_sim.fitting.checks`: parameter recovery and the posterior predictive check.

See ``docs/fitting.md`` for the design and the measured recovery.
"""
