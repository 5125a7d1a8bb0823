"""`xmodal teacher-cache`: run a frozen teacher once per uid and store its logits and features.

    xmodal teacher-cache runs/avdigits-audio-teacher --data recipes/kd/avdigits-audio.yaml \
        --out runs/avdigits-audio-teacher/cache.safetensors
    xmodal teacher-cache recipes/ccl/avdigits-ai.yaml --teacher image --out image-cache.safetensors
    xmodal train recipes/kd/avdigits-audio.yaml --set data.features.teacher=<cache>

The target is a `supervised` run folder (the teacher; data from `--data RECIPE`, else the run's
own) or a `kd` / `ccl` recipe (its teacher run(s) and its data). The store (a FeatureStore:
tensors "logits" [N, C] and "feature" [N, D], one row per uid) is what the original CCL does with
its precomputed PANNs embeddings: students then read "<key>.logits" / "<key>.feature" as batch
keys and never run the teacher. Inputs are taken without augmentation (an image teacher reads
the middle frame), so the cache equals the live teacher whenever the teacher's input is not
augmented (the embedded audio teacher's log-mel).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def add_commands(sub, common) -> None:
    p = sub.add_parser("teacher-cache", parents=[common], help="store a frozen teacher's per-uid logits and features",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="a supervised teacher run folder, or a kd/ccl recipe naming its teacher run(s)")
    p.add_argument("--out", required=True, help="feature store to write (.safetensors)")
    p.add_argument("--data", default=None, help="recipe whose data section lists the clips (default: the target's)")
    p.add_argument("--teacher", default="", help="ccl recipes: which teacher (audio or image)")
    p.add_argument("--splits", default="labelled,pool,train,val,test", help="comma-separated roles to cover")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the data recipe (e.g. data.gap=0.8)")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=cmd_teacher_cache)

    n = sub.add_parser("teacher-npy", parents=[common], help="precomputed per-video teacher .npy features -> a teacher cache",
                       description="Collect the .npy file named by each manifest row's meta `audio_feature` (the CCL "
                       "importer's --audio-root; PANNs 512-d embeddings) into one feature store (tensor 'feature'). "
                       "A missing file gives a zero row: CCL's 'no audio' marker (spec §2, §4.5).")
    n.add_argument("manifest", help="manifest.jsonl of `xmodal import ccl ... --audio-root`")
    n.add_argument("--out", required=True, help="feature store to write (.safetensors)")
    n.add_argument("--meta-key", default="audio_feature", help="row meta key holding the .npy path")
    n.set_defaults(func=cmd_teacher_npy)


def cmd_teacher_npy(args: argparse.Namespace) -> int:
    print(json.dumps(npy_teacher_cache(args.manifest, args.out, meta_key=args.meta_key), indent=2))
    return 0


def npy_teacher_cache(manifest: str | Path, out: str | Path, *, meta_key: str = "audio_feature") -> dict:
    """One row per manifest uid: the clip-level vector of its .npy (a (T, D) array is averaged
    over T; the reference draws one random row per sample instead), zeros where the file is missing."""
    import numpy as np
    import torch

    from xmodal.data.features import FeatureStore
    from xmodal.data.manifest import read_manifest
    from xmodal.errors import DataError

    rows = read_manifest(Path(manifest))
    vecs: list = []
    missing = 0
    for r in rows:
        path = (r.meta or {}).get(meta_key)
        if path and Path(path).is_file():
            a = np.load(path).astype(np.float32)
            vecs.append(a.reshape(-1, a.shape[-1]).mean(0) if a.ndim > 1 else a)
        else:
            vecs.append(None)
            missing += 1
    dims = {v.shape[0] for v in vecs if v is not None}
    if len(dims) != 1:
        raise DataError(f"{manifest}: expected .npy features of one size under meta '{meta_key}', found sizes {sorted(dims)}")
    d = dims.pop()
    feat = torch.from_numpy(np.stack([v if v is not None else np.zeros(d, np.float32) for v in vecs]))
    path = FeatureStore.write(out, [r.uid for r in rows], {"feature": feat}, {"source": str(manifest), "meta_key": meta_key})
    return {"out": str(path), "count": len(rows), "missing": missing, "dim": d}


def cmd_teacher_cache(args: argparse.Namespace) -> int:
    res = write_teacher_cache(args.target, args.out, data_recipe=args.data, teacher=args.teacher,
                              roles=[s for s in args.splits.split(",") if s], overrides=args.overrides,
                              batch_size=args.batch_size)
    print(json.dumps(res, indent=2))
    return 0


def _teacher_of(cfg, which: str):
    """The TeacherConfig of a kd/ccl method config."""
    from xmodal.errors import ConfigError

    m = cfg.method
    if m.name == "kd":
        return m.teacher
    if m.name == "ccl":
        if which not in ("audio", "image"):
            raise ConfigError("--teacher: a ccl recipe has two teachers; choose --teacher audio or --teacher image")
        return getattr(m, f"{which}_teacher")
    raise ConfigError(f"teacher-cache: a '{m.name}' recipe names no teacher; give a teacher run folder or a kd/ccl recipe")


def write_teacher_cache(target: str | Path, out: str | Path, *, data_recipe: str | None = None, teacher: str = "",
                        roles: list[str] | tuple[str, ...] = ("labelled", "pool", "train", "val", "test"),
                        overrides: list[str] | None = None, batch_size: int = 256, data=None) -> dict:
    """Write the cache; returns {"out", "count", "per_split", "seconds"}. `data` reuses a bundle."""
    import torch

    from xmodal.config import load_config
    from xmodal.data.features import FeatureStore
    from xmodal.data.kd_pool import LabelledPoolDataset, fetch
    from xmodal.engine.runs import resolve_config_path
    from xmodal.errors import ConfigError
    from xmodal.methods._distill import TeacherConfig, load_teacher, resize_frame, select_frame
    from xmodal.registry import DATASETS

    target = Path(target)
    cfg = load_config(resolve_config_path(target), overrides if data_recipe is None else None)
    if target.is_dir():
        if cfg.method.name != "supervised":
            raise ConfigError(f"{target}: a '{cfg.method.name}' run is not a teacher (expected a supervised run)")
        tcfg = TeacherConfig(run=str(target))
    else:
        tcfg = _teacher_of(cfg, teacher)
        if not tcfg.run:
            raise ConfigError(f"{target}: its teacher names no run folder (method.teacher.run)")
    data_cfg = load_config(data_recipe, overrides).data if data_recipe else cfg.data
    if any(f.name == "features" for f in dataclasses.fields(data_cfg)):
        data_cfg = dataclasses.replace(data_cfg, features={})  # the store being written is not needed
    bundle = data if data is not None else DATASETS.build(data_cfg)
    model, input_key = load_teacher(tcfg, bundle.info)
    frame = tcfg.frame
    seen: set[str] = set()
    uids: list[str] = []
    logits, feats, per_split = [], [], {}
    t0 = time.perf_counter()
    for role in roles:
        ds = bundle.split(role)
        if ds is None or isinstance(ds, LabelledPoolDataset):
            continue
        n = 0
        with torch.no_grad():
            for a in range(0, len(ds), batch_size):
                b = fetch(ds, list(range(a, min(len(ds), a + batch_size))))
                keep = [i for i, u in enumerate(b["uid"]) if str(u) not in seen]
                if not keep:
                    continue
                if input_key not in b:
                    raise ConfigError(f"teacher input key '{input_key}' is not in the data's batches; keys: {sorted(b)}")
                x = b[input_key][keep]
                o = model(resize_frame(select_frame(x, "middle", False), tcfg.image_size) if frame != "none" else x)
                uids += [str(b["uid"][i]) for i in keep]
                seen.update(uids[-len(keep):])
                logits.append(o.logits.float())
                feats.append(o.feature.float())
                n += len(keep)
        per_split[role] = n
    if not uids:
        raise ConfigError(f"--splits {','.join(roles)}: none of these splits exists in the data")
    meta = {"teacher_run": str(tcfg.run), "input_key": input_key, "frame": frame, "splits": json.dumps(per_split)}
    path = FeatureStore.write(out, uids, {"logits": torch.cat(logits), "feature": torch.cat(feats)}, meta)
    return {"out": str(path), "count": len(uids), "per_split": per_split, "seconds": round(time.perf_counter() - t0, 3)}
