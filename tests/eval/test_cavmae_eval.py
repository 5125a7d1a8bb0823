"""CAV-MAE evaluation: weight averaging, frame averaging, retrieval metrics, the final-test protocol."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from xmodal.data.bundle import DataBundle, DataInfo, DictDataset
from xmodal.engine.checkpoint import save_safetensors_atomic
from xmodal.errors import CheckpointError, ConfigError, DataError
from xmodal.eval.cavmae import (
    average_weights,
    classification_metrics,
    epoch_weight_files,
    epoch_weight_path,
    evaluate_finetuned,
    retrieval_metrics,
)
from xmodal.methods.cavmae import CavmaeFinetune, CavmaeFinetuneConfig, CavmaeNet

TINY = CavmaeNet(size="tiny", audio_length=16, audio_bins=16, image_size=16, patch_size=8, modality_specific_depth=1)


# ------------------------------------------------------------------------------- weight averaging
def test_average_weights_is_the_uniform_mean_of_files(tmp_path):
    states = [{"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0), "n": torch.tensor([7])},
              {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor(0.0), "n": torch.tensor([7])},
              {"w": torch.tensor([5.0, 1.0]), "b": torch.tensor(6.0), "n": torch.tensor([7])}]
    paths = [save_safetensors_atomic(s, tmp_path / f"e{i}.safetensors") for i, s in enumerate(states)]
    avg = average_weights(paths)
    assert torch.allclose(avg["w"], torch.tensor([3.0, 3.0]))
    assert avg["b"].item() == pytest.approx(3.0)
    assert avg["n"].tolist() == [7] and avg["n"].dtype == torch.long
    # float16 weights are averaged in float64 and returned in their own dtype
    half = average_weights([{"x": torch.tensor([1.0], dtype=torch.float16)}, {"x": torch.tensor([2.0], dtype=torch.float16)}])
    assert half["x"].dtype == torch.float16 and half["x"].item() == 1.5


def test_average_weights_refuses_mismatched_states():
    a = {"w": torch.zeros(2), "n": torch.tensor([1])}
    with pytest.raises(CheckpointError, match="keys differ"):
        average_weights([a, {"v": torch.zeros(2), "n": torch.tensor([1])}])
    with pytest.raises(CheckpointError, match="shape"):
        average_weights([a, {"w": torch.zeros(3), "n": torch.tensor([1])}])
    with pytest.raises(CheckpointError, match="integer tensor n"):
        average_weights([a, {"w": torch.zeros(2), "n": torch.tensor([2])}])
    with pytest.raises(ConfigError):
        average_weights([])


def test_epoch_weight_files_names_the_missing_epochs(tmp_path):
    for e in (1, 2, 4):
        save_safetensors_atomic({"w": torch.zeros(1)}, epoch_weight_path(tmp_path, e))
    assert [p.name for p in epoch_weight_files(tmp_path, 1, 2)] == ["epoch_001.safetensors", "epoch_002.safetensors"]
    with pytest.raises(CheckpointError, match="epoch_003"):
        epoch_weight_files(tmp_path, 2, 4)
    with pytest.raises(ConfigError):
        epoch_weight_files(tmp_path, 3, 2)


# ------------------------------------------------------------------------------------ retrieval
def test_retrieval_metrics_both_directions_pair_and_class():
    torch.manual_seed(0)
    x = torch.randn(6, 4)
    m = retrieval_metrics(x, x.clone(), labels=torch.tensor([0, 0, 1, 1, 2, 2]))
    for d in ("v2a", "a2v", "class_v2a", "class_a2v"):
        assert m[f"{d}_R@1"] == 100.0 and m[f"{d}_median_rank"] == 1.0
    # hand case: audio a_i, images v_i; v0 is closest to a1, so v0's true audio a0 is ranked 2nd
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[0.1, 1.0], [0.0, 1.0]])
    m = retrieval_metrics(a, v)
    assert m["v2a_R@1"] == 50.0  # v0 -> a1 (wrong), v1 -> a1 (right)
    assert m["a2v_R@1"] == 100.0  # a0 -> v0 (0.1 > 0), a1 -> v1 (1 > 0.995)
    # class level: a0 and a1 share a class, so every query hits
    assert retrieval_metrics(a, v, labels=torch.tensor([3, 3]))["class_v2a_R@1"] == 100.0
    assert "class_v2a_R@1" not in retrieval_metrics(a, v, labels=torch.tensor([-1, -1]))  # unlabelled store rows


def test_classification_metrics_hardens_soft_labels():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    soft = torch.tensor([[0.95, 0.05], [0.05, 0.95], [0.05, 0.95]])
    assert classification_metrics(probs, soft, multilabel=False)["top1"] == pytest.approx(200 / 3)
    multi = classification_metrics(probs, soft, multilabel=True)
    # class 0: positive only row 0 (top score) -> AP 1; class 1: positives rows 1, 2 scored 0.8, 0.4
    # with negative row 0 at 0.1 -> AP 1; mAP 100
    assert multi["mAP"] == pytest.approx(100.0)


# ------------------------------------------------------------------------------ frame averaging
def test_stored_frames_of_a_clip_are_averaged_before_scoring():
    """A store read with image.eval_all gives one item per stored frame; eval averages by clip."""
    method = CavmaeFinetune(CavmaeFinetuneConfig(net=TINY), DataInfo(num_classes=2))
    # clip a: frame 0 confidently wrong, frames 1-2 right -> the clip average is right
    probs = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.9, 0.1], [0.3, 0.7], [0.4, 0.6], [0.2, 0.8]])
    out = {"probs": probs, "label": torch.tensor([0, 0, 0, 1, 1, 1]), "group": ["a"] * 3 + ["b"] * 3}
    assert method.eval_metrics(out)["top1"] == 100.0
    assert method.eval_metrics({k: v[:1] for k, v in out.items()})["top1"] == 0.0
    multi = CavmaeFinetune(CavmaeFinetuneConfig(net=TINY), DataInfo(num_classes=2, multilabel=True))
    hot = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3)
    assert multi.eval_metrics({**out, "label": hot})["mAP"] == 100.0
    with pytest.raises(DataError, match="different labels"):
        method.eval_metrics({**out, "label": torch.tensor([0, 1, 0, 1, 1, 1])})


# ------------------------------------------------------------------------------ final test
def _bundle(n=6, k=3):
    g = torch.Generator().manual_seed(0)
    ds = DictDataset(fbank=torch.randn(n, 16, 16, generator=g), video=torch.rand(n, 3, 4, 16, 16, generator=g),
                     label=torch.arange(n) % k, uid=[f"c{i}" for i in range(n)])
    return DataBundle(train=ds, test=ds, info=DataInfo(num_classes=k))


def test_evaluate_finetuned_loads_the_average_of_epoch_weights(tmp_path):
    data = _bundle()
    torch.manual_seed(0)
    method = CavmaeFinetune(CavmaeFinetuneConfig(net=TINY), data.info)
    states = []
    for e in (1, 2, 3):
        torch.manual_seed(e)
        s = {k: torch.randn_like(v) for k, v in method.state_dict().items()}
        states.append(s)
        save_safetensors_atomic(s, epoch_weight_path(tmp_path, e))
    loaded = SimpleNamespace(method=method, data=data, cfg=None)
    m = evaluate_finetuned(loaded, tmp_path, wa=(2, 3), frames=4, batch_size=4)
    for k, v in method.state_dict().items():
        assert torch.allclose(v, (states[1][k] + states[2][k]) / 2, atol=1e-6), k
    assert {"top1", "wa_start", "wa_end", "frames"} <= set(m) and m["frames"] == 4.0
    # the video clips carry 4 frames: the method averaged its probabilities over all of them
    assert method.cfg.inputs.eval_frames == 4
    with pytest.raises(CheckpointError, match="epoch_004"):
        evaluate_finetuned(loaded, tmp_path, wa=(3, 4))


def test_evaluate_finetuned_refuses_a_pretraining_run():
    from xmodal.methods.cavmae import CavmaePretrain, CavmaePretrainConfig

    data = _bundle()
    loaded = SimpleNamespace(method=CavmaePretrain(CavmaePretrainConfig(net=TINY), data.info), data=data, cfg=None)
    with pytest.raises(ConfigError, match="finetuned"):
        evaluate_finetuned(loaded, None)
    with pytest.raises(DataError):
        retrieval_metrics(torch.zeros(2, 3), torch.zeros(3, 3))
