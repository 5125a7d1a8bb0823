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


def test_discovery_from_two_threads_sees_every_component(tmp_path, monkeypatch):
    """The demo looks components up from several threads at once: a lookup that arrives while
    another thread is still importing the built-in modules waits for them instead of failing."""
    import sys
    import threading

    pkg = tmp_path / "slowpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "slow.py").write_text("import time\nfrom test_registry_slow import REG\ntime.sleep(0.3)\n"
                                 "REG.register('late')(lambda: 'built')\n")
    reg = Registry("gadget", ("slowpkg",))
    mod = type(sys)("test_registry_slow")
    mod.REG = reg
    monkeypatch.setitem(sys.modules, "test_registry_slow", mod)
    monkeypatch.syspath_prepend(str(tmp_path))
    found, errors = [], []

    def look():
        try:
            found.append(reg.get("late")())
        except ConfigError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=look) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and found == ["built"] * 3
