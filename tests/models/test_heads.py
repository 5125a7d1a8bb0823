import pytest
import torch
import torch.nn.functional as F

from xmodal.models.heads import EncoderOut, LinearClassifier, LinearProjection, ProjectionHead, count_params
from xmodal.registry import MODELS


def test_projection_head_size_and_reference_keys():
    head = MODELS.build_named("projection_head")
    assert isinstance(head, ProjectionHead)
    # Linear(512,512,no bias) + BN1d(512) + Linear(512,256) = 262144 + 1024 + 131328
    assert count_params(head) == 394_496
    expected = {
        "block_forward.2.weight": (512, 512),
        "block_forward.4.weight": (512,),
        "block_forward.4.bias": (512,),
        "block_forward.4.running_mean": (512,),
        "block_forward.4.running_var": (512,),
        "block_forward.4.num_batches_tracked": (),
        "block_forward.8.weight": (256, 512),
        "block_forward.8.bias": (256,),
    }
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == expected


def test_projection_head_matches_its_formula_in_eval():
    torch.manual_seed(0)
    head = ProjectionHead(6, 5, 3)
    bn = head.block_forward[4]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    head.eval()
    x = torch.randn(4, 6)
    w1, w2, b2 = head.block_forward[2].weight, head.block_forward[8].weight, head.block_forward[8].bias
    h = x @ w1.T
    h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    z = h.clamp(min=0) @ w2.T + b2
    expect = z / z.norm(dim=1, keepdim=True)
    out = head(x)
    torch.testing.assert_close(out, expect)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))


def test_projection_head_dropout_active_only_in_training():
    torch.manual_seed(0)
    head = ProjectionHead(8, 8, 4, normalize=False)
    x = torch.randn(16, 8)
    head.eval()
    torch.testing.assert_close(head(x), head(x))
    head.train()
    torch.manual_seed(1)
    a = head(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, head(x))


def test_linear_projection_keys_and_normalisation():
    head = MODELS.build_named("projection_head", mlp=False)
    assert isinstance(head, LinearProjection)
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == {"weight": (256, 512), "bias": (256,)}
    x = torch.randn(3, 512)
    torch.testing.assert_close(head(x), F.normalize(x @ head.weight.T + head.bias, dim=1))


def test_linear_classifier_orthogonal_zero_bias():
    torch.manual_seed(0)
    clf = MODELS.build_named("linear_classifier", in_dim=64, num_classes=10)
    assert isinstance(clf, LinearClassifier)
    torch.testing.assert_close(clf.weight @ clf.weight.T, torch.eye(10), atol=1e-5, rtol=0)
    assert torch.count_nonzero(clf.bias) == 0
    assert clf(torch.randn(2, 64, 1, 1)).shape == (2, 10)  # flattens a pooled map


def test_encoder_out_defaults():
    out = EncoderOut(None, torch.zeros(2, 3))
    assert out.fmap is None and out.logits is None and out.feature.shape == (2, 3)


@pytest.mark.parametrize("trainable_only", [False, True])
def test_count_params_trainable_filter(trainable_only):
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    m[0].weight.requires_grad_(False)
    assert count_params(m, trainable_only) == (11 - 6 if trainable_only else 11)
