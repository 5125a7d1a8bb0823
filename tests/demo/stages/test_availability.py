"""The MFH and CCL stages say why they cannot run (never fake numbers) when their method, verb or
recipes are not in the checkout, and read the reports they will get."""

import pytest

from xmodal.demo.core import STAGES, StageContext
from xmodal.demo.settings import stage_settings
from xmodal.demo.stages._recipes import verb_available
from xmodal.demo.stages.ccl import _missing
from xmodal.demo.stages.mfh import _first_result, _helps


def test_ccl_names_what_is_missing():
    s = stage_settings("ccl", True)
    why = _missing({**s, "teachers": "recipes/none/*.yaml"})
    assert why == "no recipe matches recipes/none/*.yaml"
    why = _missing({**s, "teachers": "recipes/supervised/gauss.yaml", "baseline": "recipes/supervised/gauss.yaml",
                    "students": ["recipes/none/*.yaml"]})
    assert why == "no student recipe matches recipes/none/*.yaml"


@pytest.mark.skipif(verb_available("mfh"), reason="the mfh verb is in this checkout")
def test_mfh_stage_is_skipped_with_its_reason(tmp_path):
    ctx = StageContext("mfh", tmp_path, True, stage_settings("mfh", True), {}, progress=False)
    res = STAGES.get("mfh")(ctx)
    assert res.status == "skipped" and res.reason.startswith("not available: ") and "mfh-cli" in res.reason
    assert not res.metrics and not res.claims


def test_mfh_verdict_reading():
    assert _helps({"helps": True, "verdict": "KD will not help"}) is True  # the boolean wins
    assert _helps({"verdict": "KD is likely to help (gamma_hat 0.62 >= 0.4)"}) is True
    assert _helps({"verdict": "KD will not help (gamma_hat 0.10 < 0.4)"}) is False


def test_mfh_report_result():
    one = {"gamma_hat": 0.7, "helps": True}
    assert _first_result({"labels": ["a"], "results": [one]}) == one and _first_result(one) == one
