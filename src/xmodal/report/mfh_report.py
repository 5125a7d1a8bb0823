"""MFH reports: report.md + report.html + PNG plots + report.json, for the diagnostic and for the
synthetic gauss study. Inputs are JSON-able results (`DiagnoseResult.to_json()`, `run_synthetic`).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xmodal.report import mfh_plots


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _stat(s: dict | None, digits: int = 1) -> str:
    return "–" if not s else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _html(title: str, md_lines: list[str]) -> str:
    """A minimal HTML rendering of our own Markdown subset (headings, tables, images, paragraphs)."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}</style></head><body>"]
    table: list[str] = []

    def flush() -> None:
        if table:
            rows = [r.strip("|").split("|") for r in table if not set(r.replace("|", "").strip()) <= set("-: ")]
            out.append("<table>" + "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c.strip())}</{'th' if i == 0 else 'td'}>" for c in r) + "</tr>"
                for i, r in enumerate(rows)) + "</table>")
            table.clear()

    for line in md_lines:
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.startswith("![") and "](" in line:
            alt, src = line[2:].split("](", 1)
            out.append(f"<p><img alt='{html.escape(alt)}' src='{html.escape(src.rstrip(')'))}'></p>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    out.append("</body></html>")
    return "\n".join(out)


def _write(out: Path, title: str, lines: list[str], data: Any) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "html": out / "report.html", "json": out / "report.json"}
    paths["md"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    paths["html"].write_text(_html(title, lines), encoding="utf-8")
    paths["json"].write_text(json.dumps(data, indent=2, allow_nan=False), encoding="utf-8")
    return paths


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    return obj


# ------------------------------------------------------------------------------- diagnostic
def write_diagnose_report(results: Sequence[dict], out: str | Path, *, labels: Sequence[str] = ()) -> dict[str, Path]:
    """One report over one or more diagnose results (e.g. the same recipe at several data gaps)."""
    out = Path(out)
    labels = list(labels) or [r["name"] for r in results]
    plots: list[tuple[str, str]] = []
    for lab, r in zip(labels, results):
        name = f"saliency_{len(plots)}.png" if len(results) > 1 else "saliency.png"
        mfh_plots.plot_saliency(r["scores"], out / name, title=f"{lab}: teacher channel saliency")
        plots.append((f"saliency per channel ({lab})", name))
    mfh_plots.plot_accuracy_vs_gamma_hat(results, out / "accuracy_vs_gamma.png", labels=labels)
    plots.append(("student accuracy vs γ̂", "accuracy_vs_gamma.png"))
    observed = [r for r in results if r.get("kd_gain") is not None]
    if observed:
        mfh_plots.plot_predicted_vs_observed([r["gamma_hat"] for r in observed], [r["kd_gain"] for r in observed],
                                             out / "predicted_vs_observed.png",
                                             labels=[lab for lab, r in zip(labels, results) if r.get("kd_gain") is not None],
                                             threshold=observed[0]["threshold"])
        plots.append(("predicted γ̂ vs observed KD gain", "predicted_vs_observed.png"))
    first = results[0]
    lines = [f"# MFH diagnostic: {first['teacher_modality']} teacher → {first['student_modality']} student", ""]
    for lab, r in zip(labels, results):
        lines += [f"## {lab}", "", f"Verdict: {r['verdict']}", ""]
        if r.get("kd_gain") is not None:
            ok = "agrees" if r["agrees"] else "does NOT agree"
            lines += [f"Observed ({r.get('kd_runner')}): the KD student reached {r['kd_acc']:.1f} % vs {r['kd_baseline_acc']:.1f} % "
                      f"without KD ({r['kd_gain']:+.1f} points); the verdict {ok} with the observed gain.", ""]
    lines += ["## Numbers", "",
              "| setting | γ̂ (raw / ceiling) | verdict | teacher acc (own labels) | teacher acc (student labels) | reference acc | student no-KD | student KD | KD gain | seconds |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for lab, r in zip(labels, results):
        lines.append(f"| {lab} | {r['gamma_hat']:.2f} ({_fmt(r.get('gamma_raw'), 3)} / {_fmt(r.get('gamma_ceiling'), 3)}) | "
                     f"{'helps' if r['helps'] else 'does not help'} | {_fmt(r['teacher_acc'])} | "
                     f"{_fmt(r['teacher_acc_on_student_labels'])} | {_fmt(r['reference_acc'])} | "
                     f"{_fmt(r['kd_baseline_acc'] if r.get('kd_baseline_acc') is not None else r['student_acc'])} | {_fmt(r.get('kd_acc'))} | "
                     f"{_fmt(r.get('kd_gain'))} | {_fmt(r['seconds'].get('total'))} |")
    lines += ["", "γ̂ is the share of the teacher's decisive signal (logit variance it draws from its channels) that a "
              "network on the student's modality also carries, estimated with Algorithm 1's channel permutations "
              "(Xue et al., ICLR 2023). MFH: the KD gain follows γ, not the teacher's accuracy.", "", "## Plots", ""]
    for title, name in plots:
        lines += [f"![{title}]({name})", ""]
    data = {"results": [_finite(r) for r in results], "labels": labels}
    return _write(out, "MFH diagnostic", lines, data)


# -------------------------------------------------------------------------------- synthetic
def write_synthetic_report(res: dict, out: str | Path) -> dict[str, Path]:
    """Report of `run_synthetic` output: sweep tables and plots, Table 2, removal study."""
    out = Path(out)
    lines = ["# MFH synthetic Gaussian study", ""]
    gains: tuple[list, list, list] = ([], [], [])
    for study, title in (("gamma", "Setting G: increasing γ (paper Fig. 2)"), ("alpha", "Setting A: increasing α (paper Fig. 3)")):
        if study not in res:
            continue
        r = res[study]
        png = f"{study}_sweep.png"
        mfh_plots.plot_gamma_sweep(r, out / png, title=f"{title}, {r['n_runs']} runs")
        lines += [f"## {title}", "", "| param | γ | teacher | no KD | KD | KD − no KD | γ̂ |", "|---|---|---|---|---|---|---|"]
        for p in r["points"]:
            lines.append(f"| {p['param']} | {p['gamma']:.2f} | {_stat(p['teacher'])} | {_stat(p['no_kd'])} | {_stat(p['kd'])} | "
                         f"{_stat(p['delta'])} | {_stat(p.get('gamma_hat'), 2)} |")
        lines += ["", f"![{title}]({png})", f"{r['seconds']:.1f} s", ""]
        g, d, lab = mfh_plots.sweep_gain_points(r)
        for acc, v in zip(gains, (g, d, lab)):
            acc.extend(v)
    if gains[0]:
        mfh_plots.plot_predicted_vs_observed(*gains[:2], out / "predicted_vs_observed.png", labels=gains[2])
        lines += ["## Predicted γ̂ vs observed KD gain", "", "![predicted vs observed](predicted_vs_observed.png)", ""]
    if "table2" in res:
        t = res["table2"]
        sels = list(t["rows"][0]["selections"]) if t["rows"] else []
        lines += ["## Table 2: modality-general teacher (k selected x1 channels) vs regular teacher", "",
                  "| k | γ | regular teacher | no KD | regular KD | " + " | ".join(f"{s}: teacher / KD / precision" for s in sels) + " | γ̂ |",
                  "|" + "---|" * (5 + len(sels) + 1)]
        for row in t["rows"]:
            cells = [f"{_stat(s['teacher'])} / {_stat(s['kd'])} / {_stat(s['precision'], 2)}" for s in row["selections"].values()]
            lines.append(f"| {row['k']} | {row['gamma']:.2f} | {_stat(row['teacher'])} | {_stat(row['no_kd'])} | {_stat(row['kd'])} | "
                         + " | ".join(cells) + f" | {_stat(row.get('gamma_hat'), 2)} |")
        lines += ["", f"{t['n_runs']} runs, {t['seconds']:.1f} s", ""]
    if "removal" in res:
        rm = res["removal"]
        lines += [f"## Channel removal (setting {rm['setting']}, param {rm['param']}, ratio {rm['ratio']}, fill {rm['fill']}, "
                  f"{rm['teacher_kind']} teacher)", "", f"no-KD student: {_stat(rm['no_kd'])}", "",
                  "| removed | channels | masked teacher | KD student | KD − no KD | general channels removed |", "|---|---|---|---|---|---|"]
        for row in rm["rows"]:
            lines.append(f"| {row['kind']} | {row['n_removed']} | {_stat(row['teacher'])} | {_stat(row['kd'])} | {_stat(row['delta'])} | "
                         f"{_stat(row['general_removed'], 2)} |")
        lines.append("")
    return _write(out, "MFH synthetic study", lines, _finite(res))
