"""Reports: ``report.md`` and ``report.html`` in the run directory, with tables, figures and headline numbers.

>>> from hiseg_sim.analysis.report import build_report
>>> rep = build_report("runs/hiseg_groups")              # doctest: +SKIP
>>> rep.headline["groups"]["expert_radiologist"]["dice"] # doctest: +SKIP

What a report holds depends on the study's ``kind`` (:mod:`hiseg_sim.studies`). Every report has
the same order: the kind's key findings (each difference with its interval and whether it is
significant), then its sections (figures first, then tables), then what every table column means,
then the run's facts (episodes, config hash, seeds, sessions, versions) at the end. It writes:

- ``report.html``: one file that travels alone (the figures are inside it as PNG data URIs);
- ``report.md`` with ``figures/*.png`` beside it (the Markdown links them);
- ``tables/*.csv``: every table in full precision, named after its caption's first words;
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

from hiseg_sim.analysis.section import Section, column_definition
from hiseg_sim.codec import json_default
from hiseg_sim.experiments.spec import STUDY_KINDS
from hiseg_sim.experiments.storage import load_run
from hiseg_sim.progress import phase

__all__ = ["Report", "build_report", "md_table", "order_sections", "render", "table_file_name"]


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
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
        for row in d.itertuples(index=False, name=None)
    )
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


def _bullets_html(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{_md_inline_to_html(b)}</li>" for b in items) + "</ul>"


def _img_data_uri(path: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _glossary(sections: list[Section]) -> tuple[Section | None, list[str]]:
    """A section defining every column of the sections' tables, and the columns nobody defines."""
    defs: dict[str, str] = {}
    missing: list[str] = []
    for s in sections:
        for t in s.tables:
            for col in t[1].columns:
                col = str(col)
                if col in defs or col in missing:
                    continue
                meaning = column_definition(col, s.definitions)
                if meaning is None:
                    missing.append(col)
                else:
                    defs[col] = meaning
    if not defs:
        return None, missing
    by_meaning: dict[str, list[str]] = {}
    for c, m in defs.items():  # columns of one pattern (Dice after 1, 2, 3 ...) share one line
        by_meaning.setdefault(m, []).append(c)
    g = Section("What the columns mean")
    g.bullets = [f"**{', '.join(cols)}**: {m}" for m, cols in by_meaning.items()]
    return g, missing


def order_sections(sections: list[Section], about: Section | None = None) -> list[Section]:
    """Lead sections (key findings) first, then the rest in order, the column glossary, and ``about`` last."""
    lead = [s for s in sections if s.lead]
    body = [s for s in sections if not s.lead]
    glossary, _ = _glossary(sections)
    return lead + body + ([glossary] if glossary else []) + ([about] if about else [])


def render(title: str, sections: list[Section], out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for ``sections`` (in the order given) into ``out_dir``."""
    md = [f"# {title}", ""]
    hb = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    for s in sections:
        md += [f"## {s.title}", ""]
        hb.append(f"<h2>{html.escape(s.title)}</h2>")
        for p in s.paragraphs:
            md += [p, ""]
            hb.append(f"<p>{_md_inline_to_html(p)}</p>")
        if s.bullets:
            md += [f"- {b}" for b in s.bullets] + [""]
            hb.append(_bullets_html(s.bullets))
        for p in s.notes:
            md += [p, ""]
            hb.append(f"<p class='cap'>{_md_inline_to_html(p)}</p>")
        for cap, path in s.figures:
            rel = Path(os.path.relpath(Path(path).resolve(), Path(out_dir).resolve()))
            md += [f"![{cap}]({rel.as_posix()})", "", f"*{cap}*", ""]
            hb.append(
                f"<figure><img src='{_img_data_uri(Path(path))}' alt='{html.escape(cap)}'>"
                f"<figcaption>{html.escape(cap)}</figcaption></figure>"
            )
        for t in s.tables:
            cap, df = t[0], t[1]
            md += [f"*{cap}*", "", md_table(df), ""]
            hb.append(f"<p class='cap'><i>{_md_inline_to_html(cap)}</i></p>{_html_table(df)}")
    hb.append("</body></html>")
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    md_path.write_text("\n".join(md))
    html_path.write_text("\n".join(hb))
    return md_path, html_path


def table_file_name(caption: str, max_len: int = 48) -> str:
    """A CSV name from a caption: its first words, lower case, joined by ``_``, cut between words.

    >>> table_file_name("Per group: final Dice against the reference, simulated seconds and prompts per nodule")
    'per_group_final_dice_against_the_reference'
    """
    import re

    words = [w for w in re.split(r"[^0-9a-z]+", caption.lower()) if w]
    out = ""
    for w in words:
        nxt = f"{out}_{w}" if out else w
        if len(nxt) > max_len and out:
            break
        out = nxt
    return out[:max_len] or "table"


def _about(data, spec: dict) -> Section:
    meta = data.meta
    e = data.episodes
    s = Section("About this run")
    v = meta.get("versions", {})
    segs = (
        ", ".join(
            f"`{k}` (weights sha256 {str(m.get('weights_sha256'))[:12]}…, decoder {m.get('runtime')})"
            for k, m in meta.get("segmenters", {}).items()
        )
        or "–"
    )
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
    return s


def _intro(data, spec: dict) -> str:
    e = data.episodes
    what = spec.get("description") or ""
    n = f"{len(e)} episodes on {e['case_id'].nunique() if len(e) else 0} nodules"
    return f"{what} ({n}; how the run was made is at the end.)" if what else f"{n}; how the run was made is at the end."


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
    with phase(f"building the report of {out}"):
        body, headline = STUDY_KINDS.get(kind).sections(data, settings, out)
        lead = [s for s in body if s.lead]
        intro = _intro(data, spec)
        if lead:
            lead[0].paragraphs.insert(0, intro)
        else:
            body[0].paragraphs.insert(0, intro)
        if data.meta.get("status") != "complete":
            (lead or body)[0].paragraphs.insert(
                0,
                "**This run is incomplete**: the numbers cover the finished units "
                "only; run the same command again to resume.",
            )
        secs = order_sections(body, _about(data, spec))
        used: set[str] = set()
        for old in (out / "tables").glob("*.csv"):  # tables of an earlier build that this one may not write
            old.unlink()
        for sec in secs:
            for t in sec.tables:
                name = t[2] if len(t) > 2 else table_file_name(t[0])
                stem, i = name, 2
                while name in used:
                    name, i = f"{stem}_{i}", i + 1
                used.add(name)
                t[1].to_csv(out / "tables" / f"{name}.csv", index=False)
        title = f"hiseg-sim study `{spec.get('name')}` ({kind})"
        md, htmlp = render(title.replace("`", ""), secs, out)
    headline = {
        "study": spec.get("name"),
        "kind": kind,
        "episodes": int(len(data.episodes)),
        "config_hash": data.meta.get("config_hash"),
        **headline,
    }
    (out / "headline.json").write_text(json.dumps(headline, indent=1, default=json_default) + "\n")
    figs = [p for s in secs for _, p in s.figures]
    return Report(md, htmlp, figs, headline)
