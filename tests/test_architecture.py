"""The package's shape: no import cycle, layers that import only downward, no reads of an env's
private state from outside ``hiseg_sim/env``, and plugins usable from a spec by name."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "hiseg_sim"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports, at module level or inside functions alike."""
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(filter(None, (owner(a.name) for a in node.names)))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                for a in node.names:
                    hit = f"{base}.{a.name}" if f"{base}.{a.name}" in mods else owner(base)
                    if hit:
                        deps.add(hit)
        deps.discard(mod)
        graph[mod] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_the_package():
    assert _cycles(_import_graph()) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: The layers, lowest first: a module may import its own layer and those below, never above.
LAYERS = [
    {
        "hiseg_sim.registry",
        "hiseg_sim.codec",
        "hiseg_sim.metrics",
        "hiseg_sim.timing",
        "hiseg_sim.limits",
        "hiseg_sim.progress",
        "hiseg_sim.resources",
        "hiseg_sim.seeding",
    },
    {"hiseg_sim.data"},
    {"hiseg_sim.segmenters"},
    {"hiseg_sim.env"},
    {"hiseg_sim.annotators"},
    {"hiseg_sim.experiments"},
    {"hiseg_sim.analysis"},
    {"hiseg_sim.studies"},
    {"hiseg_sim.downstream"},
    {"hiseg_sim.policies"},
    {"hiseg_sim.fitting"},
    {"hiseg_sim.cli", "hiseg_sim.bench", "hiseg_sim.demo", "hiseg_sim.fuzz", "hiseg_sim.annotate"},
]


def _layer(mod: str) -> int | None:
    if mod == "hiseg_sim":
        return None  # the package's own __init__ only registers the envs
    for i, layer in enumerate(LAYERS):
        if any(mod == top or mod.startswith(top + ".") for top in layer):
            return i
    return None


def test_every_module_sits_in_a_layer():
    assert [m for m in _import_graph() if m != "hiseg_sim" and _layer(m) is None] == []


def test_imports_run_only_down_the_layers():
    bad = []
    for mod, deps in _import_graph().items():
        lm = _layer(mod)
        for d in deps:
            ld = _layer(d)
            if lm is not None and ld is not None and ld > lm:
                bad.append(f"{mod} -> {d}")
    assert bad == []


def test_no_code_outside_env_reads_private_env_state():
    """Attributes of an env (``env``, ``u = env.unwrapped``, ``self._env``...) that start with ``_``
    are read only inside ``hiseg_sim/env``."""
    bad = []
    for path in PKG.rglob("*.py"):
        if path.is_relative_to(PKG / "env"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                if isinstance(base, ast.Attribute) and base.attr == "unwrapped":
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} .unwrapped.{node.attr}")
                elif isinstance(base, ast.Name) and base.id in {"u", "env", "unwrapped"}:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {base.id}.{node.attr}")
    assert bad == []


def test_a_plugin_package_adds_an_annotator_and_a_cohort_usable_from_a_spec(tmp_path):
    """A package made here (a module and its dist-info with entry points) adds one annotator and one
    cohort; a spec names them and runs, with no change to hiseg-sim."""
    site = tmp_path / "site"
    (site / "acme_nodules").mkdir(parents=True)
    (site / "acme_nodules" / "__init__.py").write_text(
        textwrap.dedent('''
        from hiseg_sim.annotators.base import Annotator
        from hiseg_sim.env import Accept, BoxAction
        from tests.env_support import synthetic_cases


        def three_cases():
            return synthetic_cases()[:3]


        class CentreBox(Annotator):
            """A plugin's annotator: one box around the viewport centre, then accept."""

            def __init__(self, half: int = 10):
                self.name, self.half, self.t = "acme_centre_box", int(half), 0

            def begin_case(self, knowledge, rng):
                self.t = 0

            def act(self, obs, info):
                self.t += 1
                c = obs["image"].shape[-1] // 2
                return BoxAction(c - self.half, c - self.half, c + self.half, c + self.half) if self.t == 1 else Accept()
    ''')
    )
    dist = site / "acme_nodules-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-nodules\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[hiseg_sim.annotators]\nacme_centre_box = acme_nodules:CentreBox\n\n"
        "[hiseg_sim.cohorts]\nacme_three = acme_nodules:three_cases\n"
    )
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(site)!r}, {str(ROOT / "tests" / "plugins")!r}, {str(ROOT)!r}]
        from hiseg_sim.experiments.runner import run_study
        from hiseg_sim.experiments.spec import spec_from_dict
        spec = spec_from_dict({{
            "study": {{"name": "plugin_study", "seed": 1}},
            "cases": {{"source": "acme_three"}},
            "segmenters": {{"names": ["stub_env"]}},
            "annotators": [{{"name": "acme_centre_box", "overrides": {{"half": 8}}}}],
            "run": {{"executor": "serial"}},
        }}, "plugin.toml")
        data = run_study(spec, {str(tmp_path / "run")!r}, executor="serial", progress=False)
        print(len(data.episodes), sorted(set(data.episodes["annotator"])), data.episodes["n_prompts"].tolist())
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "3 ['acme_centre_box'] [1, 1, 1]"


def test_an_unknown_plugin_name_lists_what_exists():
    from hiseg_sim.annotators.registry import ANNOTATORS
    from hiseg_sim.registry import UnknownNameError

    with pytest.raises(UnknownNameError) as err:
        ANNOTATORS.get("expert_radiolgist")
    msg = str(err.value)
    assert "did you mean 'expert_radiologist'?" in msg and "robot_ritm" in msg and "\n" not in msg
