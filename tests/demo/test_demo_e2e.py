"""`xmodal demo --quick` end to end (what CI runs): every available stage finishes, its key claims
hold, and report.html (self-contained) and the PNG plots are written. Stages whose methods are not
in the checkout must say why they were skipped."""

import json

import pytest

from xmodal.cli import main

# claims that must be present (and hold) whenever their stage ran
KEY_CLAIMS = {
    "media": ["prep: every clip stored, none rejected"],
    "gdt": ["GDT retrieval above chance", "GDT linear probe beats a random encoder"],
    "textkd": ["text-KD student beats no-KD"],
    "cavmae": ["CAV-MAE reconstruction losses fall during pretraining", "CAV-MAE retrieval above chance",
               "CAV-MAE pretraining helps fine-tuning"],
    "ccl": ["KD beats baseline"],
}


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    body = json.loads((tmp_path / "results.json").read_text())
    stages = body["stages"]
    assert list(stages) == ["media", "gdt", "textkd", "cavmae", "mfh", "ccl"]
    for name, r in stages.items():
        if name in ("mfh", "ccl") and r["status"] == "skipped":
            assert r["reason"].startswith("not available: "), r
            continue
        assert r["status"] == "done", (name, r["reason"])
        names = [c["name"] for c in r["claims"]]
        for key in KEY_CLAIMS.get(name, []):
            assert key in names, (name, names)
        for c in r["claims"]:
            if c["checked"]:
                assert c["passed"], (name, c["name"], c["detail"])
    if stages["mfh"]["status"] == "done" and stages["ccl"]["status"] == "done":
        assert any(c["name"].startswith("MFH verdict consistent with observed KD outcome") for c in body["claims"])
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 6
    pngs = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert {"gdt-bars-0.png", "gdt-loss.png", "textkd-loss.png", "cavmae-loss.png"} <= pngs, pngs
    assert (tmp_path / "gdt" / "retrieval_examples.png").is_file()
    assert list((tmp_path / "cavmae" / "inpaint").glob("*.png"))
    assert "[PASS] GDT retrieval above chance" in printed and "report:" in printed
    # the commands running together, plus what `xmodal demo` itself holds from the command line
    # (~0.5 GiB measured); this test's host process carries the other tests' memory, so not its own
    assert body["commands_peak_rss_mb"] + 512 < 4096, body["commands_peak_rss_mb"]
