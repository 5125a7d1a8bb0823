"""Raw recipe reading used by the stages whose methods may be missing from a checkout."""

from xmodal.demo.core import recipe_path
from xmodal.demo.stages._recipes import get, raw_recipe, verb_available


def test_raw_recipe_merges_the_base_chain():
    r = raw_recipe(recipe_path("recipes/textkd/avdigits-student-kd.yaml"))
    assert r["name"] == "textkd-avdigits-student-kd"  # the recipe's own key wins
    assert get(r, "method.kd.weight") == 150.0 and get(r, "method.model.name") == "avt"  # base: student.yaml
    assert get(r, "data.num_sequences") == 400 and get(r, "data.features.teacher").endswith("preds.safetensors")
    assert "_base_" not in r and get(r, "method.nothing.here", "d") == "d"


def test_verb_available():
    assert verb_available("train") and not verb_available("no-such-verb")
