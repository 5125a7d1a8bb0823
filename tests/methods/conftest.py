from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(scope="session")
def avdigits_bundles():
    """The avdigits data of recipes/{gdt,stica}/avdigits.yaml, generated once per session:
    (pretraining bundle: train = the unlabelled pool, probe bundle: train = 5 labelled clips/class)."""
    from xmodal.config import load_config
    from xmodal.data.bundle import DataBundle
    from xmodal.registry import DATASETS

    gdt = load_config(RECIPES / "gdt" / "avdigits.yaml", ["data.train_split=train"])
    stica = load_config(RECIPES / "stica" / "avdigits.yaml", ["data.train_split=train"])
    assert gdt.data == stica.data, "the embedded GDT and STiCA recipes are meant to share their data"
    probe = DATASETS.build(gdt.data)
    return DataBundle(train=probe.extra["pool"], test=probe.test, info=probe.info), probe
