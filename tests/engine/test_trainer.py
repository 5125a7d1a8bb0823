import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xmodal.config import load_config
from xmodal.engine.checkpoint import load_state_file
from xmodal.engine.logging import read_metrics
from xmodal.engine.trainer import train
from xmodal.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "supervised" / "gauss.yaml"


def env():
    e = dict(os.environ, PYTHONPATH=str(ROOT / "src"), XMODAL_PROGRESS="0", OMP_NUM_THREADS="1")
    return e


def cli(*args, check=True, **kw):
    return subprocess.run([sys.executable, "-m", "xmodal.cli", *args], env=env(), capture_output=True, text=True, check=check, **kw)


def weights(run: Path) -> dict:
    return load_state_file(run / "weights.safetensors")


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_supervised_gauss_learns_and_writes_run(tmp_path):
    cfg = load_config(RECIPE, ["train.epochs=40", "train.eval_every=20"])
    res = train(cfg, out_dir=tmp_path)
    assert res.status == "finished" and res.step == 40 * 4
    # Setting G student side: 10 of 20 decisive latents visible -> well above chance (ref. ~68 %).
    assert res.metrics["test"]["top1"] > 60
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "weights.safetensors").is_file()
    rows = read_metrics(tmp_path)
    train_rows = [r for r in rows if r["split"] == "train"]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert any(r["split"] == "test" and r.get("final") for r in rows)
    assert json.loads((tmp_path / "final.json").read_text())["test"]["top1"] == res.metrics["test"]["top1"]


def test_grad_accumulation_matches_large_batch(tmp_path):
    base = ["train.epochs=3", "optim.momentum=0.0", "train.eval_every=0"]
    a = train(load_config(RECIPE, base + ["train.batch_size=50"]), out_dir=tmp_path / "a")
    b = train(load_config(RECIPE, base + ["train.batch_size=25", "train.grad_accum=2"]), out_dir=tmp_path / "b")
    assert a.step == b.step
    for k, v in weights(tmp_path / "a").items():
        assert torch.allclose(v, weights(tmp_path / "b")[k], atol=1e-6)


LONG = ["train.epochs=30", "train.batch_size=10", "train.ckpt_every_steps=7", "train.ckpt_every_epochs=0",
        "train.eval_every=0", "train.log_every=50", "train.keep_last=3", "method.model.hidden=[64]", "optim.momentum=0.9"]
SETS = sum((["--set", s] for s in LONG), [])


def test_kill9_then_resume_auto_is_identical(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    cli("train", str(RECIPE), "--out", str(ref), *SETS)
    # SIGKILL at step 418 (20 steps per epoch): the newest checkpoint is mid-epoch step 413.
    killed = subprocess.run([sys.executable, "-m", "xmodal.cli", "train", str(RECIPE), "--out", str(run), *SETS],
                            env={**env(), "XMODAL_FAULT_KILL_AT_STEP": "418"}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL
    ck = run / "checkpoints"
    assert not (run / "weights.safetensors").exists()
    assert max(int(p.name[5:13]) for p in ck.glob("step_*.ckpt")) == 413
    # a checkpoint torn on disk (e.g. killed while copying) must be skipped, not crash the resume
    (ck / "step_00000420.ckpt").write_bytes((ck / "step_00000413.ckpt").read_bytes()[:1000])
    out = cli("train", str(RECIPE), "--out", str(run), "--resume", "auto", *SETS)
    assert "skipping unusable checkpoint" in out.stderr and "resumed from" in out.stderr
    assert same(weights(ref), weights(run))
    assert json.loads((ref / "final.json").read_text())["test"] == json.loads((run / "final.json").read_text())["test"]
    ref_rows = [r for r in read_metrics(ref) if r["split"] == "train"]
    run_rows = [r for r in read_metrics(run) if r["split"] == "train"]
    assert [(r["step"], r["loss"]) for r in ref_rows] == [(r["step"], r["loss"]) for r in run_rows]


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "xmodal.cli", "train", str(RECIPE), "--out", str(run), *SETS],
                       env={**env(), "XMODAL_FAULT_SIGNAL_AT_STEP": "95"}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "stopped by signal at step 95" in r.stderr
    assert (run / "checkpoints" / "step_00000095.ckpt").is_file()
    assert not (run / "weights.safetensors").exists()
    cli("train", str(RECIPE), "--out", str(run), "--resume", "auto", *SETS)
    assert (run / "weights.safetensors").exists()


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    from xmodal.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.read_text().replace("batch_size: 50", "batchsize: 50"))
    r = cli("train", str(bad), check=False)  # one real process: exit code and no traceback
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "train.batchsize: unknown key (did you mean 'batch_size'?)" in lines[0]
    capsys.readouterr()
    with pytest.raises(ConfigError, match="batchsize"):  # --debug re-raises with the traceback
        main(["train", str(bad), "--debug"])
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "recipe file not found" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_help_everywhere(capsys):
    from xmodal.cli import build_parser

    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    assert {"train", "eval"} <= set(verbs)
    for verb, sub in verbs.items():
        assert f"usage: xmodal {verb}" in sub.format_help()
    assert "train" in cli("--help").stdout


@pytest.mark.dist
def test_torchrun_two_processes_match_one(tmp_path):
    sets = ["train.epochs=5", "train.eval_every=0", "optim.momentum=0.9", "method.model.hidden=[16]"]
    one = tmp_path / "one"
    cli("train", str(RECIPE), "--out", str(one), *sum((["--set", s] for s in sets + ["train.batch_size=50"]), []))
    two = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "xmodal.cli", "train", str(RECIPE), "--out", str(two),
                    *sum((["--set", s] for s in sets + ["train.batch_size=25"]), [])],
                   env=env(), check=True, capture_output=True, text=True)
    a, b = weights(one), weights(two)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert json.loads((one / "final.json").read_text())["test"]["top1"] == pytest.approx(
        json.loads((two / "final.json").read_text())["test"]["top1"], abs=0.11)


def test_recompute_batchnorm_gives_exact_statistics():
    from xmodal.engine.trainer import recompute_batchnorm

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    teacher = torch.nn.BatchNorm1d(3)
    teacher.requires_grad_(False).eval()
    x = torch.randn(64, 4) * 3 + 1
    loader = [x[i:i + 16] for i in range(0, 64, 16)]

    class Both(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.teacher = net, teacher

        def forward(self, b):
            self.teacher(b[:, :3])
            return self.net(b)

        def train(self, mode=True):  # as methods.base.Method does for frozen teachers
            super().train(mode)
            self.teacher.eval()
            return self

    model = Both()
    model.teacher.eval()
    before = teacher.running_mean.clone()
    assert recompute_batchnorm(model, loader, 3, torch.device("cpu")) == 3
    h = net[0](x[:48]).detach()
    # cumulative average of the per-batch means/unbiased variances of the first 3 batches
    means = torch.stack([h[i:i + 16].mean(0) for i in range(0, 48, 16)]).mean(0)
    vars_ = torch.stack([h[i:i + 16].var(0) for i in range(0, 48, 16)]).mean(0)
    assert torch.allclose(net[1].running_mean, means, atol=1e-5)
    assert torch.allclose(net[1].running_var, vars_, atol=1e-4)
    assert net[1].momentum == 0.1 and torch.equal(teacher.running_mean, before)


def test_epoch_weights_and_balanced_sampler_need_weights(tmp_path):
    cfg = load_config(RECIPE, ["train.epochs=3", "train.eval_every=0", "train.save_epoch_weights=true"])
    train(cfg, out_dir=tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a" / "epochs").iterdir()) == [f"epoch_00{i}.safetensors" for i in (1, 2, 3)]
    assert same(load_state_file(tmp_path / "a" / "epochs" / "epoch_003.safetensors"), weights(tmp_path / "a"))
    with pytest.raises(ConfigError, match="balanced sampling needs sample weights; data source 'gauss'"):
        train(load_config(RECIPE, ["train.sampler=balanced"]), out_dir=tmp_path / "b")
