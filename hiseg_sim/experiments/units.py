"""Work units and episode seeds: the deterministic plan of a study.

A *work unit* is what one worker runs in one go and what one set of Parquet shards holds:

- ``design = "crossed"``: one segmenter x one case, every arm x replicate on it (each episode a
  fresh person). Batching by case means a worker encodes the case's slice once and reuses it
  from memory for every episode.
- ``design = "sequence"``: one segmenter x one arm x one replicate: one simulated person working
  through ``length`` cases in order, learning between them (feedback on the first ``practice``).

Every episode's seed comes from :func:`episode_seed`, a :class:`numpy.random.SeedSequence` of
(study seed, arm label, case id, replicate) — not of the order units run in, the executor or
the worker — so a resumed run, or one on another executor, produces the same episodes. The
segmenter is deliberately *not* in the seed: the same person meets the same viewport on every
segmenter, so segmenter comparisons are paired.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from hiseg_sim.experiments.spec import StudySpec
from hiseg_sim.seeding import episode_seed, sequence_rng, stable_int

__all__ = ["EpisodePlan", "WorkUnit", "stable_int", "episode_seed", "sequence_order", "plan_units"]


@dataclass(frozen=True)
class EpisodePlan:
    """One episode to run: which arm, case and replicate, its seed, and what feedback follows it."""

    arm: str
    case_id: str
    replicate: int
    position: int
    seed: int
    feedback: str = "none"


@dataclass(frozen=True)
class WorkUnit:
    """A batch of episodes run together and stored together (see the module docstring)."""

    unit_id: str
    design: str
    segmenter: str
    case_ids: tuple[str, ...]
    episodes: tuple[EpisodePlan, ...]
    arm: str | None = None
    replicate: int | None = None


def sequence_order(study_seed: int, case_ids: list[str], replicate: int, length: int) -> list[str]:
    """The cases replicate ``replicate`` of a sequence study works through: a seeded permutation,
    the same for every arm (so arms are compared on the same order), first ``length``."""
    if length > len(case_ids):
        raise ValueError(f"[run] length = {length} but the study has only {len(case_ids)} case(s)")
    rng = sequence_rng(study_seed, replicate)
    return [case_ids[i] for i in rng.permutation(len(case_ids))[:length]]


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:48]
    return f"{s}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def plan_units(spec: StudySpec, case_ids: list[str]) -> list[WorkUnit]:
    """All work units of ``spec`` over ``case_ids``, in a fixed order."""
    units: list[WorkUnit] = []
    for seg in spec.active_segmenters():
        seg_slug = re.sub(r"[^A-Za-z0-9]+", "_", seg.rsplit(":", 1)[-1])
        if spec.run.design == "crossed":
            for cid in case_ids:
                crossed: list[EpisodePlan] = []
                for arm in spec.annotators:
                    for rep in range(spec.replicates_of(arm)):
                        crossed.append(
                            EpisodePlan(
                                arm.label,
                                cid,
                                rep,
                                0,
                                episode_seed(spec.seed, arm.name if spec.run.paired else arm.label, cid, rep),
                                arm.feedback,
                            )
                        )
                units.append(WorkUnit(f"{seg_slug}--{_slug(cid)}", "crossed", seg, (cid,), tuple(crossed)))
        else:
            length = len(case_ids) if spec.run.length is None else int(spec.run.length)
            for arm in spec.annotators:
                practice = length if arm.practice is None else arm.practice
                seed_key = arm.name if spec.run.paired else arm.label
                for rep in range(spec.replicates_of(arm)):
                    order = sequence_order(spec.seed, case_ids, rep, length)
                    eps = tuple(
                        EpisodePlan(
                            arm.label,
                            cid,
                            rep,
                            pos,
                            episode_seed(spec.seed, seed_key, cid, rep),
                            arm.feedback if pos < practice else "none",
                        )
                        for pos, cid in enumerate(order)
                    )
                    units.append(
                        WorkUnit(
                            f"{seg_slug}--{_slug(arm.label)}--r{rep:03d}",
                            "sequence",
                            seg,
                            tuple(dict.fromkeys(order)),
                            eps,
                            arm.label,
                            rep,
                        )
                    )
    ids = [u.unit_id for u in units]
    assert len(set(ids)) == len(ids), "unit ids must be unique"
    return units
