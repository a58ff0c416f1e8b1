"""The cases of a study: which ones (cheap, from the manifest) and the cases themselves (built on demand).

Building a phantom takes 0.1–1 s, so the runner plans work units from case *metadata* alone
(:meth:`CaseSource.catalogue`: ids, diameter, texture, size band, texture group, read from the
cohort manifest without building anything), and each worker builds only the cases of the units
it runs (:meth:`CaseSource.load`, remembered for the worker's later units).

>>> from hiseg_sim.experiments.spec import CasesSpec
>>> src = CaseSource(CasesSpec(cohort="default", per_stratum=1))
>>> len(src.catalogue())                      # doctest: +SKIP
12
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from hiseg_sim.experiments.spec import CasesSpec, SpecError

__all__ = ["CaseSource", "case_meta"]

META_KEYS = ("case_id", "diameter_mm", "texture", "size_band", "texture_group", "n_readers")


def case_meta(case) -> dict:
    """The metadata row of a built :class:`~hiseg_sim.data.case.Case` (size band and texture group
    derived when the case does not carry them)."""
    from hiseg_sim.data.cohort import size_band, texture_group

    m = case.meta
    d = float(case.diameter_mm)
    tex = m.get("texture")
    return {
        "case_id": case.case_id,
        "diameter_mm": round(d, 2),
        "texture": None if tex is None else int(tex),
        "size_band": m.get("size_band") or size_band(d),
        "texture_group": m.get("texture_group") or (texture_group(tex) if tex is not None else "unknown"),
        "n_readers": int(m.get("n_readers", len(case.reader_masks))),
    }


class CaseSource:
    """Picklable handle on a study's cases.

    Args:
        spec: the ``[cases]`` table.
        max_cached: built cases a worker keeps (phantoms are a few MB each).
    """

    def __init__(self, spec: CasesSpec, max_cached: int = 256) -> None:
        self.spec = spec
        self.max_cached = int(max_cached)
        self._catalogue: list[dict] | None = None
        self._built: OrderedDict[str, Any] = OrderedDict()
        self._all: dict | None = None  # source=: every case the function returned

    def __getstate__(self):
        return {"spec": self.spec, "max_cached": self.max_cached}

    def __setstate__(self, state):
        CaseSource.__init__(self, state["spec"], state["max_cached"])

    # ---- which cases ----------------------------------------------------------------------
    def catalogue(self) -> list[dict]:
        """Metadata rows (:data:`META_KEYS`) of the selected cases, in study order."""
        if self._catalogue is None:
            rows = (
                self._cohort_rows()
                if self.spec.source is None
                else [case_meta(c) for c in self._source_cases().values()]
            )
            self._catalogue = self._select(rows)
        return list(self._catalogue)

    def _select(self, rows: list[dict]) -> list[dict]:
        s = self.spec
        where = f"[cases] ({s.cohort or s.source})"
        if s.ids:
            have = {r["case_id"]: r for r in rows}
            missing = [i for i in s.ids if i not in have]
            if missing:
                raise SpecError(f"{where} ids: {missing[:3]} not among the {len(rows)} case(s)")
            rows = [have[i] for i in s.ids]
        if s.per_stratum is not None:
            seen: dict[tuple, int] = {}
            keep = []
            for r in rows:
                k = (r["size_band"], r["texture_group"])
                if seen.get(k, 0) < s.per_stratum:
                    keep.append(r)
                    seen[k] = seen.get(k, 0) + 1
            rows = keep
        if s.limit is not None:
            rows = rows[: s.limit]
        if not rows:
            raise SpecError(f"{where}: no cases selected")
        return rows

    def _cohort_rows(self) -> list[dict]:
        from hiseg_sim.data.cohort import read_manifest

        man = read_manifest()
        if self.spec.cohort not in man["cohorts"]:
            raise SpecError(
                f"[cases] cohort: unknown cohort {self.spec.cohort!r}; the manifest has {sorted(man['cohorts'])}"
            )
        rows = []
        for e in man["cohorts"][self.spec.cohort]["cases"]:
            rows.append(
                {
                    "case_id": e["nodule_id"],
                    "diameter_mm": float(e["diameter_mm"]),
                    "texture": int(e["texture"]),
                    "size_band": e["size_band"],
                    "texture_group": e["texture_group"],
                    "n_readers": int(e.get("n_readers", 0)),
                }
            )
        return rows

    def _source_cases(self) -> dict:
        if self._all is None:
            from hiseg_sim.data.sources import load_cases

            assert self.spec.source is not None  # the caller checked
            cases = load_cases(self.spec.source, **self.spec.kwargs)
            ids = [c.case_id for c in cases]
            if len(set(ids)) != len(ids):
                raise SpecError(f"[cases] source {self.spec.source!r} returned duplicate case ids")
            self._all = {c.case_id: c for c in cases}
        return self._all

    # ---- the cases themselves -------------------------------------------------------------
    def load(self, ids) -> list:
        """The :class:`~hiseg_sim.data.case.Case` objects of ``ids``, in that order (built once, then remembered)."""
        ids = list(ids)
        want = [i for i in ids if i not in self._built]
        if want:
            if self.spec.source is not None:
                allc = self._source_cases()
                new = {i: allc[i] for i in want}
            else:
                new = self._build_cohort(want)
            for i, c in new.items():
                self._built[i] = c
        out = []
        for i in ids:
            self._built.move_to_end(i)
            out.append(self._built[i])
        while len(self._built) > max(self.max_cached, len(ids)):
            self._built.popitem(last=False)
        return out

    def _build_cohort(self, ids: list[str]) -> dict:
        from hiseg_sim.data.cohort import load_cohort, read_manifest

        man = read_manifest()
        assert self.spec.cohort is not None  # a spec has a cohort or a source
        coh = man["cohorts"][self.spec.cohort]
        entries = {e["nodule_id"]: e for e in coh["cases"]}
        missing = [i for i in ids if i not in entries]
        if missing:
            raise SpecError(f"[cases] cohort {self.spec.cohort!r} has no case {missing[0]!r}")
        sub = {**man, "cohorts": {self.spec.cohort: {**coh, "cases": [entries[i] for i in ids]}}}
        cases = load_cohort(self.spec.cohort, manifest=sub, db=_lidc_db)
        return {c.case_id: c for c in cases}


_DB: list = []


def _lidc_db():
    """One LIDC database handle per process (opening it reads the sqlite file: ~1–2 s)."""
    if not _DB:
        from hiseg_sim.data.lidc import LidcDatabase

        _DB.append(LidcDatabase())
    return _DB[0]
