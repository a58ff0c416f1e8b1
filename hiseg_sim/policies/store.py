"""Saved policies: ``agents/policies/<name>/`` and the annotator that plays one.

A policy directory holds:

- ``policy.pt``: the network's weights, a plain ``{name: tensor}`` state dict written by
  ``torch.save`` and read only with ``torch.load(..., weights_only=True)``, which refuses anything
  but tensors and plain containers (a planted pickle is not run);
- ``model_card.json``: what :func:`hiseg_sim.policies.train.train_policy` wrote (env, cohort,
  steps, seeds, reward, grid, perception profile, training time, evaluation), plus the
  ``architecture`` the network is rebuilt from (:func:`hiseg_sim.policies.network.build_policy`:
  classes by name from fixed tables, spaces, layer sizes) and ``weights`` (file name and SHA-256);
- ``model_card.md`` (the card for people), and optionally ``training_curve.csv`` and ``*.png`` plots.

Nothing else: :func:`check_policy_files` refuses a directory holding any other file, and in
particular the old format, ``policy.zip`` (stable-baselines3's ``policy.save``: a pickle whose
loading runs whatever code it names). :func:`convert_legacy_policy` converts one, as an explicit
opt-in for a file the user trusts::

    python -m hiseg_sim.policies.store convert agents/policies/my_policy --trust-pickle

Loading never calls stable-baselines3's ``load``: the SB3 policy object is constructed fresh from
the card and the state dict is copied into it.

A policy's name is an annotator name: :func:`hiseg_sim.annotators.registry.build_annotator`
resolves it to a :class:`PolicyAnnotator`, so a study spec lists it like a profile or a robot.

>>> # build_annotator("ppo_box_2d").act(obs, info)   -> a typed action (BoxAction, Accept, ...)
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hiseg_sim.annotators.base import Annotator
from hiseg_sim.policies.card import CARD_JSON, CARD_MD, read_card, write_card

__all__ = [
    "CARD_JSON",
    "LEGACY_POLICY_FILE",
    "POLICY_FILE",
    "PolicyAnnotator",
    "PolicyFileError",
    "best_ordered_pair",
    "check_policy_files",
    "convert_legacy_policy",
    "is_policy_dir",
    "load_policy",
    "load_policy_weights",
    "policies_dir",
    "policy_dir",
    "policy_names",
    "save_policy",
]

POLICY_FILE = "policy.pt"
#: the old format (a pickle); refused by the loader, converted only by :func:`convert_legacy_policy`
LEGACY_POLICY_FILE = "policy.zip"
#: the files a policy directory may hold besides the weights and the JSON card (never loaded as code)
DOC_FILES = (CARD_MD, "training_curve.csv")
DOC_SUFFIX = ".png"
WEIGHTS_FORMAT = "torch state dict of tensors; torch.load(weights_only=True)"
#: the first torch whose weights_only loader has no known way around it (CVE-2025-32434)
MIN_TORCH = (2, 6)


class PolicyFileError(ValueError):
    """A saved policy refused before any of it runs: the message names the file and the fix."""


def policies_dir() -> Path:
    """``agents/policies`` of the source tree (or the copy bundled in the wheel)."""
    from hiseg_sim.resources import shipped_path

    return shipped_path("agents", "policies")


def is_policy_dir(path: str | Path) -> bool:
    """Whether ``path`` looks like a saved policy: ``model_card.json`` beside ``policy.pt`` (or the
    old ``policy.zip``, so that loading it names the file and how to convert it). Loading checks
    the rest (:func:`check_policy_files`)."""
    p = Path(path)
    return (p / CARD_JSON).is_file() and ((p / POLICY_FILE).is_file() or (p / LEGACY_POLICY_FILE).is_file())


def policy_names(directory: str | Path | None = None) -> list[str]:
    """Names of the saved policies (directories that :func:`is_policy_dir` accepts)."""
    d = Path(directory) if directory is not None else policies_dir()
    return sorted(p.name for p in d.iterdir() if is_policy_dir(p)) if d.is_dir() else []


def policy_dir(name: str | Path) -> Path:
    """The directory of policy ``name`` (a saved policy's name, or a path to a policy directory)."""
    p = Path(name).expanduser()
    if is_policy_dir(p):
        return p
    cand = policies_dir() / str(name)
    if is_policy_dir(cand):
        return cand
    raise FileNotFoundError(
        f"no saved policy {str(name)!r}: expected {cand}/{POLICY_FILE} and {CARD_JSON} "
        f"(saved policies: {policy_names()}); train one with `hiseg-sim train-policy`"
    )


def _convert_hint(d: Path) -> str:
    return (
        f"if you trust that file, convert it with `python -m hiseg_sim.policies.store convert "
        f"{d} --trust-pickle` (hiseg_sim.policies.store.convert_legacy_policy(dir, trust_pickle=True))"
    )


def check_policy_files(path: str | Path) -> None:
    """Refuse a policy directory that holds the old ``policy.zip`` or any file other than
    ``policy.pt``, ``model_card.json``, ``model_card.md``, ``training_curve.csv`` and ``*.png``
    plots: raises :class:`PolicyFileError` naming the first such file."""
    d = Path(path)
    for f in sorted(d.iterdir()):
        if f.name == LEGACY_POLICY_FILE:
            raise PolicyFileError(
                f"{f}: old-format policy (a pickle, which runs code when loaded), refused; " + _convert_hint(d)
            )
        if f.is_file() and (f.name in (POLICY_FILE, CARD_JSON, *DOC_FILES) or f.suffix == DOC_SUFFIX):
            continue
        raise PolicyFileError(
            f"{f}: unexpected {'directory' if f.is_dir() else 'file'} in a saved policy, refused "
            f"(a policy directory holds only {POLICY_FILE}, {CARD_JSON}, {', '.join(DOC_FILES)} "
            f"and *{DOC_SUFFIX} plots); remove it or move it elsewhere"
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_weights(path: Path) -> dict:
    """The ``{name: tensor}`` dict in ``path``, read with ``weights_only=True`` (no code runs)."""
    import torch

    if tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < MIN_TORCH:
        raise PolicyFileError(
            f"{path}: not loaded with torch {torch.__version__}, whose weights_only loader can be "
            f"bypassed (CVE-2025-32434); install torch>={'.'.join(map(str, MIN_TORCH))}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # whatever the file holds, it is refused without running it
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise PolicyFileError(
            f"{path}: not a plain tensor state dict, refused without running it ({why}); "
            "re-save the policy with hiseg_sim.policies.store.save_policy"
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise PolicyFileError(
            f"{path}: holds a {type(state).__name__} that is not a {{name: tensor}} dict, refused; "
            "re-save the policy with hiseg_sim.policies.store.save_policy"
        )
    return state


def load_policy_weights(name: str | Path) -> tuple[dict, dict]:
    """``(state_dict, card)`` of a saved policy, after :func:`check_policy_files` and the card's
    SHA-256 of ``policy.pt``; the weights are read with ``torch.load(weights_only=True)``."""
    d = policy_dir(name)
    check_policy_files(d)
    card = read_card(d)
    for section in ("architecture", "weights"):
        if not isinstance(card.get(section), dict):
            raise PolicyFileError(
                f"{d / CARD_JSON}: no {section!r} section, so the policy cannot be rebuilt; "
                "re-save it with hiseg_sim.policies.store.save_policy"
            )
    path = d / POLICY_FILE
    if card["weights"].get("file") != POLICY_FILE:
        raise PolicyFileError(f"{d / CARD_JSON}: weights file {card['weights'].get('file')!r} is not {POLICY_FILE!r}")
    want, got = card["weights"].get("sha256"), _sha256(path)
    if got != want:
        raise PolicyFileError(
            f"{path}: sha256 {got[:16]}... is not the card's {str(want)[:16]}..., so these are not the "
            "weights the card describes; restore the file or re-save the policy"
        )
    return _read_weights(path), card


def _build(state: dict, card: dict, where: Path):
    """The SB3 policy of ``card['architecture']`` with ``state`` copied in (CPU, evaluation mode)."""
    import torch

    from hiseg_sim.policies.network import ArchitectureError, build_policy

    try:
        with torch.random.fork_rng(
            devices=[]
        ):  # the random initial weights are overwritten: leave torch's generator as it was
            policy = build_policy(card["architecture"])
    except ArchitectureError as exc:
        raise PolicyFileError(f"{where / CARD_JSON}: {exc}") from exc
    try:
        policy.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        why = " ".join(str(exc).split())[:200]
        raise PolicyFileError(
            f"{where / POLICY_FILE}: the weights do not fit the card's architecture ({why}); re-save the policy"
        ) from exc
    policy.set_training_mode(False)
    return policy


def load_policy(name: str | Path):
    """``(sb3_policy, card)`` of a saved policy (the policy on CPU, in evaluation mode): the network
    is built from the card's ``architecture`` and the weights copied in (:func:`load_policy_weights`)."""
    state, card = load_policy_weights(name)
    return _build(state, card, policy_dir(name)), card


def _write_weights(policy, path: Path, card: dict) -> dict:
    """Write ``policy``'s state dict to ``path`` (through a temporary file, so a reader never sees
    half of it) and return ``card`` with its ``architecture`` and ``weights``."""
    import torch

    from hiseg_sim.policies.network import describe_policy

    arch = describe_policy(policy)
    # the state dict's own tensors: keys that alias one module (SB3's shared features extractor is
    # also pi_ and vf_features_extractor) keep sharing storage, so torch.save writes it once
    state = dict(policy.state_dict())
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    weights = {
        "file": POLICY_FILE,
        "format": WEIGHTS_FORMAT,
        "sha256": _sha256(path),
        "tensors": len(state),
        "parameters": int(sum(p.numel() for p in policy.parameters())),
    }
    return {**card, "architecture": arch, "weights": weights}


def save_policy(policy, out_dir: str | Path, card: dict) -> dict:
    """Write ``policy.pt`` and the model card (JSON with ``architecture`` and ``weights``, and
    Markdown) to ``out_dir``; returns the card as written. Refuses a directory that already holds
    files a policy directory may not (:func:`check_policy_files`), such as an old ``policy.zip``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_policy_files(out)
    card = _write_weights(policy, out / POLICY_FILE, card)
    write_card(out, card)
    return card


def _outputs(policy, obs: dict):
    """Every action logit and the value of ``policy`` on ``obs`` (a batch): what it computes."""
    import torch

    with torch.no_grad():
        t, _ = policy.obs_to_tensor(obs)
        logits = torch.cat([d.logits for d in policy.get_distribution(t).distribution], dim=1)
        return torch.cat([logits, policy.predict_values(t)], dim=1)


def _probe_batch(policy, n: int, seed: int = 0) -> dict:
    """``n`` seeded observations of ``policy``'s space: a noise image, sparse 0/255 masks and
    prompts, uniform state values."""
    rng = np.random.default_rng(seed)
    scr, st = policy.observation_space["screen"], policy.observation_space["state"]
    screen = ((rng.random((n, *scr.shape)) < 0.05) * 255).astype(scr.dtype)
    screen[:, 0] = rng.integers(0, 256, (n, *scr.shape[1:]))
    return {"screen": screen, "state": rng.uniform(st.low, st.high, (n, *st.shape)).astype(st.dtype)}


def convert_legacy_policy(
    path: str | Path, *, trust_pickle: bool = False, remove_legacy: bool = True, check_batch: int = 16
) -> dict:
    """Convert an old-format policy directory (``policy.zip``) to ``policy.pt`` and a card with its
    ``architecture`` and ``weights``.

    Reading ``policy.zip`` unpickles it with stable-baselines3's loader, which runs any code the
    file holds: only for a file you trust, and only with ``trust_pickle=True`` (a warning says so
    each time). Nothing else in hiseg-sim reads that file. The conversion is checked before
    anything is written over: the rebuilt network has the same spaces, bit-identical tensors after
    a round trip through the new file, and identical action logits and values on ``check_batch``
    seeded observations; then the card is rewritten and, with ``remove_legacy``, ``policy.zip``
    deleted (else move it out yourself: the loader refuses a directory that holds it).

    Returns ``{"policy", "tensors", "parameters", "batch", "max_abs_diff", "removed"}``.
    """
    import torch

    from hiseg_sim.policies.network import POLICY_CLASSES

    d = Path(path)
    legacy = d / LEGACY_POLICY_FILE
    if not legacy.is_file():
        raise PolicyFileError(f"{legacy}: no such file; nothing to convert")
    if not trust_pickle:
        raise PolicyFileError(
            f"{legacy}: converting unpickles it, which runs any code it holds; "
            "pass trust_pickle=True (--trust-pickle) only for a file you trust"
        )
    stray = [
        f
        for f in sorted(d.iterdir())
        if f.name not in (LEGACY_POLICY_FILE, POLICY_FILE, CARD_JSON, *DOC_FILES)
        and not (f.is_file() and f.suffix == DOC_SUFFIX)
    ]
    if stray:
        raise PolicyFileError(
            f"{stray[0]}: unexpected file in a saved policy, not converted; remove it or move it "
            "elsewhere, then convert again"
        )
    card = read_card(d)
    cls = POLICY_CLASSES[
        "SpatialActorCriticPolicy" if card.get("network") == "spatial" else "MultiInputActorCriticPolicy"
    ]
    warnings.warn(
        f"unpickling {legacy} with stable-baselines3's loader, which runs any code the file holds (trust_pickle=True)",
        UserWarning,
        stacklevel=2,
    )
    old = cls.load(str(legacy), device="cpu")  # the explicit opt-in above
    old.set_training_mode(False)
    obs = _probe_batch(old, int(check_batch))
    want = _outputs(old, obs)
    staged = d / (POLICY_FILE + ".new")  # verified before it replaces anything
    try:
        new_card = _write_weights(old, staged, card)
        new = _build(_read_weights(staged), new_card, d)
        if new.observation_space != old.observation_space or new.action_space != old.action_space:
            raise PolicyFileError(f"{d}: the rebuilt policy's spaces differ from {legacy.name}'s; not converted")
        old_sd, new_sd = old.state_dict(), new.state_dict()
        if list(old_sd) != list(new_sd) or not all(torch.equal(old_sd[k], new_sd[k]) for k in old_sd):
            raise PolicyFileError(f"{d}: the rebuilt policy's tensors differ from {legacy.name}'s; not converted")
        got = _outputs(new, obs)
        diff = float((got - want).abs().max())
        if not torch.equal(got, want):
            raise PolicyFileError(
                f"{d}: the rebuilt policy's outputs differ from {legacy.name}'s by up to {diff:g}; not converted"
            )
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    os.replace(staged, d / POLICY_FILE)
    new_card["weights"]["converted_from"] = f"{LEGACY_POLICY_FILE} (stable-baselines3 policy.save)"
    write_card(d, new_card)
    if remove_legacy:
        legacy.unlink()
    return {
        "policy": d.name,
        "tensors": new_card["weights"]["tensors"],
        "parameters": new_card["weights"]["parameters"],
        "batch": int(check_batch),
        "max_abs_diff": diff,
        "removed": bool(remove_legacy),
    }


def best_ordered_pair(lp_lo: np.ndarray, lp_hi: np.ndarray, min_gap: int = 1) -> tuple[int, int]:
    """``argmax_{j >= i + min_gap} lp_lo[i] + lp_hi[j]``: the best pair of ordered corner cells.

    >>> best_ordered_pair(np.log([0.1, 0.2, 0.7]), np.log([0.1, 0.8, 0.1]))
    (0, 1)
    """
    lp_lo, lp_hi = np.asarray(lp_lo, float), np.asarray(lp_hi, float)
    n = len(lp_lo)
    if len(lp_hi) != n or n <= min_gap:
        raise ValueError(f"need two score vectors of one length > min_gap; got {len(lp_lo)}, {len(lp_hi)}")
    tot = lp_lo[:, None] + lp_hi[None, :]
    tot[~np.triu(np.ones((n, n), bool), k=int(min_gap))] = -np.inf
    i, j = np.unravel_index(int(np.argmax(tot)), tot.shape)
    return int(i), int(j)


class PolicyAnnotator(Annotator):
    """A saved policy as an :class:`~hiseg_sim.annotators.base.Annotator`.

    It sees only the observation (``reads_ground_truth = False``) and, when its card names a
    ``perception`` profile, the intent the harness's perception step draws for it as for a person
    of that profile (:mod:`hiseg_sim.policies.intent`); ``act`` maps the
    observation through :func:`~hiseg_sim.policies.spaces.observe`, asks the policy for a grid
    action (``deterministic``: the most likely one; else sampled with the episode's generator
    seeding torch) and returns the typed env action. The policy's weights are loaded once per
    process and shared by copies (a study's sequence design deep-copies annotators); the directory
    is checked when the annotator is made (:func:`check_policy_files`), the weights when first used
    (:func:`load_policy`).

    A greedy policy that sees the same screen twice gives the same action twice; after a box the
    screen changes, but if the policy asks for the very same box again the env shows the very same
    mask, and it would loop until the step budget ends. With ``repeat_guard`` (default) a prompt
    identical to the previous action (same kind, same place) is therefore replaced by ``Accept``:
    the policy is asking for the mask it already has. ``guarded`` counts the replacements of the
    episode (in the summary as ``repeat_guarded``).

    Args:
        name: a saved policy's name or directory.
        deterministic: act greedily (default) or sample.
        label: the name written in traces (default the policy's name).
        repeat_guard: replace an exact repeat of the previous prompt by ``Accept``.
        box_decode: how a greedy policy turns its corner distributions into a box: ``"joint"``
            (default; :meth:`_joint_box`, corners kept in order) or ``"independent"`` (each
            corner's own argmax).
        tta: with the joint decode, average the corner log-probabilities over the 8 symmetries
            of the square (flips and quarter turns of the screen, mapped back) before decoding;
            default the card's ``tta`` (off). In a study: ``overrides = {tta = true}``.
    """

    reads_ground_truth = False
    _CACHE: dict[str, Any] = {}

    def __init__(
        self,
        name: str,
        deterministic: bool = True,
        label: str | None = None,
        repeat_guard: bool = True,
        box_decode: str | None = None,
        tta: bool | None = None,
    ):
        d = policy_dir(name)
        check_policy_files(d)
        self.path = str(d.resolve())
        self.card = read_card(d)
        self.name = label or d.name
        self.deterministic = bool(deterministic)
        self.repeat_guard = bool(repeat_guard)
        self._last = None
        self.guarded = 0
        self.grid = int(self.card["grid"])
        self.three_d = bool(self.card.get("three_d", False))
        self.max_steps = int(self.card.get("max_episode_steps", 20))
        self._rng: np.random.Generator | None = None
        self.perception = self.card.get("perception")  # a profile's eye (policies.intent), or None
        self._intent = None
        self.tta = bool(self.card.get("tta", False)) if tta is None else bool(tta)
        self.box_decode = box_decode if box_decode is not None else str(self.card.get("box_decode", "joint"))
        if self.box_decode not in ("joint", "independent"):
            raise ValueError(f"box_decode must be 'joint' or 'independent'; got {self.box_decode!r}")

    def __deepcopy__(self, memo):  # the weights are shared, the per-episode state is not
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._rng = None
        return new

    @property
    def policy(self):
        pol = PolicyAnnotator._CACHE.get(self.path)
        if pol is None:
            pol = PolicyAnnotator._CACHE[self.path] = load_policy(self.path)[0]
        return pol

    def perception_params(self):
        """The perception parameters of the card's ``perception`` profile (the harness then draws
        this policy's intent as for a person of it), or ``None``."""
        if not self.perception:
            return None
        from hiseg_sim.policies.intent import perception_params_of

        return perception_params_of(self.perception)

    def begin_case(self, knowledge, rng: np.random.Generator) -> None:
        self._rng = rng
        self._intent = getattr(knowledge, "intent", None) if self.perception else None
        self._last = None
        self.guarded = 0

    def act(self, obs: dict, info: dict):
        import torch

        from hiseg_sim.env.actions import Kind, from_array
        from hiseg_sim.policies.spaces import action_to_env, observe

        if self._rng is None:
            raise RuntimeError("call begin_case(knowledge, rng) before act()")
        want = int(self.card.get("viewport_px", obs["image"].shape[-1]))
        if obs["image"].shape[-1] != want:
            raise ValueError(
                f"policy {self.name!r} was trained on a {want}-px viewport; this env shows "
                f"{obs['image'].shape[-1]} px (give the env viewport_px={want})"
            )
        if self.perception:
            from hiseg_sim.policies.intent import intent_channel

            obs = {**obs, "intent": intent_channel(self._intent, int(obs["image"].shape[-1]))}
        view = observe(obs, self.max_steps, self.three_d)
        policy = self.policy  # loaded before seeding, so a sampled action never depends on whether it was cached
        if not self.deterministic:
            torch.manual_seed(int(self._rng.integers(2**31)))
        with torch.no_grad():
            a, _ = policy.predict(view, deterministic=self.deterministic)
            if self.deterministic and self.box_decode == "joint" and int(np.asarray(a).reshape(-1)[0]) == Kind.BOX:
                a = self._joint_box(view, a)
        size = int(obs["image"].shape[-1])
        arr = action_to_env(a, self.grid, size)
        if self.repeat_guard and self._last is not None and arr[0] <= 2 and np.array_equal(arr, self._last):
            self.guarded += 1
            arr = np.array([4, 0, 0, 0, 0], np.int64)  # Accept
        self._last = arr
        return from_array(arr)

    def _joint_box(self, view: dict, a) -> np.ndarray:
        """The most likely box with its corners in order: per axis, the pair of cells ``(lo, hi)``
        with ``hi >= lo + 1`` that maximises ``log p(lo) + log p(hi)`` under the policy's two
        (independent) corner distributions. Taking each corner's own argmax can give a box whose
        corners cross or meet when the distributions are wide; the env would then see a sliver or
        an invalid box."""
        import torch

        from hiseg_sim.policies.spaces import augment, corner_scores_back

        def corner_lps(v):
            obs_t, _ = self.policy.obs_to_tensor(v)
            dist = self.policy.get_distribution(obs_t)
            return [torch.log_softmax(d.logits[0], dim=-1).cpu().numpy() for d in dist.distribution[1:5]]

        if not self.tta:
            lps = corner_lps(view)  # x0, y0, x1, y1
        else:  # test-time augmentation: mean log-probabilities over the 8 symmetries of the square
            backs = []
            for flip in (False, True):
                for k in range(4):
                    sc = augment(view["screen"], np.zeros(5, np.int64), k, flip, self.grid)[0]
                    backs.append(corner_scores_back(corner_lps({"screen": sc, "state": view["state"]}), k, flip))
            lps = [np.mean([b[c] for b in backs], axis=0) for c in range(4)]
        out = np.asarray(a, np.int64).reshape(-1).copy()
        out[1], out[3] = best_ordered_pair(lps[0], lps[2])
        out[2], out[4] = best_ordered_pair(lps[1], lps[3])
        return out

    def episode_info(self) -> dict:
        return {"repeat_guarded": int(self.guarded)}

    def end_case(self, feedback) -> None:
        return None


def _main(argv: list[str] | None = None) -> int:
    """``python -m hiseg_sim.policies.store convert DIR [DIR ...] --trust-pickle``."""
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m hiseg_sim.policies.store",
        description="Convert old-format saved policies (policy.zip, a pickle) to policy.pt.",
    )
    sub = ap.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert policy directories you trust (unpickles their policy.zip)")
    conv.add_argument("dirs", nargs="+", type=Path)
    conv.add_argument("--trust-pickle", action="store_true", help="required: reading policy.zip runs any code it holds")
    conv.add_argument("--keep-legacy", action="store_true", help="leave policy.zip in place (move it out yourself)")
    args = ap.parse_args(argv)
    for d in args.dirs:
        try:
            res = convert_legacy_policy(d, trust_pickle=args.trust_pickle, remove_legacy=not args.keep_legacy)
        except PolicyFileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(
            f"{d}: {res['tensors']} tensors, {res['parameters']} parameters; outputs on {res['batch']} observations "
            f"identical (max abs diff {res['max_abs_diff']:g}); {LEGACY_POLICY_FILE} "
            f"{'removed' if res['removed'] else 'kept'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
