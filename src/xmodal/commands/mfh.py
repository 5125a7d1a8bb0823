"""`xmodal mfh <verb>`: the Modality Focusing Hypothesis study and diagnostic (specs/mfh.md).

    xmodal mfh synthetic [recipes/mfh/gauss-gamma.yaml] [--set n_runs=5] --out runs/mfh-gauss
    xmodal mfh diagnose recipes/mfh/avdigits-audio-video.yaml --out runs/mfh-avd [--verify-kd]
    xmodal mfh diagnose <recipe> --teacher-ckpt runs/my-teacher --out DIR     # reuse a trained teacher
    xmodal mfh diagnose <recipe> --compare data.gap=0,0.8 --verify-kd --out DIR # several settings, one report

Each writes report.md, report.html, report.json and PNG plots into --out. The logic lives in
xmodal.analysis (mfh_synthetic.run_synthetic, mfh_diagnose.diagnose); this module only parses.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_commands(sub, common) -> None:
    p = sub.add_parser("mfh", parents=[common], help="MFH: synthetic gauss study and the 'will cross-modal KD help?' diagnostic",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="mfh_verb", metavar="<verb>", required=True)

    s = verbs.add_parser("synthetic", parents=[common], help="γ / α sweeps, Table 2 and channel removal on the gauss data")
    s.add_argument("recipe", nargs="?", default=None, help="a recipes/mfh/gauss-*.yaml (default: every study at the spec's settings)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a key, e.g. --set n_runs=5 (repeatable)")
    s.add_argument("--out", required=True, help="report folder")
    s.set_defaults(func=cmd_synthetic)

    d = verbs.add_parser("diagnose", parents=[common], help="estimate γ̂ for a teacher/student pair and say whether KD should help")
    d.add_argument("recipe", help="a diagnose recipe naming teacher.modality and student.modality (see recipes/mfh/)")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key (repeatable)")
    d.add_argument("--out", required=True, help="report folder (the trained teacher/student runs go under it)")
    d.add_argument("--teacher-ckpt", default=None, help="load the teacher from this run folder or weights file instead of training it")
    d.add_argument("--verify-kd", action="store_true", help="also train a KD student and report the observed gain")
    d.add_argument("--compare", default=None, metavar="KEY=V1,V2,...", help="run once per value of one recipe key, e.g. data.gap=0,0.8")
    d.set_defaults(func=cmd_diagnose)


def cmd_synthetic(args: argparse.Namespace) -> int:
    from xmodal.analysis.mfh_synthetic import SyntheticConfig, run_synthetic
    from xmodal.config import Source, apply_overrides, from_dict, load_config
    from xmodal.report.mfh_report import write_synthetic_report

    if args.recipe:
        cfg = load_config(args.recipe, args.overrides, cls=SyntheticConfig)
    else:
        src = Source(default="mfh synthetic")
        cfg = from_dict(SyntheticConfig, apply_overrides({}, args.overrides, src), (), src)
    res = run_synthetic(cfg)
    paths = write_synthetic_report(res, args.out)
    print(json.dumps({"report": str(paths["md"]), "json": str(paths["json"])}))
    return 0


def _compare(spec: str | None) -> tuple[str | None, list[str]]:
    from xmodal.errors import ConfigError

    if spec is None:
        return None, [""]
    key, sep, values = spec.partition("=")
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not vals:
        raise ConfigError(f"--compare {spec}: expected KEY=V1,V2,... (e.g. data.gap=0,0.8)")
    return key.strip(), vals


def cmd_diagnose(args: argparse.Namespace) -> int:
    from xmodal.analysis.mfh_diagnose import diagnose, load_diagnose_config
    from xmodal.report.mfh_report import write_diagnose_report

    key, values = _compare(args.compare)
    overrides = list(args.overrides) + ([f"teacher.checkpoint={args.teacher_ckpt}"] if args.teacher_ckpt else [])
    out = Path(args.out)
    results, labels = [], []
    for v in values:
        extra = [f"{key}={v}"] if key else []
        cfg = load_diagnose_config(args.recipe, overrides + extra)
        label = f"{key}={v}" if key else cfg.name
        res = diagnose(cfg, out_dir=out / "runs" / (label.replace("/", "_") if key else "run"), verify_kd=args.verify_kd or None)
        results.append(res.to_json())
        labels.append(label)
        print(json.dumps({"setting": label, "gamma_hat": round(res.gamma_hat, 4), "helps": res.helps,
                          "kd_gain": None if res.kd_gain is None else round(res.kd_gain, 2), "verdict": res.verdict}))
    paths = write_diagnose_report(results, out, labels=labels)
    print(json.dumps({"report": str(paths["md"]), "json": str(paths["json"])}))
    return 0
