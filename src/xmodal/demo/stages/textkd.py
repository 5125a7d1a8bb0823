"""Stage 3: text-to-video anticipation KD on avdigits-seq (docs/textkd.md): a grammar text corpus,
a tiny BERT pretrained with MLM on it, fine-tuned as the text teacher that predicts the next action
from the action history; its predictions stored once per segment; the AVT student over observed
frames trained with and without distillation to them.

Claims: the teacher predicts the next action far above chance from text alone; the KD student
beats the same student without KD on top-5 and class-mean top-5 recall (each seed)."""

from __future__ import annotations

from xmodal.demo.core import Bars, Claim, StageContext, StageResult, recipe_path, register_stage

TOP5_MARGIN = 1.5  # points, per seed (docs/textkd.md: +3.4..+6.7 over 6 seeds)
CM5_MARGIN = 2.5  # points, per seed (+5.4..+9.8)


@register_stage("textkd", order=3, title="text-KD anticipation on avdigits-seq: text teacher -> students with / without KD")
def textkd_stage(ctx: StageContext) -> StageResult:
    s = ctx.settings
    corpus, lm, preds = ctx.dir / "corpus.txt", ctx.dir / "lm", ctx.dir / "preds.safetensors"
    data = [f"data.num_sequences={s['num_sequences']}"]
    def student(kd: bool, seed: int) -> dict:
        label = f"student{'-kd' if kd else ''}-seed{seed}"
        recipe = recipe_path(f"recipes/textkd/avdigits-student{'-kd' if kd else ''}.yaml")
        extra = [f"data.features.teacher={preds}"] if kd else []
        return ctx.train(label, recipe, f"train.seed={seed}", f"train.epochs={s['student_epochs']}", *data, *extra)["test"]

    def students(kd: bool) -> list[dict]:
        return ctx.parallel(*(lambda sd=sd: student(kd, sd) for sd in s["seeds"]))

    def taught() -> tuple[dict, list[dict]]:  # corpus -> MLM -> teacher -> its stored predictions -> KD students
        if not corpus.is_file():
            ctx.xmodal("corpus", "textkd", "corpus", "--out", corpus, "--lines", s["corpus_lines"])
        if not (lm / "config.json").is_file():
            ctx.xmodal("mlm", "textkd", "mlm", "--corpus", corpus, "--out", lm, "--steps", s["mlm_steps"], "--batch-size", 32,
                       "--lr", "2e-3", "--max-len", 64)  # fmt: skip
        teacher = ctx.train("teacher", recipe_path("recipes/textkd/avdigits-teacher.yaml"), f"method.backbone={lm}",
                            f"train.epochs={s['teacher_epochs']}", f"train.batch_size={s.get('teacher_batch', 16)}", *data)["test"]  # fmt: skip
        if not preds.is_file():
            ctx.xmodal("teacher-preds", "textkd", "teacher-preds", ctx.dir / "teacher", "--out", preds)
        return teacher, students(True)

    # the no-KD students need no teacher: they train beside the teacher's chain
    (teacher, with_kd), without = ctx.parallel(taught, lambda: students(False), side=1)
    rows = {**{(True, sd): r for sd, r in zip(s["seeds"], with_kd)}, **{(False, sd): r for sd, r in zip(s["seeds"], without)}}
    runs = {"text teacher": ctx.rel(ctx.dir / "teacher")}
    for sd in s["seeds"]:
        runs[f"student without KD (seed {sd})"] = ctx.rel(ctx.dir / f"student-seed{sd}")
        runs[f"student with KD (seed {sd})"] = ctx.rel(ctx.dir / f"student-kd-seed{sd}")
    k = 24  # avdigits-seq actions: 4 verbs x 10 digits, 24 used by the grammar
    chance1, chance5 = 100.0 / k, 500.0 / k
    metrics = {"teacher_top1": teacher["top1"], "teacher_top5": teacher["top5"], "chance_top1": chance1, "chance_top5": chance5}
    gains = []
    for seed in s["seeds"]:
        base, kd = rows[False, seed], rows[True, seed]
        for key in ("top1", "top5", "cm_recall5"):
            metrics[f"student_{key}_seed{seed}"] = base[key]
            metrics[f"student_kd_{key}_seed{seed}"] = kd[key]
        gains.append((kd["top5"] - base["top5"], kd["cm_recall5"] - base["cm_recall5"]))
    mean = lambda i: sum(g[i] for g in gains) / len(gains)  # noqa: E731
    metrics.update(kd_gain_top5=round(mean(0), 2), kd_gain_cm_recall5=round(mean(1), 2))
    s0 = s["seeds"][0]
    claims = [
        Claim("text teacher predicts the next action far above chance", teacher["top5"] > 2 * chance5,
              f"teacher top-1 {teacher['top1']:.1f} % / top-5 {teacher['top5']:.1f} % (chance {chance1:.1f} / {chance5:.1f} %)",
              {"top1": teacher["top1"], "top5": teacher["top5"], "chance_top5": chance5}),
        Claim("text-KD student beats no-KD", all(t > TOP5_MARGIN and c > CM5_MARGIN for t, c in gains),
              "; ".join(f"seed {sd}: top-5 {rows[True, sd]['top5']:.1f} vs {rows[False, sd]['top5']:.1f} ({g[0]:+.1f}), "
                        f"class-mean top-5 recall {rows[True, sd]['cm_recall5']:.1f} vs {rows[False, sd]['cm_recall5']:.1f} ({g[1]:+.1f})"
                        for sd, g in zip(s["seeds"], gains))
              + f" (needs > +{TOP5_MARGIN} / +{CM5_MARGIN})",
              {"kd_gain_top5": mean(0), "kd_gain_cm_recall5": mean(1)}),
    ]  # fmt: skip
    bars = [Bars(f"text-KD anticipation (test, seed {s0})", ["student top-5", "student + KD top-5", "student cm-recall@5",
                 "student + KD cm-recall@5", "text teacher top-5"],
                 [rows[False, s0]["top5"], rows[True, s0]["top5"], rows[False, s0]["cm_recall5"], rows[True, s0]["cm_recall5"],
                  teacher["top5"]], ylabel="%", reference=chance5, reference_label="top-5 chance")]  # fmt: skip
    return StageResult(metrics=metrics, claims=claims, bars=bars, runs=runs)
