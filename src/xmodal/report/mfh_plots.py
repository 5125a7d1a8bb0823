"""PNG plots for MFH results: channel saliency, accuracy vs γ, predicted vs observed KD gain.

matplotlib is imported inside each function and drawn through the Agg canvas of a bare `Figure`
(no pyplot, no global backend switch), so importing this module costs nothing and works headless.
Inputs are either the result dataclasses of `xmodal.analysis.mfh_synthetic` or their JSON form
(`run_synthetic` output), so a report can be rebuilt from a saved results file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xmodal.errors import DataError


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _plain(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else obj


def plot_saliency(scores: Sequence[float], path: str | Path, *, true_channels: Sequence[int] = (), title: str = "modality-general saliency") -> Path:
    """Bar per channel of the min-max normalised Algorithm 1 scores; known general channels in orange."""
    values = [float(v) for v in scores]
    marked = {int(c) for c in true_channels}
    fig = _figure(max(6.0, len(values) * 0.12), 3.0)
    ax = fig.add_subplot()
    ax.bar(range(len(values)), values, color=["tab:orange" if i in marked else "tab:blue" for i in range(len(values))], width=0.85)
    ax.set_xlabel("channel")
    ax.set_ylabel("saliency (normalised)")
    ax.set_xlim(-1, len(values))
    ax.set_title(title + (" (orange: ground-truth modality-general)" if marked else ""))
    return _save(fig, path)


def plot_gamma_sweep(result: Any, path: str | Path, *, title: str | None = None) -> Path:
    """Teacher, no-KD and KD test accuracy (mean ± std over runs) against γ of a `SweepResult`."""
    res = _plain(result)
    points = res.get("points") if isinstance(res, Mapping) else None
    if not points:
        raise DataError("plot_gamma_sweep: expected a sweep result with a non-empty `points` list")
    order = sorted(points, key=lambda p: p["gamma"])
    x = [p["gamma"] for p in order]
    fig = _figure(5.5, 3.8)
    ax = fig.add_subplot()
    for key, label, style in (("teacher", "teacher (x1)", "k--"), ("no_kd", "student, no KD", "tab:blue"), ("kd", "student, KD", "tab:red")):
        mean = [p[key]["mean"] for p in order]
        std = [p[key]["std"] for p in order]
        color = "black" if key == "teacher" else style
        ax.plot(x, mean, "--" if key == "teacher" else "-", color=color, marker="o", label=label)
        ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=color, alpha=0.12)
    ax.set_xlabel("γ (modality-general share of decisive features)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title or f"setting {res.get('setting', '?')}: {res.get('n_runs', '?')} runs")
    ax.legend()
    return _save(fig, path)


def plot_predicted_vs_observed(gamma_hat: Sequence[float], kd_gain: Sequence[float], path: str | Path, *, labels: Sequence[str] = (), threshold: float | None = 0.4) -> Path:
    """Scatter of the diagnostic's γ̂ against the observed KD gain (KD − no-KD, points)."""
    gh, dg = [float(v) for v in gamma_hat], [float(v) for v in kd_gain]
    if len(gh) != len(dg) or not gh:
        raise DataError(f"plot_predicted_vs_observed: need equally many γ̂ and gains, got {len(gh)} and {len(dg)}")
    if labels and len(labels) != len(gh):
        raise DataError(f"plot_predicted_vs_observed: {len(labels)} labels for {len(gh)} points")
    fig = _figure(5.0, 4.0)
    ax = fig.add_subplot()
    ax.scatter(gh, dg, color="tab:purple")
    for lab, a, b in zip(labels, gh, dg):
        ax.annotate(str(lab), (a, b), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(0.0, color="grey", lw=0.8)
    if threshold is not None:
        ax.axvline(threshold, color="grey", lw=0.8, ls=":", label=f"verdict threshold {threshold:g}")
        ax.legend()
    ax.set_xlabel("predicted γ̂ (Algorithm 1 diagnostic)")
    ax.set_ylabel("observed KD gain (points)")
    return _save(fig, path)


def sweep_gain_points(result: Any) -> tuple[list[float], list[float], list[str]]:
    """(γ̂ means, KD-gain means, labels) of a sweep result for `plot_predicted_vs_observed`."""
    res = _plain(result)
    pts = [p for p in res["points"] if p.get("gamma_hat")]
    return [p["gamma_hat"]["mean"] for p in pts], [p["delta"]["mean"] for p in pts], [f"{res['setting']}{p['param']}" for p in pts]


def plot_accuracy_vs_gamma_hat(results: Sequence[Mapping[str, Any]], path: str | Path, *, labels: Sequence[str] = ()) -> Path:
    """Diagnose results: student accuracy without KD (and with KD, where measured) against γ̂."""
    rows = sorted(zip(labels or [r["name"] for r in results], results), key=lambda lr: lr[1]["gamma_hat"])
    if not rows:
        raise DataError("plot_accuracy_vs_gamma_hat: no results")
    x = [r["gamma_hat"] for _, r in rows]
    fig = _figure(5.5, 3.8)
    ax = fig.add_subplot()
    ax.plot(x, [r["student_acc"] for _, r in rows], "o-", color="tab:blue", label="student, no KD")
    kd = [(g, r["kd_acc"]) for g, (_, r) in zip(x, rows) if r.get("kd_acc") is not None]
    if kd:
        ax.plot([g for g, _ in kd], [a for _, a in kd], "o-", color="tab:red", label="student, KD (observed)")
    ax.plot(x, [r["teacher_acc"] for _, r in rows], "o--", color="black", label="teacher (own modality and labels)")
    for (lab, _), g, r in zip(rows, x, (r for _, r in rows)):
        ax.annotate(str(lab), (g, r["student_acc"]), textcoords="offset points", xytext=(4, -12), fontsize=8)
    thr = rows[0][1].get("threshold")
    if thr is not None:
        ax.axvline(thr, color="grey", lw=0.8, ls=":", label=f"verdict threshold {thr:g}")
    ax.set_xlim(-0.05, 1.05)
    ax.set_xlabel("γ̂ (estimated modality-general share)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8)
    return _save(fig, path)
