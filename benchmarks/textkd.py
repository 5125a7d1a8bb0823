"""Text-KD throughput: teacher predictions (segments/s) and student train steps (clips/s) with and
without stored teacher predictions.

1. Teacher prediction dump (`teacher_predictions`, what `xmodal textkd teacher-preds` runs):
   segments/s of the tiny BERT teacher (hist_len 5, max_len 64) on avdigits-seq histories, and of
   a BERT-base-shaped teacher (random init, hist_len 15, max_len 512, the EGTEA setting) on a few.
2. Student optimisation steps (method `textkd`, the embedded AVT recipe's sizes), same data, batch
   size and number of steps, interleaved, best of `--repeats`:
     none    — kd.weight 0, no teacher keys in the batch (the AVT baseline);
     stored  — KD to predictions read from a FeatureStore by the data source (the text-KD recipe);
     online  — KD to logits computed by running the tiny teacher on the batch's histories each step
               (what storing them once avoids).
   Goal: stored / none ≈ 1 (reading predictions is free); online / stored shows what is saved.

    python benchmarks/textkd.py [--steps 60] [--repeats 3] [--input frame_features|video]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from xmodal.config import from_dict
from xmodal.data.bundle import collate
from xmodal.data.features import FeatureStore
from xmodal.data.sequences import SequencesDataConfig, avdigits_seq_data
from xmodal.methods.text_teacher import TextTeacherConfig, TextTeacherMethod, batch_records, word_tokenizer
from xmodal.methods.textkd import TextKD, TextKDConfig
from xmodal.models.text import HistoryEncoder, build_text_teacher, teacher_predictions

B = 64


def teacher_throughput(data, n: int, *, size: str, hist_len: int, max_len: int) -> float:
    texts = data.info.extra["action_texts"]
    tok = word_tokenizer(texts)
    torch.manual_seed(0)
    teacher = build_text_teacher(data.info.num_classes, 4, 10, size=size, vocab_size=len(tok), max_len=max_len).eval()
    records = batch_records(data.train.__getitems__(list(range(min(n, len(data.train))))))
    enc = HistoryEncoder(tok, texts, hist_len=hist_len, max_len=max_len)
    teacher_predictions(teacher, enc, records[:8], batch_size=8)  # warm-up
    t0 = time.perf_counter()
    teacher_predictions(teacher, enc, records, batch_size=64)
    return len(records) / (time.perf_counter() - t0)


def student_cfg(input_key: str, kd_weight: float) -> TextKDConfig:
    model = ({"name": "avt", "num_classes": 0, "backbone": "none", "feat_dim": 10, "width": 64, "layers": 2,
              "heads": 2, "max_positions": 16} if input_key == "frame_features" else
             {"name": "avt", "num_classes": 0, "preset": "tiny"})  # fmt: skip
    return from_dict(TextKDConfig, {"model": model, "input_key": input_key, "kd": {"weight": kd_weight}})


def steps_per_second(method: TextKD, dataset, steps: int, online: TextTeacherMethod | None = None) -> float:
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3)
    loader = DataLoader(dataset, batch_size=B, shuffle=True, drop_last=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    it, done = iter(loader), 0
    t0 = time.perf_counter()
    while done < steps:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        if online is not None:
            with torch.no_grad():
                batch["teacher.logits"] = online.eval_step(batch)["logits"]
        out = method.training_step(batch)
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        opt.step()
        done += 1
    return steps * B / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--input", default="frame_features", choices=["frame_features", "video"])
    ap.add_argument("--segments", type=int, default=1024, help="segments for the tiny teacher's throughput")
    args = ap.parse_args()
    torch.set_flush_denormal(True)

    base = dict(num_sequences=400, split_fractions=(0.6, 0.1, 0.3), video_noise=0.1)
    text = avdigits_seq_data(SequencesDataConfig(inputs=[], **base))
    tiny = teacher_throughput(text, args.segments, size="tiny", hist_len=5, max_len=64)
    big = teacher_throughput(text, 32, size="base", hist_len=15, max_len=512)
    print(f"teacher predictions: tiny BERT (hist 5) {tiny:.0f} segments/s; BERT-base shape (hist 15) {big:.1f} segments/s")

    # one teacher (random init: the speed does not depend on its weights), predictions stored once
    info = text.info
    online = TextTeacherMethod(from_dict(TextTeacherConfig, {"hist_len": 5, "max_len": 64}), info).eval()
    with tempfile.TemporaryDirectory() as d:
        store = Path(d) / "preds.safetensors"
        parts = [online.eval_step(ds.__getitems__(list(range(len(ds))))) for ds in (text.train, text.val, text.test)]
        FeatureStore.write(store, [u for p in parts for u in p["uid"]],
                           {"logits": torch.cat([p["logits"] for p in parts]), "feature": torch.cat([p["feature"] for p in parts])})
        plain = avdigits_seq_data(SequencesDataConfig(inputs=[args.input], **base))
        stored = avdigits_seq_data(SequencesDataConfig(inputs=[args.input], features={"teacher": str(store)}, **base))
        best = {"none": 0.0, "stored": 0.0, "online": 0.0}
        for _ in range(args.repeats):
            for name in best:
                torch.manual_seed(0)
                method = TextKD(student_cfg(args.input, 0.0 if name == "none" else 150.0), plain.info)
                ds = stored.train if name == "stored" else plain.train
                best[name] = max(best[name], steps_per_second(method, ds, args.steps, online if name == "online" else None))
    print(f"student train steps ({args.input}, batch {B}, {args.steps} steps, best of {args.repeats}): "
          + ", ".join(f"{k} {v:.0f} clips/s" for k, v in best.items()))
    print(f"ratio stored/none {best['stored'] / best['none']:.3f} (goal ~1); online/stored {best['online'] / best['stored']:.3f}")


if __name__ == "__main__":
    main()
