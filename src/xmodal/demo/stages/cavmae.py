"""Stage 4: CAV-MAE on avdigits (docs/cavmae.md): masked audio-visual pretraining on the unlabelled
pool -> audio<->visual retrieval -> fine-tuning on 5 labels per class (vs the same recipe from
random init) -> inpainting figures of the pretrained model.

The recipes are read by path (settings table), so improved embedded recipes drop in. Claims:
both reconstruction losses fall during pretraining; class-level retrieval above chance (asserted
when the settings row says `checked_retrieval`: the embedded recipe learns alignment since the
cavmae-avd changes, docs/cavmae.md); pretraining beating scratch on 5 labels per class
(asserted when `checked_finetune`)."""

from __future__ import annotations

import json

from xmodal.demo.core import Bars, Claim, StageContext, StageResult, recipe_path, register_stage

RETRIEVAL_MARGIN = 5.0  # points above chance


@register_stage("cavmae", order=4, title="CAV-MAE pretraining -> retrieval -> fine-tuning vs scratch -> inpainting")
def cavmae_stage(ctx: StageContext) -> StageResult:
    from xmodal.config import load_config
    from xmodal.engine.logging import read_metrics

    s = ctx.settings
    pre_recipe = recipe_path(s["pretrain"])
    pre_sets = [f"train.max_steps={s['pretrain_steps']}"] if s["pretrain_steps"] else []
    cfg = load_config(pre_recipe, pre_sets)
    per_epoch = -(-cfg.data.n_pool // cfg.train.batch_size)
    total = s["pretrain_steps"] or per_epoch * cfg.train.epochs
    run, inpaint_dir = ctx.dir / "pretrain", ctx.dir / "inpaint"
    ft_sets = [f"train.epochs={s['finetune_epochs']}"] if s["finetune_epochs"] else []

    def inpaint() -> dict:
        if not (inpaint_dir / "inpaint.json").is_file():
            ctx.xmodal("inpaint", "cavmae", "inpaint", run, "--out", inpaint_dir, "--n", 2)
        return json.loads((inpaint_dir / "inpaint.json").read_text())

    def pretrained():  # pretraining, then what uses it, side by side
        ctx.train("pretrain", pre_recipe, *pre_sets, total=total)
        return ctx.parallel(lambda: ctx.json_of("retrieval", "cavmae", "retrieval", run),
                            lambda: ctx.train("finetune", recipe_path(s["finetune"]), f"method.init_from={run}", *ft_sets)["test"],
                            inpaint)  # fmt: skip

    # the from-scratch fine-tuning needs no pretraining: it runs beside it
    (ret, ft, inp), sc = ctx.parallel(pretrained, lambda: ctx.train("finetune-scratch", recipe_path(s["scratch"]), *ft_sets)["test"],
                                      side=1)

    rows = [r for r in read_metrics(run) if r["split"] == "train"]
    first, last = rows[0], rows[-1]
    k = cfg.data.num_classes
    chance = 100.0 / k
    a2v, v2a = float(ret.get("class_a2v_R@1", float("nan"))), float(ret.get("class_v2a_R@1", float("nan")))
    metrics = {"mae_audio_first": first["loss_mae_a"], "mae_audio_last": last["loss_mae_a"],
               "mae_video_first": first["loss_mae_v"], "mae_video_last": last["loss_mae_v"],
               "class_a2v_R@1": a2v, "class_v2a_R@1": v2a, "chance": chance,
               "finetune_top1": ft["top1"], "scratch_top1": sc["top1"],
               "inpaint_mse_audio": inp["mse_audio"], "inpaint_mse_image": inp["mse_image"]}  # fmt: skip
    claims = [
        Claim("CAV-MAE reconstruction losses fall during pretraining",
              last["loss_mae_a"] < 0.9 * first["loss_mae_a"] and last["loss_mae_v"] < 0.9 * first["loss_mae_v"],
              f"audio MAE {first['loss_mae_a']:.3f} -> {last['loss_mae_a']:.3f}, frames {first['loss_mae_v']:.3f} -> "
              f"{last['loss_mae_v']:.3f} (step {first['step']} -> {last['step']}; needs -10 % each)",
              {k2: metrics[k2] for k2 in ("mae_audio_first", "mae_audio_last", "mae_video_first", "mae_video_last")}),
        Claim("CAV-MAE retrieval above chance", a2v > chance + RETRIEVAL_MARGIN,
              f"audio->visual class-level R@1 {a2v:.1f} % (visual->audio {v2a:.1f} %) vs chance {chance:.1f} %",
              {"class_a2v_R@1": a2v, "chance": chance}, checked=bool(s.get("checked_retrieval", False))),
        Claim("CAV-MAE pretraining helps fine-tuning", ft["top1"] > sc["top1"],
              f"fine-tuned from pretraining {ft['top1']:.1f} % vs from scratch {sc['top1']:.1f} % (chance {chance:.1f} %)",
              {"finetune_top1": ft["top1"], "scratch_top1": sc["top1"]}, checked=bool(s.get("checked_finetune", False))),
    ]  # fmt: skip
    bars = [Bars("CAV-MAE: retrieval (class-level R@1, test)", ["audio->visual", "visual->audio"], [a2v, v2a],
                 ylabel="R@1 (%)", reference=chance),
            Bars("CAV-MAE: fine-tuning on 5 labels/class (test top-1)", ["from pretraining", "from scratch"],
                 [ft["top1"], sc["top1"]], reference=chance)]  # fmt: skip
    figures = {f"CAV-MAE inpainting ({int(100 * inp['ratio'])} % masked): {p}": ctx.rel(inpaint_dir / p) for p in inp["pngs"]}
    runs = {"CAV-MAE pretraining": ctx.rel(run), "CAV-MAE fine-tuning": ctx.rel(ctx.dir / "finetune"),
            "CAV-MAE from scratch": ctx.rel(ctx.dir / "finetune-scratch")}  # fmt: skip
    return StageResult(metrics=metrics, claims=claims, bars=bars, runs=runs, figures=figures)
