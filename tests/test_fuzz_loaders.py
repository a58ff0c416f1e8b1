"""Fuzz the file readers: truncated, garbled (byte flips), mixed-series, empty and misnamed input.

Every outcome must be one of:

- a volume whose slices are all accounted for: each file of the folder is either a slice
  (``meta["files"]``, one per slice) or listed in ``meta["ignored_files"]``, and each file that
  was a slice of the series before the damage and is not read is named in a warning, or (when
  its suffix says it is not DICOM, e.g. ``.txt``) in a log record of the reader;
- the documented error class (:class:`~hiseg_sim.data.case.CaseError`, of which
  :class:`~hiseg_sim.data.io.UnreadableFileError` is one) with a one-line message naming a file
  (or, for a folder with no file at all, the folder);

never a raw ``EOFError``/``IndexError``/``KeyError``/``zlib.error``, never a silently shorter volume.
Examples are derandomized (the same inputs on every run) and the hypothesis database is off, so
the tests write nothing into the working tree; ``HISEG_FUZZ_EXAMPLES=N`` runs N random examples each.
"""

from __future__ import annotations

import gzip
import logging
import os
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hiseg_sim.data.case import Case, CaseError
from hiseg_sim.data.case_cache import CorruptCaseCacheWarning, cached_case
from hiseg_sim.data.io import (
    UnreadableFileError,
    read_dicom_series,
    read_image,
    read_nifti,
)
from tests.test_io import ramp, write_slice

#: ``HISEG_FUZZ_EXAMPLES=2000`` runs a longer, randomized search (default: 40 fixed examples, a few seconds).
_DEEP = int(os.environ.get("HISEG_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_DEEP or 40,
    deadline=None,
    derandomize=not _DEEP,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

SERIES_A, SERIES_B = "1.2.826.0.1.3680043.8.498.1001", "1.2.826.0.1.3680043.8.498.2002"
N_A, N_B = 6, 3


def _series_bytes(uid: str, n: int, offset: int) -> list[bytes]:
    """``n`` slices of a (4, 5) series at z = 0, 2.5, … mm, as file bytes in z order."""
    out = []
    with tempfile.TemporaryDirectory() as d:
        raw = ramp((n, 4, 5), offset)
        for k in range(n):
            p = Path(d) / f"{k}.dcm"
            write_slice(p, raw[k], 2.5 * k, uid, instance=k + 1)
            out.append(p.read_bytes())
    return out


A_FILES = _series_bytes(SERIES_A, N_A, 0)
B_FILES = _series_bytes(SERIES_B, N_B, 500)
SUFFIXES = [".dcm", "", ".IMA", ".txt", ".bin", ".xml", ".nii.gz"]


def _flip(data: bytes, flips: list[tuple[float, int]]) -> bytes:
    """XOR ``data`` at relative positions with non-zero bytes (after the 128-byte preamble: before it
    a flip changes nothing)."""
    b = bytearray(data)
    for where, mask in flips:
        i = 128 + int(where * (len(b) - 129))
        b[i] ^= mask
    return bytes(b)


def check_dicom(folder: Path, expected: set[Path], **kw) -> tuple[np.ndarray, dict, str] | None:
    """Read ``folder`` and check the outcome is one of the two allowed (module docstring).

    ``expected``: the files that were slices of the series being read before any damage.
    Returns ``(volume (Z, Y, X), meta, the warnings' text)`` when a volume was read, ``None`` for a
    documented error.
    """
    files = set(folder.iterdir())
    logged: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("hiseg_sim.data.io_dicom")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            vol, _, meta = read_dicom_series(folder, **kw)
    except CaseError as exc:
        msg = str(exc)
        assert "\n" not in msg, msg
        assert any(f.name in msg for f in files) or (not files and str(folder) in msg), msg
        if isinstance(exc, UnreadableFileError):
            assert exc.path in files and exc.path.name in msg, msg
        return None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    read = [Path(f) for f in meta["files"]]
    ignored = {Path(f) for f in meta["ignored_files"]}
    assert vol.shape[0] == len(read) == len(set(read)), "one slice per file read"
    assert set(read) | ignored == files and not set(read) & ignored, "every file read or listed"
    warned = " ".join(str(w.message) for w in rec)
    for f in expected - set(read):
        named = f.name in warned or (f.suffix.lower() in (".txt", ".xml") and any(f.name in m for m in logged))
        assert named, f"{f.name} was a slice of the series and vanished without a warning"
    return vol, meta, warned


def _write(folder: Path, contents: list[bytes], suffix: str, prefix: str = "IM") -> list[Path]:
    paths = []
    for i, data in enumerate(contents):
        p = folder / f"{prefix}{i:04d}{suffix}"
        p.write_bytes(data)
        paths.append(p)
    return paths


flips = st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=4)


@FUZZ
@given(damage=st.dictionaries(st.integers(0, N_A - 1), flips, max_size=3), suffix=st.sampled_from(SUFFIXES[:5]))
def test_garbled_series(damage, suffix):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        contents = [_flip(b, damage[i]) if i in damage else b for i, b in enumerate(A_FILES)]
        paths = _write(folder, contents, suffix)
        got = check_dicom(folder, set(paths))
        if not damage:
            assert got is not None and got[0].shape == (N_A, 4, 5)


@FUZZ
@given(which=st.integers(0, N_A - 1), keep=st.floats(0, 1, exclude_max=True), suffix=st.sampled_from(SUFFIXES[:5]))
def test_truncated_slice_is_always_an_error_naming_it(which, keep, suffix):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        contents = list(A_FILES)
        contents[which] = contents[which][: int(keep * len(contents[which]))]
        paths = _write(folder, contents, suffix)
        if suffix not in (".dcm", ".IMA") and len(contents[which]) < 132:
            # cut before the DICM marker and no DICOM suffix: nothing says the file is DICOM, so it
            # may be left out, but then named in a warning (checked by check_dicom)
            check_dicom(folder, set(paths))
            return
        with pytest.raises(CaseError) as err:
            read_dicom_series(folder)
        assert paths[which].name in str(err.value) and "\n" not in str(err.value)


@FUZZ
@given(
    a=st.sets(st.integers(0, N_A - 1), min_size=1),
    b=st.sets(st.integers(0, N_B - 1), min_size=1),
    pick=st.sampled_from([None, SERIES_A, SERIES_B]),
    suffix=st.sampled_from(SUFFIXES[:3]),
)
def test_mixed_series(a, b, pick, suffix):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        pa = _write(folder, [A_FILES[i] for i in sorted(a)], suffix, "A")
        pb = _write(folder, [B_FILES[i] for i in sorted(b)], suffix, "B")
        got = check_dicom(folder, set(pa if pick == SERIES_A else pb if pick == SERIES_B else []), series_uid=pick)
        if pick is None:
            assert got is None  # two series and none chosen: an error that lists both
            return
        chosen, idx = (pa, sorted(a)) if pick == SERIES_A else (pb, sorted(b))
        contiguous = idx == list(range(idx[0], idx[-1] + 1))
        if contiguous:
            assert got is not None
        elif got is not None:  # a hole the positions cannot show (two slices): the numbering warns
            assert "InstanceNumber skips" in got[2]
        if got is not None:
            vol, meta, warned = got
            assert vol.shape[0] == len(chosen) and {Path(f) for f in meta["files"]} == set(chosen)
            others = (set(pa) | set(pb)) - set(chosen)
            assert all(f.name in warned for f in others), "the other series' files are named"


@FUZZ
@given(junk=st.lists(st.tuples(st.binary(max_size=400), st.sampled_from(SUFFIXES)), max_size=4))
def test_folders_without_a_series(junk):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        for i, (data, suffix) in enumerate(junk):
            (folder / f"f{i}{suffix}").write_bytes(data)
        with pytest.raises(CaseError) as err:
            read_dicom_series(folder)
        msg = str(err.value)
        assert "\n" not in msg
        assert str(folder) in msg if not junk else any(p.name in msg for p in folder.iterdir()), msg


# ----------------------------------------------------------------------------- NIfTI and other suffixes

SHAPE_XYZ = (4, 5, 6)


def _nifti_bytes(gz: bool) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / ("v.nii.gz" if gz else "v.nii")
        img = nib.Nifti1Image(ramp(SHAPE_XYZ), np.diag([0.7, 0.7, 2.5, 1.0]))
        img.header.set_xyzt_units("mm")
        nib.save(img, str(p))
        return p.read_bytes()


NII = {".nii.gz": _nifti_bytes(True), ".nii": _nifti_bytes(False)}


def check_volume_file(p: Path, read) -> np.ndarray | None:
    """``read(p)`` gives a volume of the original shape, or warns naming ``p``, or raises CaseError naming ``p``."""
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            vol = read(p)[0]
    except CaseError as exc:
        assert p.name in str(exc) and "\n" not in str(exc), str(exc)
        return None
    if vol.shape != SHAPE_XYZ[::-1]:
        assert any(p.name in str(w.message) for w in rec), f"{p.name}: shape {vol.shape} without a warning"
    return vol


@FUZZ
@given(suffix=st.sampled_from([".nii.gz", ".nii"]), keep=st.floats(0, 1, exclude_max=True))
def test_truncated_nifti(suffix, keep):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"v{suffix}"
        p.write_bytes(NII[suffix][: int(keep * len(NII[suffix]))])
        with pytest.raises(UnreadableFileError, match=p.name):
            read_nifti(p)


@FUZZ
@given(
    suffix=st.sampled_from([".nii.gz", ".nii"]),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
)
def test_garbled_nifti(suffix, flips):
    raw = bytearray(NII[suffix])
    for where, mask in flips:
        raw[where % len(raw)] ^= mask
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"v{suffix}"
        p.write_bytes(bytes(raw))
        check_volume_file(p, read_nifti)


@FUZZ
@given(
    source=st.sampled_from(["nii", "nii.gz", "dicom", "junk"]),
    suffix=st.sampled_from([".nii", ".nii.gz", ".dcm", "", ".mha", ".nrrd", ".png"]),
)
def test_wrong_suffixes(source, suffix):
    data = {"nii": NII[".nii"], "nii.gz": NII[".nii.gz"], "dicom": A_FILES[0], "junk": b"\x00\x01junk" * 50}[source]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"file{suffix}"
        p.write_bytes(data)
        vol = check_volume_file(p, read_image) if source != "dicom" else None
        if source == "dicom":
            try:
                vol = read_image(p)[0]
                assert vol.shape == (1, 4, 5)
            except CaseError as exc:
                assert p.name in str(exc) and "\n" not in str(exc)
        if vol is not None and source.startswith("nii"):
            np.testing.assert_array_equal(vol, ramp(SHAPE_XYZ).transpose(2, 1, 0))


@pytest.mark.parametrize(
    "name, data",
    [("a.nii", NII[".nii.gz"]), ("b.nii.gz", NII[".nii"]), ("c.nii.gz", gzip.compress(b"x" * 400)), ("d.nii", b"")],
    ids=["gzip-named-nii", "plain-named-gz", "gzip-of-junk", "empty"],
)
def test_compression_that_does_not_match_the_suffix(tmp_path, name, data):
    """A NIfTI whose bytes do not match its suffix is an error naming it, never a raw zlib/EOF error."""
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(UnreadableFileError, match=name):
        read_nifti(p)


# ----------------------------------------------------------------------------- case cache (.npz + sidecar)


def _case() -> Case:
    vol = ramp((3, 8, 8)).astype(np.float32) / 7
    gt = np.zeros(vol.shape, bool)
    gt[1, 2:5, 3:6] = True
    meta = {"anatomy": (ramp((3, 8, 8)) % 6).astype(np.uint8), "mask_offset_zyx": (1, 2, 3), "codes": {0: "lung"}}
    return Case("F-1/n1", vol, (2.5, 0.7, 0.7), gt, (gt.copy(),), meta)


@FUZZ
@given(
    target=st.sampled_from([".npz", ".json"]),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=3),
    cut=st.none() | st.floats(0, 1, exclude_max=True),
)
def test_damaged_cache_entry_never_returns_another_case(target, flips, cut):
    calls = []

    def build():
        calls.append(1)
        return _case()

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        want = cached_case("F-1/n1", 0, build, root)
        (path,) = root.glob(f"*{target}")
        raw = bytearray(path.read_bytes())
        for where, mask in flips:
            raw[where % len(raw)] ^= mask
        path.write_bytes(bytes(raw[: int(cut * len(raw))] if cut is not None else raw))
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            got = cached_case("F-1/n1", 0, build, root)
        reported = [str(w.message) for w in rec if issubclass(w.category, CorruptCaseCacheWarning)]
        # a damaged entry is rebuilt with one warning naming one of its two files; an entry the damage
        # left equal (a flip that JSON reads the same) is used; either way the case is the one built
        assert len(calls) == 1 + len(reported) and len(reported) <= 1
        assert all(path.stem in msg for msg in reported), reported
        assert got.case_id == want.case_id and got.spacing_zyx == want.spacing_zyx
        for x, y in ((got.volume_hu, want.volume_hu), (got.gt, want.gt), (got.meta["anatomy"], want.meta["anatomy"])):
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
        assert got.meta["mask_offset_zyx"] == (1, 2, 3) and got.meta["codes"] == {0: "lung"}
