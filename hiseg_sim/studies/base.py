"""The contract of a kind of study, and running a study of any kind with its report."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hiseg_sim.experiments.spec import STUDY_KINDS, SpecError, StudySpec

__all__ = ["COMMON_KEYS", "Interrupted", "StudyKind", "announce_run", "resume_hint", "run_and_report", "run_state"]

#: ``[analysis]`` keys every kind reads.
COMMON_KEYS = {
    "n_boot": "bootstrap replicates of every interval (default 2000)",
    "seed": "seed of the bootstrap (default 0)",
}


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

    def run(
        self, spec: StudySpec, out_dir: str | os.PathLike | None = None, *, report: bool = True, **run_kwargs: Any
    ) -> tuple[Any, Any]:
        """Run the study (resuming) and, with ``report``, write its report; ``(RunData, Report | None)``.

        Says on stderr what it does with the run directory (a new run, a resumed one with the units
        already done, a finished one reused) and, on Ctrl-C, that running the same command again
        resumes."""
        from hiseg_sim.experiments.runner import default_run_dir, run_study

        run_dir = Path(out_dir) if out_dir is not None else default_run_dir(spec)
        announce_run(run_dir, spec.config_hash(), bool(run_kwargs.get("fresh")))
        with resume_hint(run_dir):
            data = run_study(spec, run_dir, **run_kwargs)
        rep = None
        if report:
            from hiseg_sim.analysis.report import build_report

            rep = build_report(data.dir)
        return data, rep

    def print_summary(self, result: tuple[Any, Any], echo: Callable[[str], None]) -> None:
        """What the CLI prints after :meth:`run`."""
        from hiseg_sim.analysis.section import fmt_ci

        data, rep = result
        if rep is None:
            echo(f"rows in {data.dir}")
            return
        for name, g in (rep.headline.get("groups") or {}).items():
            echo(
                f"{name:>28}: Dice {fmt_ci(g['dice'], g['dice_lo'], g['dice_hi'])}  "
                f"{g['seconds']:.1f} s  {g['prompts']:.1f} prompts  (n={g['n']})"
            )
        for line in rep.headline.get("findings", [])[:3]:
            echo(f"- {line}")
        echo(f"report: {rep.html_path} ({rep.md_path.name}, {len(rep.figures)} figures)")


def run_state(run_dir: str | os.PathLike, config_hash: str) -> tuple[str, int, int]:
    """What ``run_dir`` holds for a study of ``config_hash``: ``(state, units done, units)`` with state
    ``"new"`` (no run there), ``"other"`` (a run of another configuration), ``"partial"`` or
    ``"finished"``. Units done are those with a manifest (checked in full when the run resumes)."""
    from hiseg_sim.experiments.storage import RunMismatchError, RunStore

    store = RunStore(Path(run_dir))
    try:
        meta = store.read_meta()
    except RunMismatchError:
        return "other", 0, 0
    if meta is None:
        return "new", 0, 0
    if meta.get("config_hash") != config_hash:
        return "other", 0, 0
    n = int(meta.get("n_units") or 0)
    done = min(n, len(list(store.shards.glob("*.manifest.json")))) if store.shards.is_dir() else 0
    return ("finished" if n and done >= n and meta.get("status") == "complete" else "partial"), done, n


def announce_run(run_dir: str | os.PathLike, config_hash: str, fresh: bool = False) -> str:
    """Print on stderr what a run into ``run_dir`` will do (new, resumed, reused, afresh); returns the state."""
    from hiseg_sim.experiments.storage import RunLockedError, RunStore
    from hiseg_sim.progress import note

    state, done, n = run_state(run_dir, config_hash)
    if Path(run_dir).is_dir():
        try:  # another writer holds the directory: its refusal is the one line to print, not a plan
            with RunStore(run_dir).lock():
                pass
        except RunLockedError:
            return state
    if fresh and state != "new":
        note(f"starting afresh in {run_dir} (--fresh: its earlier run is deleted)")
    elif state == "new":
        note(f"new run in {run_dir}")
    elif state == "finished":
        note(f"{run_dir} already holds this run, finished ({n} of {n} units): reusing it (--fresh runs it again)")
    elif state == "partial":
        note(f"resuming {run_dir}: {done} of {n} units already done")
    return state


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, after the user was told how to resume (``reported``)."""

    reported = True


@contextmanager
def resume_hint(run_dir: str | os.PathLike):
    """On Ctrl-C inside the block: say that the finished units are kept and how to resume."""
    try:
        yield
    except KeyboardInterrupt as exc:
        from hiseg_sim.progress import note

        if not getattr(exc, "reported", False):
            note(f"interrupted: the finished units are kept in {run_dir}; run the same command again to resume")
        raise Interrupted() from None


def run_and_report(
    spec: StudySpec, out_dir: str | os.PathLike | None = None, *, report: bool = True, **run_kwargs: Any
) -> tuple[Any, Any]:
    """Run ``spec`` the way its kind runs, then report it: ``STUDY_KINDS.get(spec.kind).run(...)``."""
    return STUDY_KINDS.get(spec.kind).run(spec, out_dir, report=report, **run_kwargs)
