"""`xmodal cavmae inpaint|retrieval|test` on tiny avdigits runs made with the embedded recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xmodal.cli import main
from xmodal.config import load_config
from xmodal.engine.checkpoint import load_state_file, save_atomic, save_safetensors_atomic
from xmodal.engine.trainer import train
from xmodal.eval.cavmae import epoch_weight_path

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "cavmae"
SMALL = ["data.n_pool=48", "data.n_test_per_class=2", "train.batch_size=16", "train.max_steps=2",
         "train.progress=false", "train.tensorboard=false", "train.eval_every=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cavmae-runs")
    torch.manual_seed(0)
    pre = train(load_config(RECIPES / "avdigits-pretrain.yaml", SMALL), out_dir=root / "pre")
    ft_cfg = load_config(RECIPES / "avdigits-finetune.yaml", SMALL + [f"method.init_from={root / 'pre'}", "train.batch_size=10"])
    ft = train(ft_cfg, out_dir=root / "ft")
    return pre.out_dir, ft.out_dir


def test_inpaint_writes_pngs_and_a_summary(runs, tmp_path, capsys):
    pre, ft = runs
    out = tmp_path / "figs"
    assert main(["cavmae", "inpaint", str(pre), "--out", str(out), "--n", "2", "--ratio", "0.5"]) == 0
    summary = json.loads((out / "inpaint.json").read_text())
    assert summary["pngs"] == ["sample0_audio.png", "sample0_image.png", "sample1_audio.png", "sample1_image.png"]
    assert all((out / p).stat().st_size > 1000 for p in summary["pngs"]) and summary["mse_audio"] > 0
    capsys.readouterr()
    # a finetuned model has no decoder
    assert main(["cavmae", "inpaint", str(ft), "--out", str(out)]) == 2
    assert "pretrained CAV-MAE" in capsys.readouterr().err


def test_retrieval_reports_both_directions_and_takes_official_weights(runs, tmp_path, capsys):
    pre, _ = runs
    assert main(["cavmae", "retrieval", str(pre), "--json", str(tmp_path / "r.json")]) == 0
    metrics = json.loads((tmp_path / "r.json").read_text())
    for key in ("v2a_R@1", "v2a_R@5", "v2a_R@10", "a2v_R@1", "a2v_median_rank", "class_a2v_R@1"):
        assert key in metrics
    assert metrics["v2a_R@1"] <= metrics["v2a_R@5"] <= metrics["v2a_R@10"]
    # the same weights as a released-style file (module.-prefixed torch pickle) give the same numbers
    state = {f"module.{k[len('model.'):]}": v for k, v in load_state_file(pre / "weights.safetensors").items()}
    save_atomic(state, tmp_path / "official.pth")
    capsys.readouterr()
    assert main(["cavmae", "retrieval", str(pre), "--ckpt", str(tmp_path / "official.pth")]) == 0
    assert json.loads(capsys.readouterr().out) == metrics
    save_atomic({k: v for k, v in state.items() if "norm_a" not in k}, tmp_path / "partial.pth")
    assert main(["cavmae", "retrieval", str(pre), "--ckpt", str(tmp_path / "partial.pth")]) == 2


def test_test_verb_weight_averages_and_averages_frames(runs, tmp_path, capsys):
    pre, ft = runs
    capsys.readouterr()
    assert main(["cavmae", "test", str(ft), "--no-wa", "--frames", "2"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["frames"] == 2.0 and 0.0 <= plain["top1"] <= 100.0
    # weight averaging of two identical epoch snapshots is the final model itself
    final = load_state_file(ft / "weights.safetensors")
    for e in (1, 2):
        save_safetensors_atomic(final, epoch_weight_path(ft, e))
    assert main(["cavmae", "test", str(ft), "--wa", "1", "2", "--frames", "2"]) == 0
    averaged = json.loads(capsys.readouterr().out)
    assert averaged["top1"] == pytest.approx(plain["top1"]) and averaged["wa_end"] == 2.0
    assert main(["cavmae", "test", str(ft), "--wa", "1", "3"]) == 2
    assert "epoch_003" in capsys.readouterr().err
    assert main(["cavmae", "test", str(pre)]) == 2
