"""Real annotation sessions in the browser, recorded action by action.

A local web page (:mod:`~hiseg_sim.annotate.app`, served by ``hiseg-sim annotate``,
:mod:`~hiseg_sim.annotate.cli`) where a person outlines the nodules of a cohort with the segmenter
behind it, through the same actions, viewport and lung window as the environments, because each
session *is* an env (:mod:`~hiseg_sim.annotate.session`). Every action, with its wall-clock time,
pointer position and the mask after it, is committed to an SQLite store before the page sees its
result (:mod:`~hiseg_sim.annotate.store`), sessions resume after a reload or a restart
(:mod:`~hiseg_sim.annotate.service`), and a session exports to the env's trace format and Parquet
(:mod:`~hiseg_sim.annotate.export`), so it replays in the env to the same masks.

Modules: :mod:`~hiseg_sim.annotate.schema` (every request, response and row, pydantic),
:mod:`~hiseg_sim.annotate.cases` (cohorts and the user's scans, pseudonymised),
:mod:`~hiseg_sim.annotate.prefetch` (encode neighbouring slices ahead), ``static/`` (the page).

This layer imports env, segmenters, data and experiments; nothing imports it but the CLI.
"""

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from hiseg_sim.annotate.app import create_app

        return create_app
    raise AttributeError(f"module 'hiseg_sim.annotate' has no attribute {name!r}")
