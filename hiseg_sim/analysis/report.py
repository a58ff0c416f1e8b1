"""Reports: ``report.md`` and ``report.html`` in the run directory, with tables, figures and headline numbers.

>>> from hiseg_sim.analysis.report import build_report
>>> rep = build_report("runs/hiseg_groups")              # doctest: +SKIP
>>> rep.headline["groups"]["expert_radiologist"]["dice"] # doctest: +SKIP

What a report holds depends on the study's ``kind`` (:mod:`hiseg_sim.studies`); every
report opens with the run's facts (config hash, versions, seeds, episodes) and writes:

- ``report.md`` and ``report.html`` (self-contained but for the PNGs beside it),
- ``figures/*.png``, ``tables/*.csv`` (every table in full precision),
- ``headline.json``: the key numbers, for notes and for checking a run against another.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hiseg_sim.analysis.section import Section
from hiseg_sim.codec import json_default
from hiseg_sim.experiments.spec import STUDY_KINDS
from hiseg_sim.experiments.storage import load_run

__all__ = ["Report", "build_report", "md_table"]


@dataclass
class Report:
    md_path: Path
    html_path: Path
    figures: list[Path]
    headline: dict


def _cell(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return "–"
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def md_table(df: pd.DataFrame, index: bool = False) -> str:
    """A GitHub-flavoured Markdown table."""
    d = df.reset_index() if index else df
    cols = [str(c) for c in d.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in d.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def _html_table(df: pd.DataFrame, index: bool = False) -> str:
    d = df.reset_index() if index else df
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in d.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                   for row in d.itertuples(index=False, name=None))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_inline_to_html(text: str) -> str:
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
    return t


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;
padding-bottom:.2em;margin-top:1.8em}table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.86em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption,.cap{font-size:.88em;color:#555}
code{background:#f4f4f4;padding:0 .2em}"""


def render(title: str, sections: list[Section], out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for ``sections`` into ``out_dir``."""
    md = [f"# {title}", ""]
    hb = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
          f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        md += [f"## {s.title}", ""]
        hb.append(f"<h2>{html.escape(s.title)}</h2>")
        for p in s.paragraphs:
            md += [p, ""]
            hb.append(f"<p>{_md_inline_to_html(p)}</p>")
        for cap, df in s.tables:
            md += [f"*{cap}*", "", md_table(df), ""]
            hb.append(f"<p class='cap'><i>{html.escape(cap)}</i></p>{_html_table(df)}")
        for cap, path in s.figures:
            rel = Path(os.path.relpath(Path(path).resolve(), Path(out_dir).resolve()))
            md += [f"![{cap}]({rel.as_posix()})", "", f"*{cap}*", ""]
            hb.append(f"<figure><img src='{html.escape(rel.as_posix())}' alt='{html.escape(cap)}'>"
                      f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    hb.append("</body></html>")
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    md_path.write_text("\n".join(md))
    html_path.write_text("\n".join(hb))
    return md_path, html_path


def _overview(data, spec: dict) -> Section:
    meta = data.meta
    e = data.episodes
    s = Section("The run")
    if spec.get("description"):
        s.paragraphs.append(spec["description"])
    v = meta.get("versions", {})
    segs = ", ".join(f"`{k}` (weights sha256 {str(m.get('weights_sha256'))[:12]}…, decoder {m.get('runtime')})"
                     for k, m in meta.get("segmenters", {}).items()) or "–"
    sessions = meta.get("sessions", [])
    last = sessions[-1] if sessions else {}
    s.paragraphs += [
        f"**{len(e)} episodes**, {e['case_id'].nunique() if len(e) else 0} cases, arms "
        f"{', '.join(f'`{a}`' for a in spec.get('annotators_labels', []))}; environment `{spec.get('env_id')}`; "
        f"segmenters {segs}.",
        f"Config hash `{meta.get('config_hash')}`, study seed {spec.get('seed')}, status **{meta.get('status')}** "
        f"({meta.get('units_complete', '?')}/{meta.get('n_units', '?')} units). Last session: executor "
        f"`{last.get('executor')}`, {last.get('workers')} worker(s), {last.get('units_run')} unit(s) run in "
        f"{last.get('wall_s')} s (load average {last.get('loadavg_start')} → {last.get('loadavg_end')}).",
        f"Versions: Python {v.get('python')}, NumPy {v.get('numpy')}, torch {v.get('torch')}, gymnasium "
        f"{v.get('gymnasium')}, ONNX Runtime {v.get('onnxruntime', '–')}, hiseg-sim {v.get('hiseg_sim')} "
        f"(commit {v.get('git_commit')}).",
        "Intervals are 95 % percentile bootstrap intervals resampling whole cases (persons in sequence "
        "studies), seeded; the ground truth is the LIDC reader consensus on the slice(s) the environment scores.",
    ]
    if meta.get("status") != "complete":
        s.paragraphs.append("**This run is incomplete**: the figures cover the finished units only; run it again to resume.")
    return s


def build_report(run_dir, out_dir=None, n_boot: int | None = None, seed: int | None = None) -> Report:
    """Analyse the run in ``run_dir`` and write its report (see the module docstring).

    Args:
        run_dir: ``runs/<study>``.
        out_dir: where to write (default ``run_dir``).
        n_boot: bootstrap replicates (default: the spec's ``[analysis] n_boot``, else 2000).
        seed: bootstrap seed (default: the spec's ``[analysis] seed``, else 0).
    """
    data = load_run(run_dir)
    if data.episodes.empty:
        raise ValueError(f"{run_dir}: no finished episodes to report on")
    spec = dict(data.spec)
    spec["annotators_labels"] = [a["label"] for a in spec.get("annotators", [])]
    settings = dict(spec.get("analysis", {}))
    if n_boot is not None:
        settings["n_boot"] = n_boot
    if seed is not None:
        settings["seed"] = seed
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    kind = spec.get("kind", "groups")
    body, headline = STUDY_KINDS.get(kind).sections(data, settings, out)
    secs = [_overview(data, spec)] + body
    for sec in secs:
        for cap, df in sec.tables:
            slug = "".join(ch if ch.isalnum() else "_" for ch in cap.lower())[:60].strip("_")
            df.to_csv(out / "tables" / f"{slug}.csv", index=False)
    title = f"hiseg-sim study `{spec.get('name')}` ({kind})"
    md, htmlp = render(title.replace("`", ""), secs, out)
    headline = {"study": spec.get("name"), "kind": kind, "episodes": int(len(data.episodes)),
                "config_hash": data.meta.get("config_hash"), **headline}
    (out / "headline.json").write_text(json.dumps(headline, indent=1, default=json_default) + "\n")
    figs = [p for s in secs for _, p in s.figures]
    return Report(md, htmlp, figs, headline)

