"""report.html from a results folder holding one real (tiny) training run."""

import base64
import re

import pytest

from xmodal.demo.core import Bars, Claim, StageContext, StageResult, write_results
from xmodal.demo.report import bar_chart, loss_curves, write_report


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A results folder with a real `xmodal train` run (MFH Gaussian data, 3 epochs)."""
    from xmodal.demo.core import recipe_path

    out = tmp_path_factory.mktemp("demo")
    ctx = StageContext("gauss", out, quick=True, settings={}, previous={}, progress=False)
    final = ctx.train("supervised", recipe_path("recipes/supervised/gauss.yaml"), "train.epochs=3", "train.log_every=1")
    acc = final["test"]["top1"]
    res = StageResult(stage="gauss", title="supervised on gauss", mode="quick", metrics={"top1": acc},
                      claims=[Claim("above chance", acc > 50, f"{acc:.1f} %"), Claim("perfect", acc == 100, f"{acc:.1f} %", checked=False)],
                      bars=[Bars("accuracy", ["x2 only"], [acc], reference=50.0)], runs={"supervised": "gauss/supervised"})
    skip = StageResult(stage="later", title="later stage", status="skipped", reason="not available: branch x is not merged")
    write_results(out, {"gauss": res, "later": skip}, mode="quick", peak_rss_mb=123.0)
    return out


def test_report_is_self_contained_with_plots_claims_and_skip_reasons(folder):
    page = write_report(folder).read_text()
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) == 2  # the bars and the loss curve
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    assert "http" not in page.replace("http-equiv", "")  # nothing to fetch
    assert "above chance" in page and 'class="pass">PASS' in page and "not met (info)" in page
    assert "not available: branch x is not merged" in page
    assert sorted(p.name for p in (folder / "figures").iterdir()) == ["gauss-bars-0.png", "gauss-loss.png"]


def test_loss_curves_read_the_runs_metrics(folder, tmp_path):
    assert loss_curves({"a": folder / "gauss" / "supervised"}, tmp_path / "l.png", "t").stat().st_size > 1000
    assert loss_curves({"none": tmp_path / "nothing"}, tmp_path / "n.png", "t") is None


def test_bar_chart_without_reference(tmp_path):
    png = bar_chart(Bars("t", ["a", "b"], [1.0, 2.0]), tmp_path / "b.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
