"""`xmodal mfh synthetic|diagnose` through the CLI: report files, JSON numbers, one-line errors."""

import json
from pathlib import Path

from xmodal.cli import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "mfh"
FAST = ["--set", "train.steps=100", "--set", "alg1.steps=100", "--set", "alg1.repeats=10", "--set", "n_runs=2"]


def test_synthetic_writes_report_plots_and_json(tmp_path, capsys):
    out = tmp_path / "syn"
    rc = main(["mfh", "synthetic", "--set", "studies=[gamma, table2]", "--set", "overlaps=[0, 10]", "--set", "ks=[10]", *FAST,
               "--out", str(out)])
    assert rc == 0
    for name in ("report.md", "report.html", "report.json", "gamma_sweep.png", "predicted_vs_observed.png"):
        assert (out / name).stat().st_size > 0, name
    res = json.loads((out / "report.json").read_text())
    assert [p["param"] for p in res["gamma"]["points"]] == [0, 10]
    assert res["table2"]["rows"][0]["k"] == 10
    md = (out / "report.md").read_text()
    assert "Setting G" in md and "Table 2" in md
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["report"] == str(out / "report.md")


def test_synthetic_recipe_runs(tmp_path):
    out = tmp_path / "alpha"
    assert main(["mfh", "synthetic", str(RECIPES / "gauss-alpha.yaml"), "--set", "ds=[0, 40]", *FAST, "--out", str(out)]) == 0
    assert len(json.loads((out / "report.json").read_text())["alpha"]["points"]) == 2


def test_diagnose_compare_writes_report_files(tmp_path, capsys):
    out = tmp_path / "diag"
    rc = main(["mfh", "diagnose", str(RECIPES / "gauss-diagnose.yaml"), "--compare", "data.param=0,10", "--verify-kd",
               "--set", "teacher.steps=200", "--set", "student.steps=200", "--set", "saliency.repeats=20", "--out", str(out)])
    assert rc == 0
    for name in ("report.md", "report.html", "report.json", "saliency_0.png", "saliency_1.png", "accuracy_vs_gamma.png",
                 "predicted_vs_observed.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "report.json").read_text())
    assert data["labels"] == ["data.param=0", "data.param=10"]
    lo, hi = data["results"]
    assert hi["gamma_hat"] > lo["gamma_hat"]
    assert all(r["kd_gain"] is not None and r["verdict"].startswith("KD expected") for r in (lo, hi))
    html = (out / "report.html").read_text()
    assert "<table>" in html and "accuracy_vs_gamma.png" in html
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line.get("setting") for line in lines[:2]] == ["data.param=0", "data.param=10"]


def test_bad_inputs_print_one_line(tmp_path, capsys):
    recipe = tmp_path / "noteacher.yaml"
    recipe.write_text("data: {name: gauss}\nstudent: {modality: x2, model: {name: mlp}}\n")
    assert main(["mfh", "diagnose", str(recipe), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "teacher" in err and str(recipe) in err
    assert main(["mfh", "diagnose", str(RECIPES / "gauss-diagnose.yaml"), "--teacher-ckpt", str(tmp_path / "missing.safetensors"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.safetensors" in err
    assert main(["mfh", "diagnose", str(RECIPES / "gauss-diagnose.yaml"), "--compare", "data.param", "--out", str(tmp_path / "o")]) == 2
    assert "--compare" in capsys.readouterr().err
