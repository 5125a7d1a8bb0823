import pytest

from xmodal.config import from_dict
from xmodal.errors import ConfigError
from xmodal.registry import METHODS, MODELS, Registry


def test_builtins_discovered():
    assert "mlp" in MODELS.names()
    assert "supervised" in METHODS.names()


def test_user_registration_and_typed_config():
    reg = Registry("widget")

    @reg.register("box")
    def box(width: int = 2, label: str = "x"):
        return (width, label)

    cfg = from_dict(reg.entry("box").config, {"name": "box", "width": 5})
    assert reg.build(cfg) == (5, "x")
    assert reg.build_named("box", label="y") == (2, "y")
    with pytest.raises(ConfigError, match="unknown widget 'bx' \\(did you mean 'box'\\?\\)"):
        reg.get("bx")
    with pytest.raises(ConfigError, match="expected int"):
        reg.build_named("box", width="wide")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("box")(lambda: None)
