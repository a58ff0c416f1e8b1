"""The bodies of ``hiseg-sim train-policy`` and ``hiseg-sim eval-policy`` (registered in :mod:`hiseg_sim.cli`).

Importing this module imports neither torch nor stable-baselines3: the commands import them when run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

__all__ = ["train_policy_command", "eval_policy_command", "evaluate_saved_policy"]


def evaluate_saved_policy(
    policy: str,
    spec_path: str,
    out: Optional[Path] = None,
    executor: Optional[str] = None,
    workers: Optional[int] = None,
    cache_dir: Optional[str] = None,
    n_boot: int = 2000,
    policy_dir: Optional[Path] = None,
    progress: bool = True,
    fresh: bool = False,
) -> dict:
    """Run the evaluation study ``spec_path`` (resuming a finished run), compare ``policy`` with the
    other arms at equal simulated time, plot, and write the result into the policy's model card."""
    from hiseg_sim.experiments import run_study
    from hiseg_sim.experiments.spec import load_spec
    from hiseg_sim.policies.card import add_evaluation
    from hiseg_sim.policies.evaluation import compare_at_equal_time, plot_comparison
    from hiseg_sim.policies.store import policy_dir as find_policy

    spec = load_spec(spec_path)
    out = Path(out) if out is not None else Path("runs") / spec.name
    data = run_study(spec, out, executor=executor, workers=workers, cache_dir=cache_dir, progress=progress, fresh=fresh)
    res = compare_at_equal_time(data, policy, n_boot=n_boot, seed=int(spec.analysis.get("seed", 0)))
    png = plot_comparison(data, res, out / f"{policy}_vs_people.png")
    res["plot"] = str(png)
    (out / f"{policy}_comparison.json").write_text(json.dumps(res, indent=1) + "\n")
    d = policy_dir if policy_dir is not None else find_policy(policy)
    add_evaluation(d, res)
    return res


def _print_result(res: dict) -> None:
    typer.echo(f"t* (policy's median seconds) = {res['t_star']:.1f} s on cohort {res['cohort']!r}")
    for r in res["arms"]:
        typer.echo(
            f"  {r['annotator']:<28} Dice {r['dice']:.3f} [{r['dice_lo']:.3f}, {r['dice_hi']:.3f}]  "
            f"Dice@t* {r['dice_at_t_star']:.3f}  {r['seconds']:.1f} s [{r['seconds_lo']:.1f}, {r['seconds_hi']:.1f}]"
        )
    for p in res["paired"]:
        typer.echo(
            f"  policy - {p['b']:<24} {p['measure']:<14} {p['diff']:+.3f} [{p['lo']:+.3f}, {p['hi']:+.3f}] "
            f"({p['n_pairs']} pairs)"
        )
    typer.echo(f"plot: {res['plot']}")


def train_policy_command(
    name: str = typer.Argument(..., help="Policy name: saved to OUT_ROOT/NAME/ and usable as an annotator name."),
    env: str = typer.Option("2d", help="2d, 3d or a registered env id."),
    cohort: str = typer.Option(
        "default", help="Training cohort, or a registered case source (e.g. default_renderings)."
    ),
    segmenter: str = typer.Option("litemedsam", help="Segmenter registry name."),
    checkpoint: Optional[Path] = typer.Option(None, help="Weights file (needed for sam_vit_*)."),
    steps: int = typer.Option(12000, help="PPO environment steps (0: behaviour cloning only)."),
    n_envs: int = typer.Option(2, help="Environments (subprocesses with --vec subproc)."),
    vec: str = typer.Option("subproc", help="subproc (SubprocVecEnv, shared embedding cache) or dummy (in process)."),
    seed: int = typer.Option(0, help="Seed of PPO, the demonstrations and the environments."),
    time_penalty: float = typer.Option(0.005, help="Reward lost per simulated second."),
    grid: int = typer.Option(48, help="Grid cells per viewport side for click and box coordinates."),
    torch_threads: int = typer.Option(
        1, help="Intra-op threads of the learner (2 speeds up cloning when no PPO environments compete for the cores)."
    ),
    viewport_px: int = typer.Option(96, help="Viewport side in pixels (the env's viewport_px)."),
    perception: Optional[str] = typer.Option(
        None,
        help="Give the policy the intent of a person of this profile "
        "(e.g. junior_medical_student) as an extra channel: their eye, its hand.",
    ),
    bc_annotator: str = typer.Option("expert_radiologist", help="Annotator whose traces are cloned."),
    bc_episodes: int = typer.Option(240, help="Demonstration episodes (0: no behaviour cloning)."),
    bc_epochs: int = typer.Option(80, help="Behaviour-cloning epochs."),
    bc_min_dice: float = typer.Option(0.5, help="Leave out demonstration episodes whose best Dice is under this."),
    bc_lr: float = typer.Option(1e-3, help="Behaviour-cloning learning rate (the start, with --bc-schedule cosine)."),
    bc_schedule: str = typer.Option("constant", help="Behaviour-cloning learning-rate schedule: constant or cosine."),
    bc_split: str = typer.Option(
        "episode",
        help="Hold out whole 'episode's, 'case's or 'nodule's (all renderings of a nodule) of the demonstrations.",
    ),
    bc_patience: Optional[int] = typer.Option(
        None,
        help="Stop cloning after this many epochs without a better "
        "held-out box error; the best epoch's weights are kept.",
    ),
    network: str = typer.Option(
        "cnn", help="cnn (ScreenCNN, dense heads) or spatial (SpatialScreenNet: per-cell box-corner scores)."
    ),
    demos: Optional[Path] = typer.Option(None, help="Demonstrations file (.npz): loaded if it exists, else written."),
    n_steps: int = typer.Option(128, help="PPO rollout length per env."),
    learning_rate: float = typer.Option(1e-4, help="PPO learning rate."),
    out_root: Path = typer.Option(Path("agents/policies"), help="Where policies are saved."),
    cache_dir: Optional[Path] = typer.Option(None, help="On-disk embedding cache shared by the env processes."),
    eval_spec: Optional[Path] = typer.Option(
        None,
        help="After training, run this study and put the comparison "
        "into the model card (e.g. experiments/policy_eval.toml).",
    ),
    eval_out: Optional[Path] = typer.Option(None, help="Run directory of the evaluation (default runs/<study>)."),
) -> None:
    """Train a prompting policy (behaviour cloning from an expert profile, then PPO with a time price)."""
    from hiseg_sim.policies.train import TrainConfig, train_policy

    if cache_dir is None and segmenter == "litemedsam":
        from hiseg_sim.segmenters import default_cache_dir

        cache_dir = Path(default_cache_dir())
    cfg = TrainConfig(
        name=name,
        env=env,
        cohort=cohort,
        segmenter=segmenter,
        checkpoint=str(checkpoint) if checkpoint else None,
        steps=steps,
        n_envs=n_envs,
        vec=vec,
        seed=seed,
        time_penalty=time_penalty,
        grid=grid,
        torch_threads=torch_threads,
        perception=perception,
        bc_annotator=bc_annotator,
        bc_episodes=bc_episodes,
        bc_epochs=bc_epochs,
        bc_min_dice=bc_min_dice,
        bc_lr=bc_lr,
        bc_schedule=bc_schedule,
        bc_split=bc_split,
        bc_patience=bc_patience,
        bc_restore_best=bc_patience is not None,
        network=network,
        demos_path=str(demos) if demos else None,
        n_steps=n_steps,
        learning_rate=learning_rate,
        out_root=str(out_root),
        cache_dir=str(cache_dir) if cache_dir else None,
        env_kwargs={} if viewport_px == 96 else {"viewport_px": viewport_px},
    )
    card = train_policy(cfg, log=typer.echo)
    typer.echo(
        f"trained {name}: {card['steps']} PPO steps in {card['training']['wall_s']:.0f} s; "
        f"card {out_root / name / 'model_card.md'}"
    )
    if eval_spec is not None:
        res = evaluate_saved_policy(name, str(eval_spec), eval_out, policy_dir=out_root / name)
        _print_result(res)


def eval_policy_command(
    policy: str = typer.Argument(..., help="A saved policy's name (an arm label of the study)."),
    spec: Path = typer.Option(Path("experiments/policy_eval.toml"), help="The evaluation study."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<study>)."),
    executor: Optional[str] = typer.Option(None, help="serial, process or ray (default: the spec's)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (0 = all cores)."),
    n_boot: int = typer.Option(2000, help="Bootstrap replicates."),
    fresh: bool = typer.Option(False, help="Run the evaluation study again instead of reusing its finished run."),
) -> None:
    """Evaluate a saved policy beside the study's people and robots at equal simulated time; update its model card."""
    res = evaluate_saved_policy(policy, str(spec), out, executor=executor, workers=workers, n_boot=n_boot, fresh=fresh)
    _print_result(res)
