import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from xmodal.config import load_config
from xmodal.engine.checkpoint import load_state_file
from xmodal.engine.logging import read_metrics
from xmodal.engine.trainer import train

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


LONG = ["train.epochs=300", "train.batch_size=10", "train.ckpt_every_steps=7", "train.ckpt_every_epochs=0",
        "train.eval_every=0", "train.log_every=50", "train.keep_last=3", "method.model.hidden=[64]", "optim.momentum=0.9"]


def test_kill9_then_resume_auto_is_identical(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    cli("train", str(RECIPE), "--out", str(ref), *sum((["--set", s] for s in LONG), []))
    proc = subprocess.Popen([sys.executable, "-m", "xmodal.cli", "train", str(RECIPE), "--out", str(run), *sum((["--set", s] for s in LONG), [])],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    ck = run / "checkpoints"
    while time.time() < deadline:
        steps = sorted(int(p.name[5:13]) for p in ck.glob("step_*.ckpt")) if ck.is_dir() else []
        if steps and steps[-1] >= 700:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "weights.safetensors").exists(), "run finished before it could be killed"
    last = max(int(p.name[5:13]) for p in ck.glob("step_*.ckpt"))
    assert last % 20 != 0, "want a mid-epoch checkpoint (20 steps per epoch)"
    # a checkpoint torn on disk (e.g. killed while copying) must be skipped, not crash the resume
    torn = ck / f"step_{last + 7:08d}.ckpt"
    torn.write_bytes((ck / f"step_{last:08d}.ckpt").read_bytes()[:1000])
    out = cli("train", str(RECIPE), "--out", str(run), "--resume", "auto", *sum((["--set", s] for s in LONG), []))
    assert "skipping unusable checkpoint" in out.stderr
    assert same(weights(ref), weights(run))
    final_ref = json.loads((ref / "final.json").read_text())
    final_run = json.loads((run / "final.json").read_text())
    assert final_ref["test"] == final_run["test"]
    ref_rows = [r for r in read_metrics(ref) if r["split"] == "train"]
    run_rows = [r for r in read_metrics(run) if r["split"] == "train"]
    assert [(r["step"], r["loss"]) for r in ref_rows] == [(r["step"], r["loss"]) for r in run_rows]


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "xmodal.cli", "train", str(RECIPE), "--out", str(run), *sum((["--set", s] for s in LONG), [])],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ck = run / "checkpoints"
    deadline = time.time() + 60
    while time.time() < deadline and not (ck.is_dir() and any(ck.glob("step_*.ckpt"))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped by signal" in err
    assert not (run / "weights.safetensors").exists()
    cli("train", str(RECIPE), "--out", str(run), "--resume", "auto", *sum((["--set", s] for s in LONG), []))
    assert (run / "weights.safetensors").exists()


def test_cli_user_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.read_text().replace("batch_size: 50", "batchsize: 50"))
    r = cli("train", str(bad), check=False)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "train.batchsize: unknown key (did you mean 'batch_size'?)" in lines[0]
    assert "Traceback" not in r.stderr
    r = cli("train", str(bad), "--debug", check=False)
    assert "Traceback" in r.stderr
    r = cli("train", str(tmp_path / "missing.yaml"), check=False)
    assert r.returncode == 2 and "recipe file not found" in r.stderr
    r = cli("eval", str(tmp_path), check=False)
    assert r.returncode == 2 and "not a run folder" in r.stderr


def test_help_everywhere():
    assert "train" in cli("--help").stdout
    for verb in ("train", "eval"):
        assert "usage: xmodal " + verb in cli(verb, "--help").stdout


@pytest.mark.dist
def test_torchrun_two_processes_match_one(tmp_path):
    sets = ["train.epochs=5", "train.eval_every=0", "optim.momentum=0.9", "method.model.hidden=[16]"]
    one = tmp_path / "one"
    cli("train", str(RECIPE), "--out", str(one), *sum((["--set", s] for s in sets + ["train.batch_size=50"]), []))
    two = tmp_path / "two"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                    "-m", "xmodal.cli", "train", str(RECIPE), "--out", str(two),
                    *sum((["--set", s] for s in sets + ["train.batch_size=25"]), [])],
                   env=env(), check=True, capture_output=True, text=True)
    a, b = weights(one), weights(two)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert json.loads((one / "final.json").read_text())["test"]["top1"] == pytest.approx(
        json.loads((two / "final.json").read_text())["test"]["top1"], abs=0.11)
