"""Stage 5: MFH diagnosis on avdigits ("will KD from an audio teacher help this video student?"):
`xmodal mfh diagnose RECIPE --out DIR` for every `recipes/mfh/avdigits*.yaml` (e.g. gap 0 and
the fixed-wrong-class gap 0.8), each writing report.json with the modality-general saliency,
gamma_hat and the verdict. The ccl stage then checks each verdict against the KD outcome it
observes at the same gap (claim "MFH verdict consistent with observed KD outcome").

Skipped, with the reason, while the `mfh` verb or its avdigits recipes are not in the checkout."""

from __future__ import annotations

import json

from xmodal.demo.core import Bars, StageContext, StageResult, recipe_glob, register_stage, skipped
from xmodal.demo.stages._recipes import get, raw_recipe, verb_available


@register_stage("mfh", order=5, title="MFH diagnosis: will KD from audio help the video student?")
def mfh_stage(ctx: StageContext) -> StageResult:
    s = ctx.settings
    if not verb_available("mfh"):
        return skipped("not available: this checkout has no `xmodal mfh` verb (branch mfh-cli is not merged)")
    recipes = recipe_glob(s["recipes"])
    if not recipes:
        return skipped(f"not available: no recipe matches {s['recipes']} (branch mfh-cli is not merged)")
    metrics, verdicts, figures = {}, [], {}

    def diagnose(recipe):
        out = ctx.dir / recipe.stem
        if not (out / "report.json").is_file():
            argv = ["mfh", "diagnose", recipe, "--out", out]
            for item in s.get("sets", []):
                argv += ["--set", item]
            ctx.xmodal(recipe.stem, *argv)
        return json.loads((out / "report.json").read_text())

    # side work: nothing in this stage waits for it, so the other stages' chains of commands go first
    reports = ctx.parallel(*(lambda r=r: diagnose(r) for r in recipes), side=len(recipes))
    for recipe, report in zip(recipes, reports):
        label = recipe.stem
        rep = _first_result(report)
        gap = float(get(raw_recipe(recipe), "data.gap", 0.0) or 0.0)
        helps = _helps(rep)
        verdicts.append({"recipe": recipe.name, "gap": gap, "helps": helps, "gamma_hat": rep.get("gamma_hat"),
                         "verdict": rep.get("verdict", ""), "teacher_acc": rep.get("teacher_acc"),
                         "student_acc": rep.get("student_acc")})  # fmt: skip
        metrics[f"gamma_hat_gap{gap:g}"] = float(rep.get("gamma_hat", float("nan")))
        metrics[f"predicts_kd_helps_gap{gap:g}"] = float(helps)
        scores = rep.get("scores")
        if scores:
            from xmodal.report.mfh_plots import plot_saliency

            png = plot_saliency(scores, ctx.dir / f"saliency-{label}.png", title=f"modality-general saliency, gap {gap:g}")
            figures[f"MFH saliency of the audio teacher's channels (gap {gap:g}): {rep.get('verdict', '')}"] = ctx.rel(png)
    (ctx.dir / "verdicts.json").write_text(json.dumps(verdicts, indent=2))
    bars = [Bars("MFH: gamma_hat (share of modality-general decisive channels)", [f"gap {v['gap']:g}" for v in verdicts],
                 [float(v["gamma_hat"] or 0.0) for v in verdicts], ylabel="gamma_hat",
                 reference=float(raw_recipe(recipes[0]).get("threshold", 0.4)), reference_label="KD-helps threshold")]  # fmt: skip
    return StageResult(metrics=metrics, bars=bars, figures=figures)


def _first_result(rep: dict) -> dict:
    """report.json holds {"labels": [...], "results": [one per compared setting]}; one recipe
    without --compare gives one result (a flat report is accepted as it is)."""
    results = rep.get("results")
    return results[0] if isinstance(results, list) and results else rep


def _helps(rep: dict) -> bool:
    """The verdict as a bool: report.json's `helps`, else read from the verdict text."""
    if isinstance(rep.get("helps"), bool):
        return rep["helps"]
    text = str(rep.get("verdict", "")).lower()
    return "help" in text and not any(w in text for w in ("not help", "won't", "will not", "unlikely", "hurt"))


def verdicts_of(ctx: StageContext) -> list[dict]:
    """The mfh stage's verdicts (gap, helps, gamma_hat), [] when it did not run (waits for it when it
    runs beside the caller)."""
    prev = ctx.stage_result("mfh")
    path = ctx.out / "mfh" / "verdicts.json"
    if prev is None or prev.status != "done" or not path.is_file():
        return []
    return json.loads(path.read_text())
