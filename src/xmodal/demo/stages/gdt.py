"""Stage 2: GDT audio-visual contrastive pretraining on the avdigits pool, then audio->video
retrieval (class level: a retrieved clip showing the spoken digit is a hit) and a linear probe on
the frozen video trunk (5 labels per class) against the same encoder at random init.

Claims: class-level a->v R@1 is well above chance (1 / classes); the probe on pretrained features
beats the random encoder's."""

from __future__ import annotations

from pathlib import Path

from xmodal.demo.core import Bars, Claim, StageContext, StageResult, recipe_path, register_stage

RETRIEVAL_MARGIN = 10.0  # points above chance for the retrieval claim
PROBE_MARGIN = 5.0  # points the pretrained probe must beat the random encoder by


@register_stage("gdt", order=2, title="GDT pretraining -> audio->video retrieval + linear probe vs random encoder")
def gdt_stage(ctx: StageContext) -> StageResult:
    s = ctx.settings
    recipe = recipe_path(s["recipe"])
    sets = [f"train.max_steps={s['max_steps']}", f"data.n_pool={s['n_pool']}"]
    run = ctx.dir / "pretrain"
    data_sets = [f"data.n_pool={s['n_pool']}"]
    probe_sets = _sets([*data_sets, "data.train_split=train"])

    def pretrained():  # pretraining, then its two evaluations side by side
        ctx.train("pretrain", recipe, *sets, total=s["max_steps"])
        return ctx.parallel(lambda: ctx.json_of("retrieval", "eval", "retrieval", run, *_sets(data_sets)),
                            lambda: ctx.json_of("linear", "eval", "linear", run, *probe_sets))

    # the random-encoder probe needs no pretraining: it runs beside it
    (ret, probe), rand = ctx.parallel(pretrained, lambda: ctx.json_of("linear-random", "eval", "linear", recipe, *probe_sets),
                                      side=1)
    from xmodal.config import load_config

    k = load_config(recipe).data.num_classes
    chance = 100.0 / k
    a2v, v2a = _pct(ret["a2v_R@1"]), _pct(ret["v2a_R@1"])
    lin, lin0 = _pct(probe["linear_top1"]), _pct(rand["linear_top1"])
    metrics = {"a2v_R@1": a2v, "v2a_R@1": v2a, "clip_a2v_R@1": _pct(ret.get("clip_a2v_R@1", float("nan"))),
               "video_R@1": _pct(ret.get("video_R@1", float("nan"))), "linear_acc": lin, "linear_acc_random": lin0,
               "chance": chance}  # fmt: skip
    claims = [
        Claim("GDT retrieval above chance", a2v > chance + RETRIEVAL_MARGIN,
              f"audio->video class-level R@1 {a2v:.1f} % vs chance {chance:.1f} % (needs > chance + {RETRIEVAL_MARGIN:.0f})",
              {"a2v_R@1": a2v, "chance": chance}),
        Claim("GDT linear probe beats a random encoder", lin > lin0 + PROBE_MARGIN,
              f"linear probe on frozen video features {lin:.1f} % vs random encoder {lin0:.1f} % (needs +{PROBE_MARGIN:.0f})",
              {"linear_acc": lin, "linear_acc_random": lin0}),
    ]
    bars = [Bars("GDT: cross-modal retrieval (class-level R@1, test)", ["audio->video", "video->audio"], [a2v, v2a],
                 ylabel="R@1 (%)", reference=chance),
            Bars("GDT: linear probe on frozen video features (5 labels/class)", ["GDT pretrained", "random encoder"],
                 [lin, lin0], reference=chance)]  # fmt: skip
    figures = {}
    try:
        figures["GDT: audio queries and their top-3 retrieved test clips (green: same digit)"] = ctx.rel(
            retrieval_examples(run, ctx.dir / "retrieval_examples.png"))
    except Exception as e:  # noqa: BLE001 - an illustration must not sink the measured numbers
        ctx.say(f"retrieval examples figure not drawn: {e}")
    return StageResult(metrics=metrics, claims=claims, bars=bars, runs={"GDT pretraining": ctx.rel(run)}, figures=figures)


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def _pct(x: float) -> float:
    """Metrics come as percentages already (R@k, accuracies); rounded for the report."""
    return round(float(x), 2)


def retrieval_examples(run: Path, png: Path, *, queries: int = 4, top: int = 3, gallery: int = 200) -> Path:
    """Audio queries (their log-mel) and the top retrieved test clips (middle frame) by cosine
    similarity of the GDT heads. Test clips do not depend on the pool, so the pool is not built
    (only the fbank normalisation statistics then come from the labelled clips alone)."""
    import torch

    from xmodal.engine.runs import load_run
    from xmodal.eval.ssl import extract_features
    from xmodal.report.mfh_plots import _figure, _save

    loaded = load_run(run, overrides=["data.n_pool=0", "data.train_split=train"])
    ds = torch.utils.data.Subset(loaded.data.test, range(min(gallery, len(loaded.data.test))))
    f = extract_features(loaded.method, ds, batch_size=64, collate=loaded.data.collate)
    a = torch.nn.functional.normalize(f.emb["audio_proj"], dim=1)
    v = torch.nn.functional.normalize(f.emb["video_proj"], dim=1)
    sims = a[:queries] @ v.T
    names = loaded.data.info.class_names
    fig = _figure(2.0 * (top + 1), 2.0 * queries)
    for q in range(queries):
        item = ds[q]
        ax = fig.add_subplot(queries, top + 1, q * (top + 1) + 1)
        ax.imshow(item["fbank"].T.numpy(), origin="lower", aspect="auto", cmap="magma")
        ax.set_title(f"query: says '{names[int(item['audio_label'])]}'", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
        for j, g in enumerate(sims[q].topk(top).indices.tolist()):
            clip = ds[g]
            video = clip["video"]  # [C, T, H, W]
            frame = video[:, video.shape[1] // 2].permute(1, 2, 0).numpy()
            hit = int(clip["label"]) == int(item["audio_label"])
            ax = fig.add_subplot(queries, top + 1, q * (top + 1) + 2 + j)
            ax.imshow(frame)
            ax.set_title(f"#{j + 1}: shows {names[int(clip['label'])]}", fontsize=8, color="green" if hit else "red")
            for sp in ax.spines.values():
                sp.set_edgecolor("green" if hit else "red")
                sp.set_linewidth(3)
            ax.set_xticks([]), ax.set_yticks([])
    return _save(fig, png)
