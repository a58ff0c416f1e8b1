"""Train a prompting policy: behaviour cloning from a simulated expert, then PPO with a time price.

>>> # from hiseg_sim.policies.train import TrainConfig, train_policy
>>> # card = train_policy(TrainConfig(name="ppo_box_2d", steps=12000))

Steps (all optional but the last two):

1. Demonstrations: ``bc_annotator`` (default ``expert_radiologist``) runs ``bc_episodes``
   episodes on the training cohort; each is cut at its best mask (:mod:`hiseg_sim.policies.demos`).
2. Behaviour cloning of those on the PPO policy (:mod:`hiseg_sim.policies.bc`).
3. PPO (stable-baselines3) on ``n_envs`` environments in subprocesses
   (``SubprocVecEnv``) sharing the on-disk embedding cache, with the env's reward
   ``ΔDice − time_penalty × seconds``, through :class:`~hiseg_sim.policies.spaces.PolicyView`
   and the :class:`~hiseg_sim.policies.network.ScreenCNN` extractor.
4. Save to ``<out_root>/<name>/``: ``policy.pt`` (the weights) and ``model_card.json`` / ``.md``
   (with the architecture they are rebuilt into: :func:`hiseg_sim.policies.store.save_policy`),
   ``training_curve.csv`` / ``.png``; with ``save_bc``, the behaviour-cloned policy alone as
   ``<name>_bc`` beside it (to see what PPO added).

With ``init_policy``, PPO starts from a saved policy: the SB3 model is constructed fresh from the
config and the saved state dict (read with ``weights_only=True``) is copied into it, after checking
that the card's architecture is the one the config builds.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

__all__ = ["CasesFactory", "SegmenterFactory", "TrainConfig", "train_policy", "make_training_env", "save_policy"]


class CasesFactory:
    """Picklable ``() -> [Case]``: a manifest cohort or a registered case source, by name."""

    def __init__(self, source: str, limit: int | None = None):
        self.source, self.limit = source, limit

    def __call__(self):
        from hiseg_sim.data.sources import load_cases

        return load_cases(self.source, limit=self.limit)


class SegmenterFactory:
    """Picklable ``() -> Segmenter`` built in the env's process, by registry name (``checkpoint``
    for the models whose weights the user gives)."""

    def __init__(self, name: str, cache_dir: str | None, checkpoint: str | None = None):
        self.name, self.cache_dir, self.checkpoint = name, cache_dir, checkpoint

    def __call__(self):
        from hiseg_sim.experiments.worker import build_segmenter

        return build_segmenter(self.name, self.cache_dir, self.checkpoint)


@dataclass
class TrainConfig:
    """Everything a training run depends on (written into the model card)."""

    name: str
    env: str = "2d"
    cohort: str = "default"
    case_limit: int | None = None
    segmenter: str = "litemedsam"
    checkpoint: str | None = None
    seed: int = 0
    time_penalty: float = 0.005
    grid: int = 48
    # behaviour cloning
    # a profile whose perception gives the policy an intent channel (policies.intent); None: image only
    perception: str | None = None
    bc_annotator: str = "expert_radiologist"
    bc_episodes: int = 240
    bc_epochs: int = 80
    bc_min_dice: float = 0.5
    bc_lr: float = 1e-3
    bc_schedule: str = "constant"  # or "cosine"
    bc_patience: int | None = None  # stop after this many epochs without a better held-out box error
    bc_restore_best: bool = False  # keep the weights of the best held-out epoch
    bc_split: str = "episode"  # hold out whole "episode"s, "case"s or "nodule"s (all renderings of one) of the demos
    demos_path: str | None = None
    # start from a saved policy's weights (a name or directory; same network): no behaviour cloning
    init_policy: str | None = None
    # PPO
    steps: int = 12000
    n_envs: int = 2
    vec: str = "subproc"
    n_steps: int = 128
    batch_size: int = 64
    n_epochs: int = 4
    learning_rate: float = 1e-4
    clip_range: float = 0.1
    ent_coef: float = 0.0
    target_kl: float | None = 0.05
    gamma: float = 1.0
    gae_lambda: float = 0.95
    features_dim: int = 256
    network: str = "cnn"  # "cnn": ScreenCNN + dense heads; "spatial": SpatialScreenNet (per-cell corner logits)
    # where
    out_root: str = "agents/policies"
    cache_dir: str | None = None
    env_kwargs: dict = field(default_factory=dict)
    save_bc: bool = True
    torch_threads: int | None = 1  # intra-op threads of the learner process (see train_policy)

    @property
    def env_id(self) -> str:
        from hiseg_sim.experiments.spec import ENV_ALIASES

        return ENV_ALIASES.get(self.env.lower(), self.env)


def make_training_env(cfg: TrainConfig, segmenter=None):
    """One PolicyView-wrapped env (with episode statistics) of ``cfg``, in this process."""
    return _factory(cfg, segmenter, threads=None)()


def _factory(cfg: TrainConfig, segmenter=None, threads=None, workers: int = 1):
    from hiseg_sim.env.vector import EnvFactory
    from hiseg_sim.env.wrappers import EpisodeStatistics
    from hiseg_sim.policies.intent import PerceivedIntent
    from hiseg_sim.policies.spaces import PolicyView

    seg = segmenter if segmenter is not None else SegmenterFactory(cfg.segmenter, cfg.cache_dir, cfg.checkpoint)
    wrappers = (EpisodeStatistics,) + ((partial(PerceivedIntent, profile=cfg.perception),) if cfg.perception else ())
    return EnvFactory(
        cfg.env_id,
        wrappers + (partial(PolicyView, grid=cfg.grid),),
        threads,
        workers,
        cases=CasesFactory(cfg.cohort, cfg.case_limit),
        segmenter=seg,
        cache_dir=cfg.cache_dir,
        time_penalty=cfg.time_penalty,
        **cfg.env_kwargs,
    )


def _vec_env(cfg: TrainConfig):
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    if cfg.vec == "subproc" and cfg.n_envs > 1:
        fns = [_factory(cfg, threads=1, workers=cfg.n_envs) for _ in range(cfg.n_envs)]
        return SubprocVecEnv(fns, start_method="forkserver")
    if cfg.vec not in ("subproc", "dummy"):
        raise ValueError(f"vec must be 'subproc' or 'dummy'; got {cfg.vec!r}")
    seg = SegmenterFactory(cfg.segmenter, cfg.cache_dir, cfg.checkpoint)()  # one object shared by the envs
    return DummyVecEnv([_factory(cfg, segmenter=seg) for _ in range(cfg.n_envs)])


_CASE_IDS: dict[tuple, list[str]] = {}


def _case_ids(cfg: TrainConfig) -> list[str]:
    """The training cases' ids in order (built once per cohort and limit: a cohort of renderings
    is 320 phantoms, read back from the case cache)."""
    key = (cfg.cohort, cfg.case_limit)
    if key not in _CASE_IDS:
        _CASE_IDS[key] = [c.case_id for c in CasesFactory(cfg.cohort, cfg.case_limit)()]
    return _CASE_IDS[key]


def _demos(cfg: TrainConfig, log):
    from hiseg_sim.policies.demos import Demos, collect_demos

    if cfg.demos_path and Path(cfg.demos_path).is_file():
        log(f"demonstrations: loading {cfg.demos_path}")
        demos = Demos.load(cfg.demos_path)
        demos.stats["loaded_from"] = str(cfg.demos_path)
        return demos
    import gymnasium as gym

    import hiseg_sim  # noqa: F401

    seg = SegmenterFactory(cfg.segmenter, cfg.cache_dir, cfg.checkpoint)()
    env = gym.make(
        cfg.env_id,
        cases=CasesFactory(cfg.cohort, cfg.case_limit),
        segmenter=seg,
        cache_dir=cfg.cache_dir,
        time_penalty=cfg.time_penalty,
        **cfg.env_kwargs,
    )
    if cfg.perception:
        from hiseg_sim.policies.intent import PerceivedIntent

        env = PerceivedIntent(env, cfg.perception)
    try:
        demos = collect_demos(
            env,
            cfg.bc_annotator,
            _case_ids(cfg),
            cfg.bc_episodes,
            seed=cfg.seed,
            grid=cfg.grid,
            time_penalty=cfg.time_penalty,
            min_dice=cfg.bc_min_dice,
        )
    finally:
        env.close()
    if cfg.demos_path:
        Path(cfg.demos_path).parent.mkdir(parents=True, exist_ok=True)
        demos.save(cfg.demos_path)
    return demos


def _ppo_curve_callback(rows: list[dict], t0: float):
    from stable_baselines3.common.callbacks import BaseCallback

    class _Curve(BaseCallback):
        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            buf = list(self.model.ep_info_buffer)[-32:]
            if not buf:
                return
            rows.append(
                {
                    "phase": "ppo",
                    "timesteps": int(self.num_timesteps),
                    "wall_s": round(time.perf_counter() - t0, 1),
                    "episodes": len(buf),
                    "return": float(np.mean([e["r"] for e in buf])),
                    "dice": float(np.mean([e.get("dice", np.nan) for e in buf])),
                    "seconds": float(np.mean([e.get("seconds", np.nan) for e in buf])),
                    "length": float(np.mean([e["l"] for e in buf])),
                }
            )

    return _Curve()


def save_policy(policy, out_dir: Path, card: dict) -> dict:
    """Write ``policy.pt`` and the model card (JSON and Markdown) to ``out_dir``
    (:func:`hiseg_sim.policies.store.save_policy`); returns the card as written."""
    from hiseg_sim.policies.store import save_policy as _save

    return _save(policy, out_dir, card)


def _check_out_dirs(cfg: TrainConfig, out: Path) -> None:
    """Refuse, before any training, output directories the loader would refuse afterwards (an old
    ``policy.zip`` or a stray file in them)."""
    from hiseg_sim.policies.store import check_policy_files

    for d in (out, out.parent / f"{cfg.name}_bc") if cfg.save_bc else (out,):
        if d.is_dir():
            check_policy_files(d)


def _init_weights(cfg: TrainConfig, model, log) -> dict:
    """Copy the saved policy ``cfg.init_policy``'s weights into ``model``'s fresh policy; its card."""
    from hiseg_sim.policies.network import describe_policy
    from hiseg_sim.policies.store import load_policy_weights

    state, card = load_policy_weights(cfg.init_policy)
    want, have = card["architecture"], describe_policy(model.policy)
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise ValueError(
            f"init_policy {cfg.init_policy!r} has another network than this config builds (differs in "
            f"{', '.join(diff)}); give the same network, grid, perception and viewport"
        )
    model.policy.load_state_dict(state, strict=True)
    log(f"initial weights: {cfg.init_policy} ({card.get('kind')})")
    return card


def train_policy(cfg: TrainConfig, log=print) -> dict:
    """Run the steps of the module docstring; returns the model card (a dict).

    The learner process runs with ``cfg.torch_threads`` intra-op threads (default 1: its batches
    are small, the env processes use the other cores, and on a loaded machine a second spinning
    thread made each convolution several times slower); restored afterwards.
    """
    import torch

    threads_before = torch.get_num_threads()
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    try:
        return _train(cfg, log, t_start=time.perf_counter())
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: TrainConfig, log, t_start: float) -> dict:
    from stable_baselines3 import PPO

    from hiseg_sim.policies.bc import behaviour_clone
    from hiseg_sim.policies.card import plot_training_curve
    from hiseg_sim.policies.network import ScreenCNN, SpatialActorCriticPolicy, SpatialScreenNet

    out = Path(cfg.out_root) / cfg.name
    _check_out_dirs(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    curve: list[dict] = []
    timing: dict[str, float] = {}

    t = time.perf_counter()
    vec = _vec_env(cfg)
    timing["env_start_s"] = time.perf_counter() - t
    try:
        if cfg.network == "spatial":
            policy_cls = SpatialActorCriticPolicy
            policy_kwargs = dict(
                features_extractor_class=SpatialScreenNet,
                features_extractor_kwargs=dict(grid=cfg.grid, position_bias=True),
                net_arch=dict(pi=[], vf=[64]),
            )
        elif cfg.network == "cnn":
            policy_cls = "MultiInputPolicy"
            policy_kwargs = dict(
                features_extractor_class=ScreenCNN,
                features_extractor_kwargs=dict(features_dim=cfg.features_dim),
                net_arch=dict(pi=[128], vf=[128]),
            )
        else:
            raise ValueError(f"network must be 'cnn' or 'spatial'; got {cfg.network!r}")
        # a rollout shorter than a minibatch (short smoke runs) is one minibatch, not a truncated one
        batch_size = min(cfg.batch_size, cfg.n_steps * cfg.n_envs)
        model = PPO(
            policy_cls,
            vec,
            n_steps=cfg.n_steps,
            batch_size=batch_size,
            n_epochs=cfg.n_epochs,
            learning_rate=cfg.learning_rate,
            clip_range=cfg.clip_range,
            ent_coef=cfg.ent_coef,
            gamma=cfg.gamma,
            target_kl=cfg.target_kl,
            gae_lambda=cfg.gae_lambda,
            policy_kwargs=policy_kwargs,
            seed=cfg.seed,
            device="cpu",
            verbose=0,
        )
        demo_stats = None
        if cfg.init_policy:
            init_card = _init_weights(cfg, model, log)
            demo_stats = init_card.get("demonstrations")
            timing["init_bc_s"] = float((init_card.get("training") or {}).get("bc_s", 0.0))
        elif cfg.bc_episodes > 0 and cfg.bc_epochs > 0:
            t = time.perf_counter()
            demos = _demos(cfg, log)
            timing["demos_s"] = time.perf_counter() - t
            demo_stats = demos.stats
            log(f"demonstrations: {demos.stats}")
            t = time.perf_counter()

            def _log_bc(row):
                curve.append({"phase": "bc", **row, "wall_s": round(time.perf_counter() - t_start, 1)})
                log(
                    f"bc epoch {row['epoch']}: loss {row['loss']:.3f} nll {row['nll']:.3f} "
                    f"val kind acc {row['val_kind_acc']:.2f} box err {row['val_box_err_cells']:.2f} cells "
                    f"(first box {row['val_first_box_err_cells']:.2f}), lr {row['lr']:.2g}"
                )

            groups = None
            if cfg.bc_split == "case":  # collect_demos takes the cases in order, round after round
                groups = demos.episode % len(_case_ids(cfg))
            elif cfg.bc_split == "nodule":  # a nodule's renderings stay on one side (policies.cohorts)
                from hiseg_sim.policies.cohorts import nodule_of

                ids = [nodule_of(c) for c in _case_ids(cfg)]
                index = {n: i for i, n in enumerate(dict.fromkeys(ids))}
                groups = np.array([index[ids[e % len(ids)]] for e in demos.episode], np.int64)
            elif cfg.bc_split != "episode":
                raise ValueError(f"bc_split must be 'episode', 'case' or 'nodule'; got {cfg.bc_split!r}")
            behaviour_clone(
                model.policy,
                demos,
                cfg.grid,
                epochs=cfg.bc_epochs,
                lr=cfg.bc_lr,
                seed=cfg.seed,
                log=_log_bc,
                groups=groups,
                schedule=cfg.bc_schedule,
                patience=cfg.bc_patience,
                restore_best=cfg.bc_restore_best,
            )
            timing["bc_s"] = time.perf_counter() - t
            if cfg.save_bc:
                bc_card = _card(
                    cfg,
                    model,
                    vec,
                    demo_stats,
                    timing,
                    curve,
                    steps=0,
                    wall=time.perf_counter() - t_start,
                    bc_only=True,
                )
                save_policy(model.policy, out.parent / f"{cfg.name}_bc", bc_card)
        t = time.perf_counter()
        if cfg.steps > 0:
            from stable_baselines3.common.logger import Logger

            # the curve is kept by the callback; SB3's default logger would leave a folder in /tmp per run
            model.set_logger(Logger(folder=None, output_formats=[]))
            model.learn(total_timesteps=int(cfg.steps), callback=_ppo_curve_callback(curve, t_start))
        timing["ppo_s"] = time.perf_counter() - t
        wall = time.perf_counter() - t_start
        card = _card(cfg, model, vec, demo_stats, timing, curve, steps=int(model.num_timesteps), wall=wall)
        card = save_policy(model.policy, out, card)
    finally:
        vec.close()
    _write_curve(out, curve)
    if curve:
        plot_training_curve(
            curve,
            out / "training_curve.png",
            title=cfg.name,
            demonstrator=(demo_stats or {}).get("annotator", cfg.bc_annotator),
        )
    log(f"saved {out} ({card['training']['wall_s']:.0f} s)")
    return card


def _write_curve(out: Path, curve: list[dict]) -> None:
    import pandas as pd

    pd.DataFrame(curve).to_csv(out / "training_curve.csv", index=False)


def _card(
    cfg: TrainConfig, model, vec, demo_stats, timing, curve, steps: int, wall: float, bc_only: bool = False
) -> dict:
    import stable_baselines3
    import torch

    spec = vec.get_attr("spec")[0] if hasattr(vec, "get_attr") else None
    last = [r for r in curve if r["phase"] == "ppo"][-1:] or [None]
    return {
        "name": cfg.name + ("_bc" if bc_only else ""),
        "kind": "behaviour cloning only"
        if (bc_only or (demo_stats and steps == 0))
        else ("bc + ppo" if demo_stats else "ppo"),
        "env_id": cfg.env_id,
        "three_d": cfg.env_id.endswith("3D-v0"),
        "max_episode_steps": int(getattr(spec, "max_episode_steps", 20) or 20),
        "grid": cfg.grid,
        "network": cfg.network,
        "perception": cfg.perception,
        "viewport_px": int(cfg.env_kwargs.get("viewport_px", 96)),
        "cohort": cfg.cohort,
        "segmenter": cfg.segmenter,
        "reward": f"Dice gain - {cfg.time_penalty} x simulated seconds per action (env time_penalty)",
        "time_penalty": cfg.time_penalty,
        "seeds": {"train": cfg.seed},
        "steps": steps,
        "config": asdict(cfg),
        "demonstrations": demo_stats,
        "training": {
            "wall_s": round(wall, 1),
            **{k: round(v, 1) for k, v in timing.items()},
            "cores": os.cpu_count(),
            "n_envs": cfg.n_envs,
            "vec": cfg.vec,
            "last_rollout": last[0],
            "bc_epochs": cfg.bc_epochs if demo_stats else 0,
        },
        "software": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "stable_baselines3": stable_baselines3.__version__,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "evaluation": None,
    }
