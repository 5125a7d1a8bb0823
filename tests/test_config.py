from dataclasses import dataclass, field
from pathlib import Path

import pytest

from xmodal.config import OptimConfig, RunConfig, dump_yaml, from_dict, load_config, load_recipe_dict, to_dict
from xmodal.errors import ConfigError


def write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


GOOD = """
name: t
method: {name: supervised, input_key: x2, model: {name: mlp, hidden: [8]}}
data: {name: gauss, setting: G, param: 4}
optim: {name: sgd, lr: 1e-3}
train: {epochs: 2, batch_size: 16}
"""


def test_typed_load_and_float_exponent(tmp_path):
    cfg = load_config(write(tmp_path / "r.yaml", GOOD))
    assert isinstance(cfg, RunConfig)
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.method.model.hidden == [8]
    assert cfg.data.param == 4 and cfg.data.setting == "G"


def test_unknown_key_names_file_line_and_closest(tmp_path):
    p = write(tmp_path / "r.yaml", GOOD.replace("batch_size: 16", "bach_size: 16"))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{p}:6" in msg and "train.bach_size" in msg and "did you mean 'batch_size'" in msg


def test_unknown_key_inside_registered_section(tmp_path):
    p = write(tmp_path / "r.yaml", GOOD.replace("hidden: [8]", "hiden: [8]"))
    with pytest.raises(ConfigError, match=r"method\.model\.hiden: unknown key \(did you mean 'hidden'\?\)"):
        load_config(p)


def test_unknown_registry_name(tmp_path):
    p = write(tmp_path / "r.yaml", GOOD.replace("name: supervised", "name: supervized"))
    with pytest.raises(ConfigError, match="did you mean 'supervised'"):
        load_config(p)


@pytest.mark.parametrize(
    "old,new,expect",
    [
        ("epochs: 2", "epochs: two", r"train\.epochs: expected int, got str 'two'"),
        ("lr: 1e-3", "lr: fast", r"optim\.lr: expected float, got str 'fast'"),
        ("name: sgd", "name: lbfgs", r"optim\.name: expected one of 'sgd', 'adamw', 'adam'"),
        ("hidden: [8]", "hidden: 8", r"method\.model\.hidden: expected list\[int\], got int 8"),
        ("epochs: 2", "epochs: true", r"train\.epochs: expected int, got bool True"),
    ],
)
def test_wrong_types(tmp_path, old, new, expect):
    with pytest.raises(ConfigError, match=expect):
        load_config(write(tmp_path / "r.yaml", GOOD.replace(old, new)))


def test_missing_file_and_missing_base(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_config(tmp_path / "nope.yaml")
    p = write(tmp_path / "r.yaml", "_base_: gone.yaml\n" + GOOD)
    with pytest.raises(ConfigError, match=r"r\.yaml:1: _base_: file not found: gone\.yaml"):
        load_config(p)


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", GOOD)
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\ntrain: {epochs: 5}\nmethod: {model: {hidden: [4, 4]}}\n")
    cfg = load_config(child, ["optim.lr=0.5", "train.batch_size=8", "data.param=2"])
    assert cfg.train.epochs == 5 and cfg.train.batch_size == 8
    assert cfg.method.model.hidden == [4, 4] and cfg.method.input_key == "x2"
    assert cfg.optim.lr == 0.5 and cfg.data.param == 2
    with pytest.raises(ConfigError, match=r"--set train\.epoch: train\.epoch: unknown key \(did you mean 'epochs'\?\)"):
        load_config(child, ["train.epoch=3"])
    # errors in inherited keys point at the file that wrote them
    write(tmp_path / "base.yaml", GOOD.replace("setting: G", "setting: 7"))
    with pytest.raises(ConfigError, match=r"base\.yaml:4: data\.setting: expected str"):
        load_config(child)


def test_delete_replaces_instead_of_merging(tmp_path):
    write(tmp_path / "base.yaml", GOOD)
    child = write(tmp_path / "c.yaml", "_base_: base.yaml\nmethod: {_delete_: true, name: supervised, input_key: x1, model: {name: mlp}}\n")
    cfg = load_config(child)
    assert cfg.method.input_key == "x1" and cfg.method.model.hidden == []


def test_safe_loader_refuses_code(tmp_path):
    p = write(tmp_path / "evil.yaml", "name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_recipe_dict(p)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(write(tmp_path / "r.yaml", GOOD), ["train.seed=3"])
    dump_yaml(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(tmp_path / "out" / "config.yaml")
    assert to_dict(again) == to_dict(cfg)


def test_nested_dataclasses_and_tuples():
    @dataclass
    class Inner:
        pair: tuple[float, float] = (0.0, 1.0)
        tags: dict[str, int] = field(default_factory=dict)

    @dataclass
    class Outer:
        inner: Inner = field(default_factory=Inner)
        maybe: int | None = None

    o = from_dict(Outer, {"inner": {"pair": [1, 2], "tags": {"a": 1}}, "maybe": None})
    assert o.inner.pair == (1.0, 2.0) and o.inner.tags == {"a": 1} and o.maybe is None
    with pytest.raises(ConfigError, match="expected tuple"):
        from_dict(Outer, {"inner": {"pair": [1, 2, 3]}})
    assert from_dict(OptimConfig, {"betas": [0.95, 0.999]}).betas == (0.95, 0.999)


def test_union_with_dataclass_reports_the_dataclass_error():
    @dataclass
    class Crop:
        size: int = 3

    @dataclass
    class Holder:
        crop: str | Crop = "center"

    assert from_dict(Holder, {"crop": {"size": 5}}).crop.size == 5
    with pytest.raises(ConfigError, match=r"crop\.sise: unknown key \(did you mean 'size'\?\)"):
        from_dict(Holder, {"crop": {"sise": 5}})
