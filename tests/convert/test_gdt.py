import pytest
import torch

from xmodal.convert.gdt import convert_gdt, expected_shapes
from xmodal.data.bundle import DataInfo
from xmodal.engine.checkpoint import load_weights
from xmodal.errors import CheckpointError
from xmodal.methods.gdt import GDT, GDTConfig
from xmodal.registry import MODELS

TINY = dict(
    video=MODELS.entry("r2plus1d_18").config(widths=(4, 4, 8, 8), stem_mid=3),
    audio=MODELS.entry("resnet9").config(widths=(4, 4, 8, 8)),
)


def _tiny_method(seed=0) -> GDT:
    torch.manual_seed(seed)
    cfg = GDTConfig(**TINY)
    cfg.head.hidden, cfg.head.dim = 8, 6
    return GDT(cfg, DataInfo())


def _released(method: GDT, audio_fc: bool = True) -> dict:
    """Our weights under the released names (spec §10), as DDP saved them."""
    rename = {"video.": "video_network.base.", "audio.": "audio_network.base.", "mlp_v.": "mlp_v.", "mlp_a.": "mlp_a."}
    state = {}
    for k, v in method.state_dict().items():
        prefix = next(p for p in rename if k.startswith(p))
        state["module." + rename[prefix] + k[len(prefix):]] = v.clone()
    if audio_fc:  # torchvision's unused 1000-way classifier on the audio ResNet-9
        state["module.audio_network.base.fc.weight"] = torch.randn(1000, 8)
        state["module.audio_network.base.fc.bias"] = torch.randn(1000)
    return state


def _table(method: GDT) -> dict:
    return {k: tuple(v.shape) for k, v in method.state_dict().items()}


def test_released_layout_maps_onto_our_method_exactly(tmp_path):
    source, target = _tiny_method(0), _tiny_method(1)
    released = _released(source)
    released["module.pool.layers.0.q.weight"] = torch.randn(8, 8)  # e.g. a STiCA transformer key
    path = tmp_path / "gdt_k400.pth"
    torch.save({"model": released, "epoch": 101}, path)
    out = convert_gdt(path, expected=_table(target))
    assert out.unexpected == ["pool.layers.0.q.weight"]
    assert sorted(out.dropped) == ["audio_network.base.fc.bias", "audio_network.base.fc.weight"]
    assert not out.missing and not out.mismatched and not out.filled
    load_weights(target, out.state, strict=True, what="converted")
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k
    assert "2 dropped" in out.summary() and "1 unexpected" in out.summary()


def test_state_dict_wrapper_and_video_only():
    source = _tiny_method()
    out = convert_gdt({"state_dict": _released(source, audio_fc=False)}, expected=_table(source), parts=("video",))
    assert set(out.state) == {k for k in source.state_dict() if k.startswith("video.")}
    assert not out.missing and not out.unexpected  # audio and heads were left out on purpose
    assert len(out.dropped) == sum(1 for k in source.state_dict() if not k.startswith("video."))


def test_trunk_must_be_fully_covered():
    source = _tiny_method()
    released = _released(source)
    del released["module.video_network.base.layer3.0.conv1.0.3.weight"]
    with pytest.raises(CheckpointError, match=r"video trunk is not fully covered.*layer3\.0\.conv1\.0\.3"):
        convert_gdt({"model": released}, expected=_table(source))
    released = _released(source)
    released["module.video_network.base.stem.0.weight"] = torch.randn(5, 3, 1, 7, 7)
    with pytest.raises(CheckpointError, match=r"stem\.0\.weight \(5, 3, 1, 7, 7\) != \(3, 3, 1, 7, 7\)"):
        convert_gdt(released, expected=_table(source))


def test_missing_audio_is_reported_not_fatal_and_old_bn_counters_are_filled():
    source = _tiny_method()
    released = {k: v for k, v in _released(source).items() if "audio_network" not in k and "num_batches" not in k}
    out = convert_gdt(released, expected=_table(source))
    assert out.missing and all(k.startswith("audio.") for k in out.missing)
    assert out.filled and all(k.endswith("num_batches_tracked") for k in out.filled)
    assert all(out.state[k].item() == 0 for k in out.filled)


def test_not_a_state_dict():
    with pytest.raises(CheckpointError, match="expected a state dict"):
        convert_gdt([1, 2])
    with pytest.raises(CheckpointError, match="no tensors"):
        convert_gdt({"model": {"epoch": 3}})
    with pytest.raises(CheckpointError, match="parts"):
        convert_gdt({"a": torch.zeros(1)}, parts=("audio",))


def test_published_table_is_the_released_trunk():
    table = expected_shapes()
    video = {k: s for k, s in table.items() if k.startswith("video.")}
    assert table["video.stem.0.weight"] == (45, 3, 1, 7, 7) and table["video.stem.3.weight"] == (64, 45, 3, 1, 1)
    assert table["video.layer2.0.downsample.0.weight"] == (128, 64, 1, 1, 1)
    assert table["audio.conv1.weight"] == (64, 1, 7, 7) and table["mlp_v.block_forward.8.weight"] == (256, 512)
    n_video = sum(torch.Size(s).numel() for k, s in video.items() if "running" not in k and "num_batches" not in k)
    assert n_video == 31_300_125  # 31.30 M (§3.1; tests/models/test_video.py)


@pytest.mark.slow
def test_convert_cli_on_a_published_size_release(tmp_path, capsys):
    """`xmodal convert gdt` on a file with the released layout at published sizes (31.3 M trunk)."""
    from xmodal.cli import main
    from xmodal.engine.checkpoint import load_state_file

    torch.manual_seed(0)
    full = GDT(GDTConfig(), DataInfo())
    torch.save({"model": _released(full, audio_fc=False), "epoch": 101}, tmp_path / "gdt.pth")
    assert main(["convert", "gdt", str(tmp_path / "gdt.pth"), str(tmp_path / "gdt.safetensors"), "--opt", "parts=video"]) == 0
    assert "tensors converted" in capsys.readouterr().out
    state = load_state_file(tmp_path / "gdt.safetensors")
    assert state and all(k.startswith("video.") for k in state)
    assert torch.equal(state["video.stem.0.weight"], full.state_dict()["video.stem.0.weight"])
    assert main(["convert", "gdt", str(tmp_path / "gdt.pth"), str(tmp_path / "x.safetensors"), "--opt", "part=video"]) == 2
    assert "unknown option(s) ['part']" in capsys.readouterr().err
