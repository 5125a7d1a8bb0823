import pytest
import torch

from xmodal.engine.checkpoint import load_state_file, load_weights
from xmodal.errors import CheckpointError
from xmodal.models.heads import count_params
from xmodal.models.image import imagenet_normalize, resnet18, resnet34
from xmodal.registry import MODELS

TINY = (8, 16, 32, 64)


def _bn(prefix, c):
    return [(f"{prefix}.{n}", (c,)) for n in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{prefix}.num_batches_tracked", ())
    ]


def _torchvision_resnet_table(layers, in_channels=3, widths=(64, 128, 256, 512), fc=1000):
    """torchvision BasicBlock ResNet keys/shapes, written from the architecture (ccl §10)."""
    rows = [("conv1.weight", (widths[0], in_channels, 7, 7))] + _bn("bn1", widths[0])
    cin = widths[0]
    for i, (n, w) in enumerate(zip(layers, widths), start=1):
        for b in range(n):
            p, bin_ = f"layer{i}.{b}", (cin if b == 0 else w)
            rows += [(f"{p}.conv1.weight", (w, bin_, 3, 3))] + _bn(f"{p}.bn1", w)
            rows += [(f"{p}.conv2.weight", (w, w, 3, 3))] + _bn(f"{p}.bn2", w)
            if b == 0 and i > 1:
                rows += [(f"{p}.downsample.0.weight", (w, bin_, 1, 1))] + _bn(f"{p}.downsample.1", w)
        cin = w
    if fc:
        rows += [("fc.weight", (fc, cin)), ("fc.bias", (fc,))]
    return rows


def test_resnet34_key_table_and_published_size():
    with torch.device("meta"):
        model = resnet34()
        trunk = resnet34(num_classes=0)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == _torchvision_resnet_table((3, 4, 6, 3))
    assert [(k, tuple(v.shape)) for k, v in trunk.state_dict().items()] == _torchvision_resnet_table((3, 4, 6, 3), fc=0)
    assert count_params(model) == 21_797_672  # torchvision resnet34 (21.8 M)


def test_resnet18_key_table_and_published_size():
    with torch.device("meta"):
        model = resnet18()
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == _torchvision_resnet_table((2, 2, 2, 2))
    assert count_params(model) == 11_689_512


def test_small_input_stem_keeps_names_and_resolution():
    with torch.device("meta"):
        model = resnet18(num_classes=0, widths=TINY, small_input=True)
        out = model(torch.empty(2, 3, 32, 32), return_map=True)
    table = _torchvision_resnet_table((2, 2, 2, 2), widths=TINY, fc=0)
    table[0] = ("conv1.weight", (TINY[0], 3, 3, 3))  # 3x3 stride-1 stem: same names, smaller kernel
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == table
    assert out.fmap.shape == (2, 64, 4, 4)  # 32 px / 8 (3 strided stages), not / 32


def test_shapes_at_published_input_size():
    with torch.device("meta"):
        out = resnet34(num_classes=0)(torch.empty(2, 3, 112, 112), return_map=True)
    assert out.fmap.shape == (2, 512, 4, 4) and out.feature.shape == (2, 512) and out.logits is None


def test_tiny_forward_outputs_are_consistent():
    torch.manual_seed(0)
    model = MODELS.build_named("resnet34", num_classes=7, widths=list(TINY)).eval()
    logits, feature, fmap = model(torch.randn(2, 3, 64, 64), return_map=True)
    assert fmap.shape == (2, 64, 2, 2)
    torch.testing.assert_close(feature, fmap.mean(dim=(2, 3)))
    torch.testing.assert_close(logits, model.fc(feature))


def test_module_prefixed_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    src = resnet34(num_classes=5, widths=TINY)
    for m in src.modules():  # non-trivial BN statistics so that buffers matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)
    dst = resnet34(num_classes=5, widths=TINY)
    missing, unexpected = load_weights(dst, load_state_file(path), what=str(path))
    assert missing == [] and unexpected == []
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst.eval()(x).logits, src.eval()(x).logits)


def test_wrong_architecture_is_a_one_line_error():
    wrong = resnet18(num_classes=5, widths=TINY).state_dict()
    with pytest.raises(CheckpointError) as e:
        load_weights(resnet34(num_classes=5, widths=TINY), wrong, what="teacher.pth")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("teacher.pth")
    assert "missing" in msg and "layer1.2.conv1.weight" in msg
    wide = resnet34(num_classes=5, widths=(8, 16, 32, 32)).state_dict()
    with pytest.raises(CheckpointError, match="shape mismatch: layer4"):
        load_weights(resnet34(num_classes=5, widths=TINY), wide)


def test_imagenet_normalize():
    x = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    torch.testing.assert_close(imagenet_normalize(x), torch.zeros(1, 3, 2, 2))
    one = imagenet_normalize(torch.ones(1, 3, 1, 1)).flatten()
    torch.testing.assert_close(one, torch.tensor([0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225]))
