"""The contract of a kind of study, and running a study of any kind with its report."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Callable

from hiseg_sim.experiments.spec import STUDY_KINDS, SpecError, StudySpec

__all__ = ["COMMON_KEYS", "StudyKind", "run_and_report"]

#: ``[analysis]`` keys every kind reads.
COMMON_KEYS = {"n_boot": "bootstrap replicates of every interval (default 2000)",
               "seed": "seed of the bootstrap (default 0)"}


class StudyKind:
    """One kind of study (``[study] kind = "<name>"``).

    Subclass and set :attr:`name` and :attr:`analysis_keys`, implement :meth:`sections`; override
    :meth:`run` when the kind does more than run episodes (the downstream study trains networks).

    Attributes:
        name: the kind's name in specs.
        analysis_keys: the ``[analysis]`` keys it reads, key → meaning (besides :data:`COMMON_KEYS`);
            any other key is a spec error, so a typo is never silently ignored.
        label_keys: ``[analysis]`` keys whose value must be an arm label of the spec.
    """

    name: str = ""
    analysis_keys: dict[str, str] = {}
    label_keys: tuple[str, ...] = ()

    def validate(self, spec: StudySpec, where: str) -> None:
        """Check the spec's ``[analysis]`` table against this kind; :class:`SpecError` naming the key."""
        known = {**COMMON_KEYS, **self.analysis_keys}
        for key in spec.analysis:
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; {self.name} studies read: {', '.join(known)}"
                raise SpecError(f"{where}: [analysis] unknown key {key!r}{hint}")
        labels = [a.label for a in spec.annotators]
        for key in self.label_keys:
            v = spec.analysis.get(key)
            if isinstance(v, str) and v not in labels:
                raise SpecError(f"{where}: [analysis] {key}: {v!r} is not an arm label; arms: {labels}")

    def sections(self, data, settings: dict, out: Path) -> tuple[list, dict]:
        """The report's sections and headline numbers from the run's tables
        (:class:`~hiseg_sim.experiments.storage.RunData`)."""
        raise NotImplementedError(f"study kind {self.name!r} has no report sections")

    def run(self, spec: StudySpec, out_dir: str | os.PathLike | None = None, *, report: bool = True,
            **run_kwargs: Any) -> tuple[Any, Any]:
        """Run the study (resuming) and, with ``report``, write its report; ``(RunData, Report | None)``."""
        from hiseg_sim.experiments.runner import run_study

        data = run_study(spec, out_dir, **run_kwargs)
        rep = None
        if report:
            from hiseg_sim.analysis.report import build_report

            rep = build_report(data.dir)
        return data, rep

    def print_summary(self, result: tuple[Any, Any], echo: Callable[[str], None]) -> None:
        """What the CLI prints after :meth:`run`."""
        data, rep = result
        if rep is None:
            echo(f"rows in {data.dir}")
            return
        for name, g in (rep.headline.get("groups") or {}).items():
            echo(f"{name:>28}: Dice {g['dice']:.3f} [{g['dice_lo']:.3f}, {g['dice_hi']:.3f}]  "
                 f"{g['seconds']:.1f} s  {g['prompts']:.1f} prompts  (n={g['n']})")
        echo(f"report: {rep.html_path} ({rep.md_path.name}, {len(rep.figures)} figures)")


def run_and_report(spec: StudySpec, out_dir: str | os.PathLike | None = None, *, report: bool = True,
                   **run_kwargs: Any) -> tuple[Any, Any]:
    """Run ``spec`` the way its kind runs, then report it: ``STUDY_KINDS.get(spec.kind).run(...)``."""
    return STUDY_KINDS.get(spec.kind).run(spec, out_dir, report=report, **run_kwargs)
