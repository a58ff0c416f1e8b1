"""ONNX exports of a network's parts, cached on disk and checked against PyTorch, and their sessions.

An export is made once per (weights, graph code, torch version, opset) and kept in
``$HISEG_CACHE_DIR/onnx`` (else ``~/.cache/hiseg-sim/onnx``) as ``<name>-<part>-<key16>.onnx`` with a
JSON sidecar holding the file's SHA-256. The key hashes the weights' SHA-256 and the source files
the graph is traced from, so a change to either makes a new file. Files are written to a temporary
name and renamed into place under a lock file: concurrent workers neither read half a file nor
export twice.

A cached file whose sidecar is missing, whose checksum does not match or that fails
:func:`onnx.checker.check_model` is reported with a :class:`CorruptCacheWarning`, removed and
exported again. Every new export is run in ONNX Runtime and compared with the PyTorch module by a
part-specific check before it is kept (:class:`ExportMismatch` otherwise).

The legacy TorchScript exporter (``dynamo=False``) is used: it needs neither ``onnxscript`` nor a
network.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from hiseg_sim.progress import phase
from hiseg_sim.segmenters.cache import CorruptCacheWarning
from hiseg_sim.segmenters.threads import get_threads

__all__ = [
    "OPSET",
    "ExportMismatch",
    "cached_export",
    "default_onnx_dir",
    "export_key",
    "onnxruntime_missing",
    "session",
    "stats",
]

OPSET = 17
#: ONNX Runtime graph optimisation level, and fusions left out. On the LiteMedSAM decoder (one
#: thread, same process, alternated): "disable" 41 ms, "basic" 43-45, "extended"/"all" 44-47 with
#: every fusion, 35 without SkipLayerNormFusion, whose CPU kernel is slow on the 4096 x 256 image
#: tokens (it also cost the TinyViT encoder about 8 %).
DEFAULT_OPT_LEVEL = "all"
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)

#: Counters for tests and reports: exports made, corrupt files replaced, sessions created.
stats = {"exports": 0, "corrupt": 0, "sessions": 0}

_SESSIONS: dict[tuple, object] = {}


class ExportMismatch(RuntimeError):
    """An ONNX export does not reproduce its PyTorch module closely enough."""


def onnxruntime_missing() -> str | None:
    """``None`` if ``onnxruntime`` imports, else a short reason."""
    try:
        import onnxruntime  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install counts as missing
        return f"onnxruntime is not importable ({type(exc).__name__}: {exc})"
    return None


def default_onnx_dir() -> Path:
    """``$HISEG_CACHE_DIR/onnx`` if set, else ``~/.cache/hiseg-sim/onnx``."""
    env = os.environ.get("HISEG_CACHE_DIR")
    return (Path(env) if env else Path.home() / ".cache" / "hiseg-sim") / "onnx"


def export_key(weights_sha256: str, sources: Sequence[str | os.PathLike] = ()) -> str:
    """What an exported file depends on: weights, the graph's source files, torch version, opset."""
    h = hashlib.sha256()
    h.update(weights_sha256.encode())
    for src in sources:
        h.update(Path(src).read_bytes())
    h.update(torch.__version__.split("+")[0].encode())
    h.update(str(OPSET).encode())
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def session(
    path: str | os.PathLike, threads: int | None = None, opt_level: str = DEFAULT_OPT_LEVEL, shared: bool = True
):
    """An ONNX Runtime CPU session: ``threads`` intra-op (default :func:`get_threads`), 1 inter-op.

    With ``shared``, one session per ``(process, file, mtime, threads, opt_level)`` is kept.
    """
    import onnxruntime as ort

    path = Path(path)
    threads = int(threads or get_threads())
    key = (os.getpid(), str(path.resolve()), path.stat().st_mtime_ns, threads, opt_level)
    if shared and key in _SESSIONS:
        return _SESSIONS[key]
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[opt_level]
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    sess = ort.InferenceSession(
        str(path), sess_options=so, providers=["CPUExecutionProvider"], disabled_optimizers=list(DISABLED_OPTIMIZERS)
    )
    stats["sessions"] += 1
    if shared:
        _SESSIONS[key] = sess
    return sess


def export_bytes(
    module: torch.nn.Module,
    example_inputs: tuple,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict | None = None,
) -> bytes:
    """The ONNX bytes of ``module`` traced on ``example_inputs`` (legacy exporter, :data:`OPSET`)."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings and the legacy exporter's deprecation notice
        # torch's annotation omits file objects, which the legacy exporter writes to
        torch.onnx.export(
            module,
            example_inputs,
            buf,  # type: ignore[arg-type]
            dynamo=False,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes or {},
            do_constant_folding=True,
        )
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _problem(path: Path, key: str) -> str | None:
    """``None`` if ``path`` is a good export for ``key``, else what is wrong with it."""
    try:
        meta = json.loads(_sidecar(path).read_text())
    except Exception as exc:  # noqa: BLE001
        return f"missing or unreadable sidecar ({type(exc).__name__})"
    if meta.get("key") != key:
        return "sidecar is for another export"
    if meta.get("sha256") != _sha256_file(path):
        return "checksum mismatch"
    try:
        import onnx
    except ImportError:  # the checksum already proves it is the file that passed its check
        return None
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001
        return f"fails onnx.checker ({type(exc).__name__}: {str(exc)[:120]})"
    return None


@contextlib.contextmanager
def _locked(lock_path: Path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: the atomic rename still protects readers
        yield
        return
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_export(
    stem: str,
    key: str,
    make: Callable[[], bytes],
    check: Callable[[Path], float],
    onnx_dir: str | os.PathLike | None = None,
    meta: dict | None = None,
) -> Path:
    """The cached ONNX file ``<stem>-<key16>.onnx``, exported with ``make()`` if missing or corrupt.

    Args:
        stem: file name stem, e.g. ``"litemedsam-decoder"``.
        key: :func:`export_key` of what the graph depends on.
        make: returns the ONNX bytes.
        check: given the freshly written file, returns its max |difference| from PyTorch or raises
            :class:`ExportMismatch`; the file is deleted if it raises.
        onnx_dir: directory (default :func:`default_onnx_dir`).
        meta: extra fields for the sidecar.
    """
    d = Path(onnx_dir) if onnx_dir is not None else default_onnx_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{stem}-{key[:16]}.onnx"
    with _locked(d / f".{path.name}.lock"):
        if path.exists():
            problem = _problem(path, key)
            if problem is None:
                return path
            stats["corrupt"] += 1
            warnings.warn(
                f"corrupt ONNX cache file {path} ({problem}); removed, exporting again",
                CorruptCacheWarning,
                stacklevel=3,
            )
            path.unlink(missing_ok=True)
            _sidecar(path).unlink(missing_ok=True)
        with phase(f"exporting {stem} to ONNX (once; then cached in {d})"):
            data = make()
            _write_atomic(path, data)
            try:
                diff = check(path)
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        side = {
            "key": key,
            "sha256": hashlib.sha256(data).hexdigest(),
            "torch": torch.__version__,
            "opset": OPSET,
            "max_abs_diff_vs_torch": diff,
            **(meta or {}),
        }
        _write_atomic(_sidecar(path), json.dumps(side, indent=1).encode())
        stats["exports"] += 1
    return path
