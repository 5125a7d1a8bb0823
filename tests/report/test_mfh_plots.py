"""MFH report plots write real PNGs from result objects or their JSON form."""

import pytest

from xmodal.analysis import mfh_synthetic as ms
from xmodal.errors import DataError
from xmodal.report import mfh_plots

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep():
    return ms.sweep_gamma((0, 10), n_runs=2, train=ms.TrainConfig(steps=30), alg1=ms.Alg1Config(steps=30, repeats=3))


def test_saliency_bars(tmp_path):
    out = mfh_plots.plot_saliency([0.1, 1.0, 0.0, 0.5], tmp_path / "sal" / "s.png", true_channels=[1])
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 2000


def test_gamma_sweep_from_result_and_from_json(tmp_path, sweep):
    a = mfh_plots.plot_gamma_sweep(sweep, tmp_path / "a.png")
    b = mfh_plots.plot_gamma_sweep(ms.run_synthetic({"studies": ["gamma"], "n_runs": 2, "overlaps": [0, 10], "train": {"steps": 30}, "alg1": {"steps": 30, "repeats": 3}})["gamma"], tmp_path / "b.png")
    assert a.read_bytes()[:8] == PNG == b.read_bytes()[:8]
    with pytest.raises(DataError, match="points"):
        mfh_plots.plot_gamma_sweep({"points": []}, tmp_path / "c.png")


def test_predicted_vs_observed(tmp_path, sweep):
    gh, gain, labels = mfh_plots.sweep_gain_points(sweep)
    assert labels == ["G0", "G10"] and len(gh) == len(gain) == 2
    out = mfh_plots.plot_predicted_vs_observed(gh, gain, tmp_path / "p.png", labels=labels)
    assert out.read_bytes()[:8] == PNG
    with pytest.raises(DataError, match="equally many"):
        mfh_plots.plot_predicted_vs_observed([0.1], [], tmp_path / "q.png")
