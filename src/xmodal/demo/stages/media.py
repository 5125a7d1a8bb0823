"""Stage 1: avdigits as real mp4 files (H.264 + AAC) through `xmodal prep`, the real-data path.

Claims: every generated clip is prepared and none rejected; the decoded, stored frames and audio
match the generator's arrays (H.264 at crf 15 smooths part of the pixel noise, AAC is lossy)."""

from __future__ import annotations

import json
import time

import numpy as np

from xmodal.demo.core import Claim, StageContext, StageResult, register_stage


@register_stage("media", order=1, title="avdigits mp4 files -> xmodal prep (decode, shards)")
def media_stage(ctx: StageContext) -> StageResult:
    from xmodal.data.embedded.avdigits import AVDigitsConfig, generate, write_files

    s = ctx.settings
    cfg = AVDigitsConfig(n_train_per_class=s["n_train_per_class"], n_pool=s["n_pool"], n_test_per_class=s["n_test_per_class"])
    raw, store = ctx.dir / "raw", ctx.dir / "store"
    t0 = time.perf_counter()
    manifest = write_files(cfg, raw)  # idempotent: a finished folder is not rewritten
    write_s = time.perf_counter() - t0
    ctx.steps["write mp4"] = round(write_s, 1)
    ctx.say(f"wrote {sum(1 for _ in (raw / 'clips').glob('*.mp4'))} mp4 clips in {write_s:.1f} s")
    summary = ctx.xmodal("prep", "prep", manifest, "--out", store, "--num-frames", cfg.frames, "--short-side", 0,
                         "--max-duration", 0, "--workers", s["workers"], "--no-progress").strip()  # fmt: skip
    index = json.loads((store / "index.json").read_text())
    rejects = store / "rejects.jsonl"
    n_rejected = sum(1 for ln in rejects.read_text().splitlines() if ln.strip()) if rejects.is_file() else 0
    counts = {k: int(v) for k, v in index.get("splits", {}).items()}
    prepared = sum(counts.values())
    expected = cfg.num_classes * (cfg.n_train_per_class + cfg.n_test_per_class) + cfg.n_pool
    frame_err, audio_corr = _fidelity(store, generate(cfg))
    metrics = {"clips": expected, "prepared": prepared, "rejected": n_rejected, "write_seconds": round(write_s, 1),
               "prep_seconds": ctx.steps.get("prep", 0.0), "frame_abs_err": round(frame_err, 2),
               "audio_corr": round(audio_corr, 4), **{f"split_{k}": v for k, v in counts.items()}}  # fmt: skip
    claims = [
        Claim("prep: every clip stored, none rejected", prepared == expected and n_rejected == 0,
              f"{prepared} of {expected} clips prepared, {n_rejected} rejected ({summary.splitlines()[-1] if summary else ''})",
              {"prepared": prepared, "expected": expected, "rejected": n_rejected}),
        Claim("stored media match the generator", frame_err < 8.0 and audio_corr > 0.95,
              f"mean |frame error| {frame_err:.2f} of 255 levels (< 8), audio correlation {audio_corr:.3f} (> 0.95)",
              {"frame_abs_err": frame_err, "audio_corr": audio_corr}),
    ]
    return StageResult(metrics=metrics, claims=claims)


def _fidelity(store, data) -> tuple[float, float]:
    """Mean absolute frame error and the lowest audio correlation over stored test clips vs the
    in-memory generator (AAC's 1024 priming samples are trimmed by the decoder)."""
    from xmodal.data.datasets import Store, StoredSample
    from xmodal.data.shards import ShardReader

    st = Store(store)
    reader = ShardReader()
    where = {u: i for i, u in enumerate(data.uid)}
    errs, corrs = [], []
    for entry in st.split("test")[:8]:
        smp = StoredSample(entry, reader)
        i = where[smp.uid]
        frames = smp.frames(range(smp.num_frames)).astype(np.int64)
        ref = data.video[i][: len(frames)].astype(np.int64)
        errs.append(float(np.abs(frames - ref).mean()))
        wave = smp.wave().numpy()
        n = min(len(wave), data.audio.shape[1])
        corrs.append(float(np.corrcoef(wave[:n], data.audio[i][:n])[0, 1]))
    return float(np.mean(errs)), float(np.min(corrs))
